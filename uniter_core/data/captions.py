"""Captions for collage scenes, with the ground-truth word -> box alignment of every object mention.

A caption is assembled from pieces; the pieces that name an object remember which box(es) they refer to, so
after tokenisation each word-piece of "small red cat" can be linked to the cat's box. That alignment is what
the word-region-alignment evaluation and the app's optimal-transport page compare against.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uniter_core.data.photos import BACKGROUNDS, CATEGORY_BY_NAME
from uniter_core.data.scenes import Scene, SceneObject

NUMBERS = {2: "two", 3: "three", 4: "four"}


@dataclass
class Caption:
    text: str
    mentions: list[tuple[int, int, list[int]]]  # (char start, char end, object indices)


class _Builder:
    """Appends words; `mention` pieces record their character span."""

    def __init__(self):
        self.text = ""
        self.mentions: list[tuple[int, int, list[int]]] = []

    def add(self, words: str, objects: list[int] | None = None) -> "_Builder":
        if not words:
            return self
        if self.text and not words.startswith(","):
            self.text += " "
        start = len(self.text)
        self.text += words
        if objects is not None:
            self.mentions.append((start, len(self.text), list(objects)))
        return self

    def caption(self) -> Caption:
        return Caption(self.text, self.mentions)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(obj: SceneObject) -> str:
    return " ".join(w for w in (obj.size, obj.tint, CATEGORY_BY_NAME[obj.category].noun) if w)


def _mention(b: _Builder, scene: Scene, i: int) -> None:
    phrase = _phrase(scene.objects[i])
    b.add(_article(phrase)).add(phrase, [int(i)])


def _centre(obj: SceneObject) -> tuple[float, float]:
    x1, y1, x2, y2 = obj.box
    return (x1 + x2) / 2, (y1 + y2) / 2


def relation(a: SceneObject, b: SceneObject) -> str:
    """Where a is relative to b, by the dominant axis between box centres."""
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


def location(obj: SceneObject, width: int, height: int) -> str:
    x, y = _centre(obj)
    row = ["top", "middle", "bottom"][min(int(3 * y / height), 2)]
    col = ["left", "center", "right"][min(int(3 * x / width), 2)]
    if row == "middle" and col == "center":
        return "in the middle"
    if row == "middle":
        return f"on the {col}"
    return f"at the {row}" if col == "center" else f"in the {row} {col}"


def _relation_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    i, j = (int(v) for v in rng.choice(len(scene.objects), size=2, replace=False))
    b = _Builder().add("there is" if rng.random() < 0.3 else "")
    _mention(b, scene, i)
    b.add(relation(scene.objects[i], scene.objects[j]))
    _mention(b, scene, j)
    return b.caption()


def _list_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    order = rng.permutation(len(scene.objects))
    b = _Builder().add(str(rng.choice(["a photo of", "a picture of", "a collage of", ""])))
    for n, i in enumerate(order):
        if n == len(order) - 1:
            b.add("and")
        elif n > 0:
            b.add(",")
        _mention(b, scene, int(i))
    b.add(BACKGROUNDS[scene.background][1] or "")
    return b.caption()


def _location_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    i, j = (int(v) for v in rng.choice(len(scene.objects), size=2, replace=False))
    b = _Builder()
    _mention(b, scene, i)
    b.add(location(scene.objects[i], scene.width, scene.height)).add(", and")
    _mention(b, scene, j)
    b.add(location(scene.objects[j], scene.width, scene.height))
    return b.caption()


def _count_caption(scene: Scene, rng: np.random.Generator) -> Caption | None:
    names = [o.category for o in scene.objects]
    repeated = [n for n in dict.fromkeys(names) if names.count(n) > 1]
    if not repeated:
        return None
    name = repeated[0]
    group = [k for k, n in enumerate(names) if n == name]
    others = [k for k in range(len(names)) if k not in group]
    b = _Builder().add(NUMBERS[len(group)]).add(CATEGORY_BY_NAME[name].plural, group)
    if others:
        k = int(rng.choice(others))
        b.add("and" if rng.random() < 0.5 else "next to")
        _mention(b, scene, k)
    b.add(BACKGROUNDS[scene.background][1] or "")
    return b.caption()


TEMPLATES = (_relation_caption, _list_caption, _location_caption)


def describe_scene(scene: Scene, rng: np.random.Generator, n_captions: int = 2) -> list[Caption]:
    """`n_captions` different captions (a counting one first where the scene has a repeated category)."""
    captions: list[Caption] = []
    counted = _count_caption(scene, rng)
    if counted is not None:
        captions.append(counted)
    for _ in range(20 * n_captions):
        if len(captions) >= n_captions:
            break
        caption = TEMPLATES[int(rng.integers(len(TEMPLATES)))](scene, rng)
        if all(caption.text != c.text for c in captions):
            captions.append(caption)
    return captions[:n_captions]


def align_word_pieces(caption: Caption, tokenizer) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokenise a caption; return input_ids (no [CLS]/[SEP]) and (word-piece index, object index) pairs."""
    encoding = tokenizer(caption.text, add_special_tokens=False, return_offsets_mapping=True)
    alignment = []
    for piece, (start, end) in enumerate(encoding["offset_mapping"]):
        for m_start, m_end, objects in caption.mentions:
            if start >= m_start and end <= m_end:
                alignment.extend((piece, obj) for obj in objects)
    return list(encoding["input_ids"]), alignment
