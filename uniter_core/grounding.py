"""How words meet regions, layer by layer: the geometry of the states, WRA's transport plan and the attention,
measured against the corpus's ground truth.

Ground truth comes from two places. A caption's `alignment` links a word-piece to an object, whose own
ground-truth box is the region of the same index (the builder puts the boxes first). The feature store's
per-image `region_object` (when the corpus has it) names, for every region, the object it covers (IoU >= 0.5)
or -1. A word-piece's chosen region r is a hit under

  own box    r is one of the word-piece's ground-truth boxes
  covering   region_object[r] is the word-piece's object: its own box or any proposal covering it

and the chance level of a rule is the share of the example's regions that would be a hit, averaged over the
grounded word-pieces. Where a region is chosen:

  plan       the largest mass of WRA's transport plan (IPOT over that layer's text and region states, as the
             WRA loss computes it on the last layer)
  attention  the pointing game: the largest word-piece -> region attention of that layer, heads averaged

Beside them, the mean cosine between the states of different word-pieces ([CLS] and [SEP] excluded), different
regions, and a word-piece and a region (`state_cosines`): values near 1 mean the states collapsed to one
direction, where WRA's cosine costs are all about equal.
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F

from uniter_core.data.dataset import alignment_by_position, collate
from uniter_core.model import SequenceLayout
from uniter_core.ot import wra_plan
from uniter_core.pretrain import split_text_regions
from uniter_core.runs import to_device
from uniter_core.tasks import wra_pads

RULES = ("box", "covering")
COSINES = ("word_word", "region_region", "word_region")


def _mean_off_diagonal(similarity: torch.Tensor) -> float:
    n = similarity.size(0)
    return float((similarity.sum() - similarity.diagonal().sum()) / (n * n - n)) if n > 1 else float("nan")


def state_cosines(hidden: torch.Tensor, layout: SequenceLayout, k: int) -> dict[str, float]:
    """The COSINES of example k of a batch's states [B, L, H] (NaN where a part has fewer than two states)."""
    words = F.normalize(hidden[k, layout.word_slice(k)].float(), dim=-1)
    regions = F.normalize(hidden[k, layout.region_slice(k)].float(), dim=-1)
    cross = words @ regions.T
    return {"word_word": _mean_off_diagonal(words @ words.T),
            "region_region": _mean_off_diagonal(regions @ regions.T),
            "word_region": float(cross.mean()) if cross.numel() else float("nan")}


def region_owners(dataset, image_id: str, n_regions: int) -> list[int] | None:
    """The object each of the first `n_regions` regions of an image covers (-1: none), from the store's
    region_object; None when the corpus does not record it."""
    owners = dataset.store.meta(image_id).get("region_object")
    return None if owners is None else [int(o) for o in owners[:n_regions]]


class Tally:
    """Hits and chance per (layer, where, rule) over grounded word-pieces, and the mean cosines per layer."""

    def __init__(self):
        self.hits: dict[tuple, int] = defaultdict(int)
        self.chance: dict[tuple, float] = defaultdict(float)
        self.words: dict[tuple, int] = defaultdict(int)
        self.cosines: dict[tuple, list[float]] = defaultdict(list)

    def add_choice(self, key: tuple, chosen: int, truth: dict[str, set[int]], n_regions: int) -> None:
        for rule, good in truth.items():
            self.hits[(*key, rule)] += int(chosen in good)
            self.chance[(*key, rule)] += len(good) / n_regions
            self.words[(*key, rule)] += 1

    def accuracy(self, key: tuple) -> tuple[float, float, int]:
        """(share of hits, chance level, grounded word-pieces) of one (layer, where, rule)."""
        words = self.words.get(key, 0)
        return (self.hits[key] / words, self.chance[key] / words, words) if words else (float("nan"),) * 2 + (0,)

    def mean_cosine(self, layer: int, name: str) -> float:
        values = [v for v in self.cosines[(layer, name)] if v == v]  # NaN: too few states of that kind
        return sum(values) / len(values) if values else float("nan")


def truth_sets(item: dict, owners: list[int] | None, n_regions: int) -> dict[int, dict[str, set[int]]]:
    """Per grounded sequence position: the regions that count as a hit under each rule available."""
    truth = {}
    for position, boxes in alignment_by_position(item).items():
        rules = {"box": {r for r in boxes if r < n_regions}}
        if owners is not None:
            rules["covering"] = {r for r, owner in enumerate(owners) if owner in boxes}
        truth[position] = rules
    return truth


def transport_plan(hidden: torch.Tensor, batch: dict, config) -> torch.Tensor:
    """WRA's IPOT plan [B, T, K] between the text ([CLS] .. [SEP]) and region states of a batch's states
    [B, L, H] (config: the UniterConfig's OT settings); rows follow sequence positions, zero on padding."""
    txt_pad, img_pad = wra_pads(batch, hidden.device)
    txt_emb, img_emb = split_text_regions(hidden.float(), txt_pad, img_pad)
    return wra_plan(txt_emb, img_emb, txt_pad, img_pad, config.ot_beta, config.ot_iteration, config.ot_k,
                    config.ot_solver)[1]


def add_layer(tally: Tally, layer: int, hidden: torch.Tensor, attention: torch.Tensor | None, batch: dict,
              truths: list[dict], config) -> None:
    """One layer's states [B, L, H] (and its head-averaged attention [B, L, L], None for the embeddings) into
    the tally: cosines per example, and the plan's and the attention's choice for every grounded position."""
    layout = SequenceLayout(tuple(batch["txt_lens"]), tuple(batch["num_bbs"]), hidden.size(1))
    plan = transport_plan(hidden, batch, config)
    for k, truth_k in enumerate(truths):
        for name, value in state_cosines(hidden, layout, k).items():
            tally.cosines[(layer, name)].append(value)
        n_regions, regions = layout.num_bbs[k], layout.region_slice(k)
        for position, truth in truth_k.items():
            tally.add_choice((layer, "plan"), int(plan[k, position, :n_regions].argmax()), truth, n_regions)
            if attention is not None:
                tally.add_choice((layer, "attention"), int(attention[k, position, regions].argmax()), truth,
                                 n_regions)


def alignment_hits(hidden: torch.Tensor, batch: dict, examples: list[dict], config) -> tuple[int, int, float]:
    """Own-box rule of WRA's plan over states [B, L, H] of the collated `examples`: (grounded word-pieces whose
    largest mass lands on one of their boxes, grounded word-pieces, summed chance level)."""
    tally = Tally()
    truths = [truth_sets(e, None, n) for e, n in zip(examples, batch["num_bbs"])]
    add_layer(tally, 0, hidden, None, batch, truths, config)
    key = (0, "plan", "box")
    return tally.hits[key], tally.words[key], tally.chance[key]


@torch.inference_mode()
def measure_batch(model, dataset, items: list[dict], tally: Tally, layers: str = "all") -> None:
    """Add one batch of dataset items (true pairs) to `tally`: per layer (0 = embeddings; `layers="last"`: the
    final layer only) the cosines, the plan's choices and, for encoder layers, the attention's choices."""
    batch = to_device(collate(items), model.device)
    output = model.uniter.forward_batch(batch, output_hidden_states=True, output_attentions=True)
    truths = [truth_sets(item, region_owners(dataset, item["image_id"], n), n)
              for item, n in zip(items, batch["num_bbs"])]
    last = len(output.hidden_states) - 1
    for layer in (range(last + 1) if layers == "all" else [last]):
        attention = output.attentions[layer - 1].float().mean(1) if layer else None
        add_layer(tally, layer, output.hidden_states[layer], attention, batch, truths, model.config)


def grounding_tally(model, dataset, indices: list[int], batch_size: int = 32, layers: str = "all") -> Tally:
    """measure_batch over the dataset items `indices` (the model is used as it is: put it in eval mode)."""
    tally = Tally()
    for start in range(0, len(indices), batch_size):
        measure_batch(model, dataset, [dataset[i] for i in indices[start:start + batch_size]], tally, layers)
    return tally
