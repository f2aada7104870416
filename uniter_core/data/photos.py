"""The real photographs that ship inside scikit-image and scikit-learn, cut into object categories.

Each category is a crop of one photograph (box given in the photo's own pixel coordinates) plus the words a
caption uses for it. Some photographs give several categories (the astronaut photo also holds a space shuttle
and a helmet). Textures (grass, gravel, brick) serve as scene backgrounds. Nothing here is downloaded: every
loader reads a file that the installed package already contains.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = getattr(skimage.data, name)()
        return image[0] if isinstance(image, tuple) else image

    return load


def _sklearn(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]

    return load


def _horse_silhouette() -> np.ndarray:
    """The horse photo is a binary silhouette (False = horse); give it a dark coat and an alpha channel."""
    mask = ~_skimage("horse")()
    rgba = np.zeros(mask.shape + (4,), np.uint8)
    rgba[..., :3] = np.where(mask[..., None], [70, 45, 30], [255, 255, 255])
    rgba[..., 3] = np.where(mask, 255, 0)
    return rgba


@dataclass(frozen=True)
class Category:
    """One object category: where its pixels come from and how captions name it."""

    name: str
    noun: str
    plural: str
    load: Callable[[], np.ndarray]
    crop: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in the photo; None = the whole photo


CATEGORIES: tuple[Category, ...] = (
    Category("astronaut", "astronaut", "astronauts", _skimage("astronaut"), (110, 0, 370, 512)),
    Category("space shuttle", "space shuttle", "space shuttles", _skimage("astronaut"), (370, 0, 470, 200)),
    Category("helmet", "helmet", "helmets", _skimage("astronaut"), (355, 330, 512, 500)),
    Category("cat", "cat", "cats", _skimage("chelsea")),
    Category("coffee cup", "coffee cup", "coffee cups", _skimage("coffee"), (30, 15, 570, 390)),
    Category("rocket", "rocket", "rockets", _skimage("rocket"), (280, 40, 385, 420)),
    Category("horse", "horse", "horses", _horse_silhouette, (20, 25, 385, 320)),
    Category("moon", "moon", "moons", _skimage("moon")),
    Category("cameraman", "cameraman", "cameramen", _skimage("camera"), (50, 60, 340, 512)),
    Category("clock", "clock", "clocks", _skimage("clock"), (130, 80, 290, 240)),
    Category("color wheel", "color wheel", "color wheels", _skimage("colorwheel")),
    Category("logo", "logo", "logos", _skimage("logo")),
    Category("star field", "star field", "star fields", _skimage("hubble_deep_field"), (0, 0, 600, 600)),
    Category("tissue", "tissue sample", "tissue samples", _skimage("immunohistochemistry")),
    Category("retina", "retina", "retinas", _skimage("retina"), (80, 80, 1330, 1330)),
    Category("motorcycle", "motorcycle", "motorcycles", _skimage("stereo_motorcycle"), (110, 180, 660, 480)),
    Category("page", "page of text", "pages of text", _skimage("page")),
    Category("checkerboard", "checkerboard", "checkerboards", _skimage("checkerboard")),
    Category("pagoda", "pagoda", "pagodas", _sklearn(0), (90, 20, 340, 340)),
    Category("flower", "flower", "flowers", _sklearn(1), (170, 50, 470, 390)),
)

# Background textures and the phrase a caption uses for each (None: a plain painted backdrop).
BACKGROUNDS: dict[str, tuple[Callable[[], np.ndarray] | None, str | None]] = {
    "plain": (None, None),
    "grass": (_skimage("grass"), "on grass"),
    "gravel": (_skimage("gravel"), "on gravel"),
    "brick": (_skimage("brick"), "in front of a brick wall"),
}


def to_rgba(image: np.ndarray) -> np.ndarray:
    """Any photo (grey, RGB, RGBA, bool or float) as uint8 RGBA."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 3:
        image = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return image


@functools.lru_cache(maxsize=None)
def category_pixels(name: str) -> np.ndarray:
    """The RGBA crop of a category (cached: each photo is decoded once per process)."""
    category = CATEGORY_BY_NAME[name]
    image = to_rgba(category.load())
    if category.crop is not None:
        x0, y0, x1, y1 = category.crop
        image = image[y0:y1, x0:x1]
    return np.ascontiguousarray(image)


@functools.lru_cache(maxsize=None)
def background_pixels(name: str) -> np.ndarray | None:
    load, _ = BACKGROUNDS[name]
    return None if load is None else to_rgba(load())[..., :3]


CATEGORY_BY_NAME = {c.name: c for c in CATEGORIES}
