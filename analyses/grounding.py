"""Which heads ground words in regions: per layer x head, does a word-piece's attention point at its object, does a
region's attention point at the words naming it, and how much of each head's attention crosses the modalities.

    python -m analyses.grounding --run runs/pretrain-mini --split test --out behaviour/pretrain-mini/grounding

Over the split's true pairs with a ground-truth alignment (every one, or the first --max-examples), for every
encoder layer x head (uniter_core.grounding has the rules):

  word_to_region   share of grounded word-pieces whose largest attention to a region lands on a region of their
                   object (covering rule: any region covering it with IoU >= 0.5, where the corpus records
                   region_object; else the own-box rule), with the chance level (the share of such regions)
  region_to_word   share of the regions of a named object (covering it, or its own box without region_object)
                   whose largest attention to a word-piece lands on a word-piece naming that object, with chance
  cross_modal      the share of attention that word-piece rows give to regions and region rows give to the text,
                   averaged over those rows; Cao et al. 2020 (VALUE) count the heads above 0.5 (UNITER-base: 15 %)

and per layer (0: the embeddings) WRA's transport plan computed on that layer's states (own box and covering)
and the pointing game of the head-averaged attention. OUT gets heads and layers tables, figures and summary.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analyses import behaviour_figures
from analyses.head_importance import dominant_patterns
from analyses.results import Progress, read_results, write_results
from analyses.sources import (add_output_arguments, add_source_arguments, check_at_least, check_source_arguments,
                              open_analysis, source_keywords)
from analyses.train_classifier import load_classifier
from analyses.patterns import PATTERNS
from analyses.probe import bare_forward_seconds
from uniter_core.cli import exit_with, run_command, warn
from uniter_core.data.dataset import alignment_by_position, collate
from uniter_core.grounding import Tally, add_layer, region_owners, truth_sets
from uniter_core.runs import to_device

COMMAND = "grounding"
TABLES = ("heads", "layers")
VALUE_THRESHOLD = 0.5
DIRECTIONS = ("word_to_region", "region_to_word")


class HeadTally:
    """Hits, chance and counts per (layer, head) for both directions, and the cross-modal attention shares."""

    def __init__(self, layers: int, heads: int):
        shape = (layers, heads)
        self.hits = {d: np.zeros(shape) for d in DIRECTIONS}
        self.chance = {d: np.zeros(shape) for d in DIRECTIONS}
        self.count = dict.fromkeys(DIRECTIONS, 0)
        self.mass = {name: np.zeros(shape) for name in ("word_to_regions", "region_to_text", "cross_modal")}
        self.rows = dict.fromkeys(self.mass, 0)

    def add_example(self, attention: torch.Tensor, n_text: int, n_regions: int, item: dict,
                    owners: list[int] | None) -> None:
        """One example's attention [layers, heads, n, n] (cropped to its real positions)."""
        words = list(range(1, n_text - 1))
        regions = list(range(n_text, n_text + n_regions))
        if words and regions:
            to_regions = attention[:, :, words][..., regions].sum(-1)  # [layers, heads, words]
            to_text = attention[:, :, regions][..., :n_text].sum(-1)  # [layers, heads, regions]
            self.mass["word_to_regions"] += to_regions.sum(-1).numpy()
            self.mass["region_to_text"] += to_text.sum(-1).numpy()
            self.mass["cross_modal"] += (to_regions.sum(-1) + to_text.sum(-1)).numpy()
            self.rows["word_to_regions"] += len(words)
            self.rows["region_to_text"] += len(regions)
            self.rows["cross_modal"] += len(words) + len(regions)
        truth = truth_sets(item, owners, n_regions)
        rule = "covering" if owners is not None else "box"
        positions = [p for p in truth if truth[p][rule] and 0 < p < n_text - 1]
        if positions:
            good = torch.zeros(len(positions), n_regions, dtype=torch.bool)
            for i, p in enumerate(positions):
                good[i, list(truth[p][rule])] = True
            choice = attention[:, :, positions][..., regions].argmax(-1)  # [layers, heads, positions]
            hit = good[torch.arange(len(positions)), choice]
            self.hits["word_to_region"] += hit.sum(-1).numpy()
            self.chance["word_to_region"] += float(good.sum(1).div(n_regions).sum())
            self.count["word_to_region"] += len(positions)
        named = named_regions(item, owners, n_regions)
        if named and words:
            good = torch.zeros(len(named), len(words), dtype=torch.bool)
            for i, (_, naming) in enumerate(named):
                good[i, [p - 1 for p in naming]] = True
            rows = [n_text + r for r, _ in named]
            choice = attention[:, :, rows][..., words].argmax(-1)  # [layers, heads, named regions]
            hit = good[torch.arange(len(named)), choice]
            self.hits["region_to_word"] += hit.sum(-1).numpy()
            self.chance["region_to_word"] += float(good.sum(1).div(len(words)).sum())
            self.count["region_to_word"] += len(named)

    def table(self) -> pd.DataFrame:
        layers, heads = self.hits["word_to_region"].shape
        out = pd.DataFrame({"layer": np.repeat(np.arange(layers), heads), "head": np.tile(np.arange(heads), layers)})
        for d in DIRECTIONS:
            n = self.count[d]
            out[d] = (self.hits[d] / n).ravel() if n else np.nan
            out[f"{d}_chance"] = (self.chance[d] / n).ravel() if n else np.nan
            out[f"{d}_over_chance"] = out[d] / out[f"{d}_chance"]
            out[f"{d}_count"] = np.int64(n)
        for name, total in self.mass.items():
            out[name] = (total / self.rows[name]).ravel() if self.rows[name] else np.nan
        return out


def named_regions(item: dict, owners: list[int] | None, n_regions: int) -> list[tuple[int, list[int]]]:
    """(region, the word-piece positions naming its object) for every region of an object the caption names:
    regions covering it (region_object) or, without that record, the object's own box."""
    naming: dict[int, list[int]] = {}
    for position, boxes in alignment_by_position(item).items():
        for box in boxes:
            naming.setdefault(box, []).append(position)
    out = []
    for r in range(n_regions):
        obj = owners[r] if owners is not None else r
        if obj in naming:
            out.append((r, sorted(naming[obj])))
    return out


@torch.inference_mode()
def measure(model, dataset, indices: list[int], batch_size: int = 32, progress=False) -> tuple[HeadTally, Tally]:
    """(per-head tally, uniter_core.grounding's per-layer tally) over the dataset items `indices` (`progress`:
    as analyses.results.Progress)."""
    config = model.config
    heads = HeadTally(config.num_hidden_layers, config.num_attention_heads)
    layers = Tally()
    report = Progress(progress)
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        batch = to_device(collate(items), model.device)
        output = model.uniter.forward_batch(batch, output_hidden_states=True, output_attentions=True)
        owners = [region_owners(dataset, item["image_id"], n) for item, n in zip(items, batch["num_bbs"])]
        stacked = torch.stack(output.attentions, 1).float().cpu()  # [B, layers, heads, L, L]
        for k, item in enumerate(items):
            n_text, n_regions = batch["txt_lens"][k], batch["num_bbs"][k]
            n = n_text + n_regions
            heads.add_example(stacked[k, :, :, :n, :n], n_text, n_regions, item, owners[k])
        truths = [truth_sets(item, o, n) for item, o, n in zip(items, owners, batch["num_bbs"])]
        for layer, hidden in enumerate(output.hidden_states):
            attention = output.attentions[layer - 1].float().mean(1) if layer else None
            add_layer(layers, layer, hidden, attention, batch, truths, config)
        report("grounding", min(start + batch_size, len(indices)), len(indices))
    return heads, layers


def layer_table(tally: Tally, n_layers: int) -> pd.DataFrame:
    rows = []
    for layer in range(n_layers + 1):
        row = {"layer": layer}
        for where in ("plan", "attention"):
            for rule in ("box", "covering"):
                accuracy, chance, words = tally.accuracy((layer, where, rule))
                row[f"{where}_{rule}"] = accuracy
                row[f"{where}_{rule}_chance"] = chance
        for name in ("word_word", "region_region", "word_region"):
            row[f"cosine_{name}"] = tally.mean_cosine(layer, name)
        rows.append(row)
    return pd.DataFrame(rows)


COLUMNS = {
    "heads": {"layer": "encoder layer, from 0", "head": "attention head, from 0",
              "dominant_pattern": "most frequent pattern of the head over the measured examples",
              **{f"frac_{c}": f"share of the head's maps classified {c}" for c in PATTERNS},
              "word_to_region": "share of grounded word-pieces whose largest region attention lands on their object",
              "word_to_region_chance": "chance level: mean share of an example's regions that would be a hit",
              "word_to_region_over_chance": "word_to_region / its chance level",
              "word_to_region_count": "grounded word-pieces counted",
              "region_to_word": "share of named objects' regions whose largest word attention lands on a naming "
                                "word-piece",
              "region_to_word_chance": "chance level: mean share of the word-pieces that name the region's object",
              "region_to_word_over_chance": "region_to_word / its chance level",
              "region_to_word_count": "regions counted",
              "word_to_regions": "mean attention mass a word-piece row gives to regions",
              "region_to_text": "mean attention mass a region row gives to the text ([CLS], word-pieces, [SEP])",
              "cross_modal": "mean attention mass to the other modality over word-piece and region rows"},
    "layers": {"layer": "0: the embeddings, then encoder layer l - 1's output as layer l",
               **{f"{w}_{r}{c}": f"{'WRA plan on this layer' if w == 'plan' else 'head-averaged attention'} "
                                 f"({'own box' if r == 'box' else 'covering'} rule){' chance level' if c else ''}"
                  for w in ("plan", "attention") for r in ("box", "covering") for c in ("", "_chance")},
               **{f"cosine_{n}": f"mean cosine between the states ({n.replace('_', ' vs ')})"
                  for n in ("word_word", "region_region", "word_region")}},
}


def grounding(*, out: Path, run: Path | None = None, checkpoint: Path | None = None, corpus: Path | None = None,
              preset: str = "uniter-base", overrides=(), split: str = "test", max_examples: int | None = None,
              batch_size: int = 32, classifier: Path | None = None, device: str = "cpu", progress=True,
              force: bool = True, warn=None) -> dict:
    """Measure and write everything of the module docstring into `out`; returns the summary."""
    opened = open_analysis(out, COMMAND, TABLES, run=run, checkpoint=checkpoint, corpus=corpus, preset=preset,
                           overrides=overrides, split=split, device=device, force=force, warn=warn)
    dataset, model = opened.dataset, opened.model
    patterns_from = load_classifier(classifier)
    grounded = [i for i, t in enumerate(dataset.texts) if t.get("alignment")]
    indices = (grounded or list(range(len(dataset))))[:max_examples]
    bare = bare_forward_seconds(model, dataset, indices, batch_size)
    started = time.perf_counter()
    head_tally, layer_tally = measure(model, dataset, indices, batch_size, progress)
    seconds = time.perf_counter() - started
    heads = dominant_patterns(opened.loaded, opened.corpus, split, indices, patterns_from, device).merge(
        head_tally.table(), on=["layer", "head"])
    layers = layer_table(layer_tally, model.config.num_hidden_layers)
    summary = {
        "source": {**opened.source, "classifier": str(classifier or "default"),
                   "classifier_data_hash": patterns_from.metadata.get("data_hash", "")},
        "settings": {"max_examples": max_examples, "batch_size": batch_size, "value_threshold": VALUE_THRESHOLD},
        "examples": len(indices), "rule": "covering" if region_owners(dataset, dataset.texts[indices[0]]["image_id"], 1)
        is not None else "box",
        "grounded_word_pieces": head_tally.count["word_to_region"], "named_regions": head_tally.count["region_to_word"],
        "share_of_heads_cross_modal_over_half": float((heads["cross_modal"] > VALUE_THRESHOLD).mean()),
        "best_heads": {d: best_head(heads, d) for d in DIRECTIONS},
        "cost": {"device": str(device), "bare_forward_s": round(bare, 3), "measure_s": round(seconds, 3),
                 "measure_over_bare": round(seconds / bare, 2)},
    }
    write_results(opened.folder, {"heads": heads, "layers": layers}, COLUMNS, summary,
                  lambda figures: behaviour_figures.write_grounding({"heads": heads, "layers": layers}, figures),
                  may_be_nan=lambda table, column: True if table == "layers" or column.startswith(DIRECTIONS)
                  else False)
    return summary


def best_head(heads: pd.DataFrame, direction: str) -> dict | None:
    column = heads[f"{direction}_over_chance"]
    if column.isna().all():
        return None
    row = heads.loc[column.idxmax()]
    return {"layer": int(row["layer"]), "head": int(row["head"]), "share": round(float(row[direction]), 4),
            "chance": round(float(row[f"{direction}_chance"]), 4), "pattern": str(row["dominant_pattern"])}


def read_grounding(folder: Path) -> tuple[dict, dict[str, pd.DataFrame]]:
    return read_results(folder, TABLES)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    add_output_arguments(p)
    p.add_argument("--max-examples", type=int, default=None, help="the first N grounded captions (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    check_source_arguments(p, args)
    check_at_least(p, args, 1, "batch_size", "max_examples")
    return args


def _cli(argv=None) -> None:
    args = parse_args(argv)
    summary = grounding(out=args.out, **source_keywords(args), max_examples=args.max_examples,
                        batch_size=args.batch_size, classifier=args.model, progress=not args.no_progress, warn=warn)
    print(f"{args.out}: {summary['examples']} examples, {summary['grounded_word_pieces']} grounded word-pieces, "
          f"{summary['named_regions']} named regions ({summary['rule']} rule); heads with cross-modal attention "
          f"> {VALUE_THRESHOLD}: {summary['share_of_heads_cross_modal_over_half']:.0%}")
    for direction, best in summary["best_heads"].items():
        if best:
            print(f"best {direction.replace('_', ' ')} head: layer {best['layer']} head {best['head']} "
                  f"({best['pattern']}): {best['share']:.3f} against chance {best['chance']:.3f}")


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
