"""Attention extraction: stream every (example, layer, head) attention map of a split, with its layout.

    run = load_run("runs/pretrain-mini")                            # uniter_core.runs
    for ex in iter_example_attention(run.model, run.corpus, "test"):  # one example at a time
        ex.maps        # [layers, heads, n, n] float32 numpy, cropped to the example's real positions
        ex.layout      # ExampleLayout: tokens, region classes and boxes, n_text / n_regions
    for m in iter_attention_maps(run.model, run.corpus, "test"): ...  # one AttentionMap per (example, layer, head)

Maps are rows = queries, columns = keys, laid out `[CLS] word-pieces [SEP] regions` (the model's packing), so
position n_text - 1 is [SEP] and n_text + k is region k. Only one batch of attention lives in memory at a time
(a generator), so any dataset size fits; on a GPU the maps are cropped there and copied to the CPU as float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from uniter_core.data.dataset import ImageTextDataset, collate
from uniter_core.data.tokenizer import load_tokenizer
from uniter_core.model import SequenceLayout
from uniter_core.runs import to_device


@dataclass(frozen=True, eq=False)
class ExampleLayout:
    """What each row/column of an example's maps is. Region k sits at position n_text + k."""

    example: int  # index in the split's ImageTextDataset
    text_id: str
    image_id: str
    tokens: tuple[str, ...]  # n_text word-pieces, tokens[0] = [CLS], tokens[-1] = [SEP]
    region_classes: tuple[str, ...]  # n_regions class names: argmax of the region's soft labels
    region_boxes: np.ndarray  # [n_regions, 4] x1, y1, x2, y2 normalised by the image size
    # What the corpus says each region shows (region_objects_of): "moon" for an object's own box, "part of moon"
    # for a proposal covering it, "background"; empty when the corpus does not record it (official stores).
    region_objects: tuple[str, ...] = ()

    @property
    def n_text(self) -> int:
        return len(self.tokens)

    @property
    def n_regions(self) -> int:
        return len(self.region_classes)

    @property
    def n(self) -> int:
        return self.n_text + self.n_regions

    def kinds(self) -> list[str]:
        """'cls' / 'word' / 'sep' / 'region' per position (the model's SequenceLayout, without padding)."""
        return SequenceLayout((self.n_text,), (self.n_regions,), self.n).kinds(0)

    def region_name(self, k: int) -> str:
        """Region k by what the corpus knows it shows, else by its detector class: 'moon #0', 'quilt #3'."""
        known = self.region_objects[k] if k < len(self.region_objects) else ""
        return f"{known or self.region_classes[k]} #{k}"

    def region_detail(self, k: int) -> str:
        """The region's name with where it comes from, for hover texts: 'moon #0 (corpus) · detector: quilt'."""
        if k < len(self.region_objects) and self.region_objects[k]:
            return f"{self.region_name(k)} (corpus) · detector: {self.region_classes[k]}"
        return f"{self.region_name(k)} (detector class)"

    @property
    def names_from_corpus(self) -> bool:
        return any(self.region_objects)

    def hover_labels(self) -> list[str]:
        """labels() with where each region's name comes from (region_detail), for hover texts."""
        return list(self.tokens) + [self.region_detail(k) for k in range(self.n_regions)]

    def labels(self) -> list[str]:
        """A readable name per position: the word-piece, or region_name(k) for region k (k = box index)."""
        return list(self.tokens) + [self.region_name(k) for k in range(self.n_regions)]

    def to_dict(self) -> dict:
        return {"example": self.example, "text_id": self.text_id, "image_id": self.image_id,
                "n_text": self.n_text, "n_regions": self.n_regions, "tokens": list(self.tokens),
                "region_classes": list(self.region_classes), "region_boxes": self.region_boxes.tolist(),
                "region_objects": list(self.region_objects)}


@dataclass(frozen=True, eq=False)
class ExampleAttention:
    layout: ExampleLayout
    maps: np.ndarray  # [layers, heads, n, n] float32

    def heads(self) -> Iterator["AttentionMap"]:
        for layer in range(self.maps.shape[0]):
            for head in range(self.maps.shape[1]):
                yield AttentionMap(self.layout, layer, head, self.maps[layer, head])


@dataclass(frozen=True, eq=False)
class AttentionMap:
    layout: ExampleLayout
    layer: int
    head: int
    map: np.ndarray  # [n, n] float32 (a view into its example's stack)


# ---------------------------------------------------------------------------------------------- extraction
def region_class_names(soft_labels: np.ndarray, class_names: list[str], background: bool) -> list[str]:
    """Top detector class per region; a background column 0 (official detector) is never the answer."""
    scores = np.asarray(soft_labels, np.float32)
    top = scores[:, 1:].argmax(1) + 1 if background else scores.argmax(1)
    return [class_names[i] for i in top]


def region_objects_of(meta: dict, n_regions: int) -> tuple[str, ...]:
    """Per region, the object the corpus says it shows, from an image's store metadata: its `objects`
    (categories, whose own boxes are the first regions) and `region_object` (the object each region covers
    with IoU >= 0.5, or -1). "" for every region when the corpus records neither (e.g. an official store)."""
    objects, owners = meta.get("objects"), meta.get("region_object")
    if not isinstance(objects, list) or not isinstance(owners, list):
        return ("",) * n_regions
    names = []
    for k in range(n_regions):
        owner = int(owners[k]) if k < len(owners) else -1
        category = objects[owner].get("category") if 0 <= owner < len(objects) and isinstance(
            objects[owner], dict) else None
        if not category:
            names.append("background" if owner == -1 and k < len(owners) else "")
        else:
            names.append(str(category) if owner == k else f"part of {category}")
    return tuple(names)


def _tokens(tokenizer, ids: list[int]) -> tuple[str, ...]:
    pieces = tokenizer.convert_ids_to_tokens(ids)
    return tuple(p if p is not None else f"[{i}]" for p, i in zip(pieces, ids))


@torch.inference_mode()
def batch_maps(uniter, batch: dict) -> list[np.ndarray]:
    """Per example of a collated batch, its maps [layers, heads, n, n] cropped to real positions (CPU float32).

    The crop is exact: padded keys get zero attention (mask -10000 underflows in the softmax) and padded
    queries are dropped, so an example gives the same maps in any batch."""
    batch = to_device(batch, next(uniter.parameters()).device)
    output = uniter.forward_batch(batch, output_attentions=True)
    layout = output.layout
    maps = []
    for i in range(len(layout)):  # crop on the device, one copy per example
        n = layout.total_len(i)
        maps.append(torch.stack([a[i, :, :n, :n] for a in output.attentions]).float().cpu().numpy())
    return maps


def iter_example_attention(model, corpus_dir: str | Path, split: str, batch_size: int = 16,
                           max_examples: int | None = None, device: str | torch.device | None = None,
                           max_text_len: int = 60, max_regions: int = 100, tokenizer=None,
                           progress: bool = True, indices: Sequence[int] | None = None
                           ) -> Iterator[ExampleAttention]:
    """Yield ExampleAttention for the first `max_examples` examples of the split, in dataset order, or for the
    examples `indices` (in that order; max_examples is then ignored), e.g. the one example an app shows.

    `model` is a UniterForPretraining or a UniterModel; it is put in eval mode (and moved to `device` if given).
    The tokenizer defaults to the corpus tokenizer of this project (uniter_core.data.tokenizer)."""
    dataset = ImageTextDataset(corpus_dir, split, max_text_len, max_regions)
    dataset.check_fits(model.config)
    store = dataset.store
    tokenizer = tokenizer or load_tokenizer()
    uniter = getattr(model, "uniter", model).eval()
    if device is not None:
        uniter.to(device)
    if indices is None:
        order = list(range(len(dataset) if max_examples is None else min(len(dataset), max_examples)))
    else:
        order = [int(i) for i in indices]
        bad = [i for i in order if not 0 <= i < len(dataset)]
        if bad:
            raise IndexError(f"example {bad[0]} is out of range: the {split!r} split has {len(dataset)} examples")
    with tqdm(total=len(order), desc=f"attention {split}", unit="ex", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            items = [dataset[i] for i in chunk]
            maps = batch_maps(uniter, collate(items))
            for index, item, example_maps in zip(chunk, items, maps):
                layout = ExampleLayout(
                    example=index, text_id=str(item["text_id"]), image_id=str(item["image_id"]),
                    tokens=_tokens(tokenizer, item["input_ids"].tolist()),
                    region_classes=tuple(region_class_names(item["soft_labels"].numpy(), store.class_names,
                                                            store.background_class)),
                    region_boxes=item["norm_bb"][:, :4].numpy().astype(np.float32),
                    region_objects=region_objects_of(store.meta(str(item["image_id"])), len(item["soft_labels"])))
                yield ExampleAttention(layout, example_maps)
            bar.update(len(items))


def iter_attention_maps(model, corpus_dir: str | Path, split: str, **kwargs) -> Iterator[AttentionMap]:
    """One AttentionMap per (example, layer, head); arguments as iter_example_attention."""
    for example in iter_example_attention(model, corpus_dir, split, **kwargs):
        yield from example.heads()
