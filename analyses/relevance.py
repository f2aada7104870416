"""Why this match: the relevance of each word-piece and region to the ITM "match" logit, by three methods, and
how well each method finds what the match rests on.

    python -m analyses.relevance --run runs/pretrain-mini --split test --out behaviour/pretrain-mini/relevance

Methods, each a relevance matrix R [n, n] over an example's positions whose [CLS] row explains the match:

  attention  the last layer's attention, heads averaged
  rollout    attention rollout (Abnar & Zuidema 2020): the product over layers of 0.5 A + 0.5 I (heads averaged,
             rows renormalised), the residual stream counted as half of every layer
  gradient   gradient-weighted attention relevance (Chefer et al. 2021, "Generic Attention-model
             Explainability"): R = I, then for every layer R <- R + mean_heads[(dlogit/dA) * A]^+ R

Evaluation, over the split's true pairs:

  perturbation  remove regions (and, apart, word-pieces) in steps of 10 %: most relevant first (positive: the
                match probability should fall fast, lower area is better) and least relevant first (negative:
                higher is better); a seeded random order beside them. Removing a token takes it out of the
                attention (its key is masked), which for a region is the same as leaving it out of the input.
  pointing      per grounded word-piece, does the largest relevance of its row among the regions land on a
                region of its object (covering rule where the corpus records region_object, else own box)

OUT gets curves (mean probability per method, modality, direction and share), auc and pointing tables, figures
and summary.json.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analyses import behaviour_figures
from analyses.probe import bare_forward_seconds, match_logits
from analyses.results import Progress, read_results, write_results
from analyses.sources import (add_output_arguments, add_source_arguments, check_at_least, check_source_arguments,
                              open_analysis, source_keywords)
from uniter_core.cli import exit_with, run_command, warn
from uniter_core.data.dataset import collate
from uniter_core.grounding import region_owners, truth_sets
from uniter_core.model import SequenceLayout
from uniter_core.runs import to_device

COMMAND = "relevance"
TABLES = ("curves", "auc", "pointing")
METHODS = ("attention", "rollout", "gradient")
ORDERS = METHODS + ("random",)
MODALITIES = ("regions", "words")
DIRECTIONS = ("positive", "negative")
SHARES = tuple(round(0.1 * k, 1) for k in range(11))


# ------------------------------------------------------------------------------------------ relevance
def rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout [B, L, L] of per-layer head-averaged attention [B, L, L] (first layer first)."""
    eye = torch.eye(attentions[0].size(-1), device=attentions[0].device).expand_as(attentions[0])
    joint = eye.clone()
    for attention in attentions:
        mixed = 0.5 * attention + 0.5 * eye
        mixed = mixed / mixed.sum(-1, keepdim=True)
        joint = mixed @ joint
    return joint


def gradient_relevance(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s relevance [B, L, L] from per-layer attention and its gradient, both [B, heads, L, L]."""
    eye = torch.eye(attentions[0].size(-1), device=attentions[0].device)
    relevance = eye.expand(attentions[0].size(0), -1, -1).clone()
    for attention, gradient in zip(attentions, gradients):
        weighted = (gradient * attention).clamp(min=0).mean(1)
        relevance = relevance + weighted @ relevance
    return relevance


def relevance_matrices(model, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({method: R [B, L, L]}, match logits [B]) of a collated batch (one forward and one backward)."""
    with torch.enable_grad():
        output = model.uniter.forward_batch(batch, output_attentions=True)
        logits = match_logits(model, output.last_hidden_state)
        gradients = torch.autograd.grad(logits.sum(), output.attentions)
    attentions = [a.detach().float() for a in output.attentions]
    averaged = [a.mean(1) for a in attentions]
    return ({"attention": averaged[-1], "rollout": rollout(averaged),
             "gradient": gradient_relevance(attentions, [g.float() for g in gradients])}, logits.detach())


# ------------------------------------------------------------------------------------------ perturbation
def removal_order(scores: torch.Tensor, direction: str) -> list[int]:
    """Indices into `scores`, the ones to remove first first: most relevant (positive) or least (negative);
    ties keep their order."""
    order = torch.argsort(scores, descending=direction == "positive", stable=True)
    return order.tolist()


@dataclass
class Variant:
    example: int  # row of the example in its batch
    order: str
    modality: str
    direction: str
    share: float
    removed: tuple[int, ...]  # sequence positions taken out


def variants_of(k: int, relevance: dict[str, torch.Tensor], layout: SequenceLayout, generator) -> list[Variant]:
    """Every (order, modality, direction, share) removal of example k of a batch."""
    out = []
    for modality in MODALITIES:
        part = layout.region_slice(k) if modality == "regions" else layout.word_slice(k)
        positions = list(range(part.start, part.stop))
        if not positions:
            continue
        random_scores = torch.rand(len(positions), generator=generator)
        for order in ORDERS:
            scores = random_scores if order == "random" else relevance[order][k, 0, part].cpu()
            for direction in DIRECTIONS:
                ranked = [positions[i] for i in removal_order(scores, direction)]
                for share in SHARES:
                    out.append(Variant(k, order, modality, direction, share,
                                       tuple(ranked[:round(share * len(positions))])))
    return out


@torch.inference_mode()
def match_probabilities(model, batch: dict, variants: list[Variant], chunk: int = 256) -> list[float]:
    """The match probability of each variant (its example with its positions masked out of the attention);
    identical masks of one example are run once."""
    unique: dict[tuple, int] = {}
    for v in variants:
        unique.setdefault((v.example, v.removed), len(unique))
    keys = list(unique)
    probabilities = torch.empty(len(keys))
    for start in range(0, len(keys), chunk):
        part = keys[start:start + chunk]
        rows = torch.tensor([k for k, _ in part], device=batch["attn_masks"].device)
        sub = {name: (value.index_select(0, rows) if torch.is_tensor(value) and value.size(0) == len(
            batch["txt_lens"]) and name != "position_ids" else value) for name, value in batch.items()}
        masks = sub["attn_masks"].clone()
        for i, (_, removed) in enumerate(part):
            if removed:
                masks[i, list(removed)] = 0
        sub["attn_masks"] = masks
        sub["txt_lens"] = [batch["txt_lens"][k] for k, _ in part]
        sub["num_bbs"] = [batch["num_bbs"][k] for k, _ in part]
        hidden = model.uniter.forward_batch(sub).last_hidden_state
        probabilities[start:start + len(part)] = torch.sigmoid(match_logits(model, hidden)).cpu()
    return [float(probabilities[unique[(v.example, v.removed)]]) for v in variants]


def area(shares, values) -> float:
    """Area under a curve sampled at `shares` (trapezoids), on the 0-1 share axis."""
    return float(np.trapezoid(values, shares))


# ------------------------------------------------------------------------------------------ one example
@dataclass
class ExampleRelevance:
    """What the workbench shows for one pair: each method's relevance of the words and regions for the match,
    and the perturbation curves of that pair."""

    probability: float
    words: dict[str, np.ndarray]  # method -> [n_words]
    regions: dict[str, np.ndarray]  # method -> [n_regions]
    curves: pd.DataFrame  # order, modality, direction, share, probability


def explain_example(model, item: dict, seed: int = 0) -> ExampleRelevance:
    """Relevance and perturbation curves of one dataset item (a caption with its image)."""
    model.eval()
    batch = to_device(collate([item]), model.device)
    relevance, logits = relevance_matrices(model, batch)
    layout = SequenceLayout.from_batch(batch)
    variants = variants_of(0, relevance, layout, torch.Generator().manual_seed(seed))
    probabilities = match_probabilities(model, batch, variants)
    curves = pd.DataFrame([{"order": v.order, "modality": v.modality, "direction": v.direction, "share": v.share,
                            "probability": p} for v, p in zip(variants, probabilities)])
    return ExampleRelevance(float(torch.sigmoid(logits[0])),
                            {m: r[0, 0, layout.word_slice(0)].cpu().numpy() for m, r in relevance.items()},
                            {m: r[0, 0, layout.region_slice(0)].cpu().numpy() for m, r in relevance.items()}, curves)


# ------------------------------------------------------------------------------------------ a split
def pointing_hits(relevance: dict[str, torch.Tensor], batch: dict, items: list[dict], owners: list, tally: dict):
    """Add the pointing game of every method on the batch's grounded word-pieces to `tally`."""
    layout = SequenceLayout.from_batch(batch)
    for k, item in enumerate(items):
        n_regions, regions = layout.num_bbs[k], layout.region_slice(k)
        rule = "covering" if owners[k] is not None else "box"
        for position, truth in truth_sets(item, owners[k], n_regions).items():
            good = truth[rule]
            if not good or not 0 < position < layout.txt_lens[k] - 1:
                continue
            for method, matrix in relevance.items():
                chosen = int(matrix[k, position, regions].argmax())
                entry = tally.setdefault(method, [0, 0.0, 0, rule])
                entry[0] += int(chosen in good)
                entry[1] += len(good) / n_regions
                entry[2] += 1


def evaluate_split(model, dataset, indices: list[int], batch_size: int = 16, seed: int = 0,
                   progress=False) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(curves, auc, pointing) over the dataset items `indices` (module docstring; `progress` as
    analyses.results.Progress)."""
    generator = torch.Generator().manual_seed(seed)
    records, pointing = [], {}
    report = Progress(progress)
    for start in range(0, len(indices), batch_size):
        chosen = indices[start:start + batch_size]
        items = [dataset[i] for i in chosen]
        batch = to_device(collate(items), model.device)
        relevance, _ = relevance_matrices(model, batch)
        layout = SequenceLayout.from_batch(batch)
        variants = [v for k in range(len(items)) for v in variants_of(k, relevance, layout, generator)]
        for v, p in zip(variants, match_probabilities(model, batch, variants)):
            records.append((chosen[v.example], v.order, v.modality, v.direction, v.share, p))
        owners = [region_owners(dataset, item["image_id"], n) for item, n in zip(items, batch["num_bbs"])]
        pointing_hits(relevance, batch, items, owners, pointing)
        report("relevance", min(start + batch_size, len(indices)), len(indices))
    frame = pd.DataFrame(records, columns=["example", "order", "modality", "direction", "share", "probability"])
    keys = ["order", "modality", "direction"]
    curves = frame.groupby(keys + ["share"], sort=False)["probability"].agg(["mean", "std", "count"]).reset_index()
    curves = curves.rename(columns={"mean": "probability", "std": "probability_std", "count": "examples"})
    per_example = frame.groupby(keys + ["example"], sort=False).apply(
        lambda g: area(g["share"].to_numpy(), g["probability"].to_numpy()), include_groups=False).rename("auc")
    auc = per_example.groupby(keys, sort=False).agg(["mean", "std", "count"]).reset_index()
    auc = auc.rename(columns={"mean": "auc", "std": "auc_std", "count": "examples"})
    # a corpus without word-region alignments (an official one) has no pointing game: NaN, 0 word-pieces
    pointing_table = pd.DataFrame([{"method": m, "hits": h / n if n else float("nan"),
                                    "chance": c / n if n else float("nan"), "word_pieces": int(n), "rule": rule}
                                   for m, (h, c, n, rule) in ((m, pointing.get(m, (0, 0.0, 0, "none")))
                                                              for m in METHODS)])
    curves["examples"] = curves["examples"].astype("int64")
    auc["examples"] = auc["examples"].astype("int64")
    return curves, auc, pointing_table


COLUMNS = {
    "curves": {"order": "what decides the removal order: a relevance method or random",
               "modality": "what is removed: regions or words (word-pieces)",
               "direction": "positive: most relevant first; negative: least relevant first",
               "share": "share of that modality's tokens removed", "probability": "mean match probability",
               "probability_std": "its standard deviation over the examples", "examples": "examples averaged"},
    "auc": {"order": "relevance method or random", "modality": "regions or words",
            "direction": "positive (lower is better) or negative (higher is better)",
            "auc": "mean over examples of the area under the probability curve (share 0 to 1)",
            "auc_std": "its standard deviation over the examples", "examples": "examples"},
    "pointing": {"method": "relevance method", "hits": "share of grounded word-pieces whose most relevant region "
                                                        "lands on their object",
                 "chance": "chance level: mean share of regions that would be a hit",
                 "word_pieces": "grounded word-pieces", "rule": "covering (region_object), box (own box), or none (no grounded words)"},
}


def relevance(*, out: Path, run: Path | None = None, checkpoint: Path | None = None, corpus: Path | None = None,
              preset: str = "uniter-base", overrides=(), split: str = "test", max_examples: int | None = None,
              batch_size: int = 16, seed: int = 0, device: str = "cpu", progress=True, force: bool = True,
              warn=None) -> dict:
    """Evaluate the three methods on the split's true pairs and write the module docstring's outputs."""
    opened = open_analysis(out, COMMAND, TABLES, run=run, checkpoint=checkpoint, corpus=corpus, preset=preset,
                           overrides=overrides, split=split, device=device, force=force, warn=warn)
    indices = list(range(len(opened.dataset)))[:max_examples]
    bare = bare_forward_seconds(opened.model, opened.dataset, indices, batch_size)
    started = time.perf_counter()
    curves, auc, pointing = evaluate_split(opened.model, opened.dataset, indices, batch_size, seed, progress)
    seconds = time.perf_counter() - started
    summary = {"source": opened.source,
               "settings": {"max_examples": max_examples, "batch_size": batch_size, "seed": seed},
               "examples": len(indices),
               "auc": {f"{r.order}/{r.modality}/{r.direction}": round(float(r.auc), 4) for r in auc.itertuples()},
               "pointing": {r.method: None if r.word_pieces == 0 else round(float(r.hits), 4)
                            for r in pointing.itertuples()},
               "pointing_chance": None if pointing["word_pieces"].iloc[0] == 0 else round(
                   float(pointing["chance"].iloc[0]), 4),
               "cost": {"device": str(device), "bare_forward_s": round(bare, 3), "evaluation_s": round(seconds, 3),
                        "evaluation_over_bare": round(seconds / bare, 2)}}
    tables = {"curves": curves, "auc": auc, "pointing": pointing}
    write_results(opened.folder, tables, COLUMNS, summary, lambda figures: behaviour_figures.write_relevance(tables, figures),
                  may_be_nan=lambda table, column: column.endswith("_std") or table == "pointing")
    return summary


def read_relevance(folder: Path) -> tuple[dict, dict[str, pd.DataFrame]]:
    return read_results(folder, TABLES)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    add_output_arguments(p, classifier=False)
    p.add_argument("--max-examples", type=int, default=None, help="the first N examples (default: the whole split)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per relevance pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the random removal order")
    args = p.parse_args(argv)
    check_source_arguments(p, args)
    check_at_least(p, args, 1, "batch_size", "max_examples")
    return args


def _cli(argv=None) -> None:
    args = parse_args(argv)
    summary = relevance(out=args.out, **source_keywords(args), max_examples=args.max_examples,
                        batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress, warn=warn)
    print(f"{args.out}: {summary['examples']} examples")
    for key, value in summary["auc"].items():
        print(f"  AUC {key}: {value:.3f}")
    print("  pointing game: " + ", ".join(f"{m} {v:.3f}" if v is not None else f"{m} n/a (no grounded words)"
                                         for m, v in summary["pointing"].items())
          + (f" (chance {summary['pointing_chance']:.3f})" if summary["pointing_chance"] is not None else ""))


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
