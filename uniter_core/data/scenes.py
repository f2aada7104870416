"""Collage scenes: 2-4 real photo objects pasted on a backdrop, with their ground-truth boxes.

A scene is fully determined by (seed, index), so the corpus can be rebuilt or resumed image by image. Besides
the ground-truth object boxes, `region_proposals` adds detector-like extra boxes (jittered copies, parts and
background patches), the way a Faster R-CNN feature extractor returns 10-100 overlapping boxes per image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from uniter_core.data.photos import BACKGROUNDS, CATEGORIES, background_pixels, category_pixels

TINTS = {"red": (1.0, 0.35, 0.3), "green": (0.35, 1.0, 0.35), "blue": (0.35, 0.45, 1.0), "yellow": (1.0, 0.9, 0.2)}
SMALL, LARGE = 0.30, 0.42  # longer side as a fraction of the canvas side


@dataclass
class SceneObject:
    category: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in canvas pixels
    size: str | None = None  # "small", "large" or None
    tint: str | None = None
    flipped: bool = False


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 uint8
    objects: list[SceneObject]
    background: str
    width: int = field(init=False)
    height: int = field(init=False)

    def __post_init__(self):
        self.height, self.width = self.image.shape[:2]


def _resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 pixels with PIL (an order of magnitude faster than skimage's anti-aliased resize)."""
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.BILINEAR, reducing_gap=2.0))


def _backdrop(rng: np.random.Generator, size: int, background: str) -> np.ndarray:
    texture = background_pixels(background)
    if texture is None:  # a soft two-colour gradient with a little noise
        c0, c1 = rng.uniform(60, 230, size=(2, 3))
        t = np.linspace(0, 1, size)[:, None, None]
        canvas = c0 * (1 - t) + c1 * t
        canvas = np.broadcast_to(canvas, (size, size, 3)) + rng.normal(0, 6, (size, size, 3))
    else:
        h, w = texture.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        canvas = _resize(np.ascontiguousarray(texture[y0:y0 + side, x0:x0 + side]), size, size).astype(np.float32)
        canvas = canvas * rng.uniform(0.6, 1.0)
    return np.clip(canvas, 0, 255).astype(np.float32)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _overlap(a, b) -> float:
    """Share of the smaller box covered by the other: keeps pasted objects mostly visible."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller


def _paste(canvas: np.ndarray, rng: np.random.Generator, obj: SceneObject) -> None:
    pixels = category_pixels(obj.category)
    h, w = pixels.shape[:2]
    # random crop keeping 85-100 % of each side
    ch, cw = int(h * rng.uniform(0.85, 1.0)), int(w * rng.uniform(0.85, 1.0))
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    pixels = pixels[y0:y0 + ch, x0:x0 + cw]
    if obj.flipped:
        pixels = pixels[:, ::-1]
    x1, y1, x2, y2 = (int(round(v)) for v in obj.box)
    pixels = _resize(np.ascontiguousarray(pixels), y2 - y1, x2 - x1).astype(np.float32)
    rgb, alpha = pixels[..., :3], pixels[..., 3:4] / 255.0
    if obj.tint is not None:
        grey = rgb.mean(axis=2, keepdims=True)
        rgb = 0.35 * rgb + 0.65 * grey * np.asarray(TINTS[obj.tint], np.float32) * 1.3
    rgb = rgb * rng.uniform(0.85, 1.15)
    region = canvas[y1:y2, x1:x2]
    canvas[y1:y2, x1:x2] = alpha * np.clip(rgb, 0, 255) + (1 - alpha) * region


def make_scene(seed: int, index: int, size: int = 448) -> Scene:
    """Compose scene `index` of the corpus drawn with `seed`."""
    rng = np.random.default_rng([seed, index])
    background = str(rng.choice(list(BACKGROUNDS), p=[0.55, 0.15, 0.15, 0.15]))
    n_objects = int(rng.choice([2, 3, 4], p=[0.4, 0.4, 0.2]))
    names = [c.name for c in CATEGORIES]
    chosen = [str(n) for n in rng.choice(names, size=n_objects, replace=False)]
    if n_objects >= 3 and rng.random() < 0.35:  # a repeated category makes counting captions possible
        chosen[1] = chosen[0]

    objects: list[SceneObject] = []
    for name in chosen:
        pixels_h, pixels_w = category_pixels(name).shape[:2]
        for attempt in range(60):
            longer = size * rng.uniform(0.2, 0.5) * (0.985 ** attempt)
            scale = longer / max(pixels_h, pixels_w)
            w, h = max(pixels_w * scale, 24.0), max(pixels_h * scale, 24.0)
            x1, y1 = rng.uniform(0, size - w), rng.uniform(0, size - h)
            box = (float(x1), float(y1), float(x1 + w), float(y1 + h))
            if all(_overlap(box, o.box) < 0.12 for o in objects):
                break
        side = max(w, h) / size
        objects.append(SceneObject(
            category=name, box=box,
            size="small" if side < SMALL else "large" if side > LARGE else None,
            tint=str(rng.choice(list(TINTS))) if rng.random() < 0.3 else None,
            flipped=bool(rng.random() < 0.5),
        ))
    # Pixel-aligned boxes, so that what the feature extractor sees is exactly the pasted area.
    for obj in objects:
        obj.box = tuple(float(int(round(v))) for v in obj.box)

    canvas = _backdrop(rng, size, background)
    for obj in objects:
        _paste(canvas, rng, obj)
    return Scene(np.clip(canvas, 0, 255).astype(np.uint8), objects, background)


def region_proposals(scene: Scene, rng: np.random.Generator, min_regions: int = 10,
                     max_regions: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Detector-like boxes: the ground-truth boxes first, then jittered copies, parts and background patches.

    Returns boxes [N, 4] in pixels and, per box, the index of the object it covers best (IoU >= 0.5) or -1.
    """
    W, H = scene.width, scene.height
    gt = [o.box for o in scene.objects]
    target = int(rng.integers(min_regions, max_regions + 1))
    extra: list[tuple[float, float, float, float]] = []

    def clip(x1, y1, x2, y2):
        x1, x2 = np.clip([x1, x2], 0, W)
        y1, y2 = np.clip([y1, y2], 0, H)
        return (float(x1), float(y1), float(max(x2, x1 + 8)), float(max(y2, y1 + 8)))

    for x1, y1, x2, y2 in gt:
        w, h = x2 - x1, y2 - y1
        for _ in range(2):  # jittered copies, as from neighbouring anchors
            dx, dy, dw, dh = rng.normal(0, 0.12, 4)
            extra.append(clip(x1 + dx * w, y1 + dy * h, x2 + dx * w + dw * w, y2 + dy * h + dh * h))
        half = rng.integers(4)  # one half of the object, as a part detection
        extra.append(clip(x1, y1, x2, y1 + h / 2) if half == 0 else clip(x1, y1 + h / 2, x2, y2) if half == 1
                     else clip(x1, y1, x1 + w / 2, y2) if half == 2 else clip(x1 + w / 2, y1, x2, y2))
    extra.append((0.0, 0.0, float(W), float(H)))  # the whole picture
    while len(gt) + len(extra) < max_regions:  # background patches
        w, h = rng.uniform(0.1, 0.45, 2) * (W, H)
        x1, y1 = rng.uniform(0, W - w), rng.uniform(0, H - h)
        extra.append(clip(x1, y1, x1 + w, y1 + h))
    order = rng.permutation(len(extra))
    keep = [extra[i] for i in order[: max(target - len(gt), 0)]]
    boxes = np.asarray(gt + keep, np.float32)
    owner = np.full(len(boxes), -1, np.int64)
    for r, box in enumerate(boxes):
        ious = [_iou(box, g) for g in gt]
        if max(ious) >= 0.5:
            owner[r] = int(np.argmax(ious))
    return boxes, owner
