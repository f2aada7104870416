"""Attention-pattern statistics of a trained model: tables (CSV, Parquet, JSON) and paper-style figures.

    python -m analyses.export_stats --run runs/<name> --split test --out stats/<name>/ [--max-examples N]
    python -m analyses.export_stats --checkpoint uniter-base.pt --corpus DIR --split test --out stats/base/

Every (example, layer, head) map of the split is classified into the six patterns (analyses.classifier) and
measured (analyses.patterns.HEAD_STATS); maps are streamed and dropped, only the small per-map rows are kept.
OUT gets, each file written atomically and columns.json last:
    examples.{csv,parquet,json}   one row per (example, layer, head)
    heads.{csv,parquet,json}      one row per (layer, head): pattern fractions, mean probabilities and stats
    layers.{csv,parquet,json}     one row per layer, likewise
    columns.json                  every column's dtype and meaning, the layout convention, the source
    figures/pattern_fractions_per_layer.{png,pdf,svg}   stacked bars
    figures/dominant_pattern_grid.{png,pdf,svg}         layer x head, most frequent pattern
    figures/reversed_block_share_grid.{png,pdf,svg}     layer x head, share of cross-modal (reversed-block) maps
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analyses import figures
from analyses.attention import iter_example_attention
from analyses.patterns import FEATURE_VERSION, HEAD_STATS, PATTERNS, head_stats, map_features
from analyses.train_classifier import load_classifier
from uniter_core.cli import exit_with, output_path, run_command, warn
from uniter_core.errors import UserError
from analyses.results import write_table
from analyses.sources import open_source, split_file
from uniter_core.io import write_json
from uniter_core.outputs import OutputFolder

DEFAULT_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LAYOUT = ("Maps are rows = queries, columns = keys over one example's real positions, laid out [CLS] "
          "word-pieces [SEP] regions: n_text counts [CLS] and [SEP], position n_text + k is region k. "
          "Layers and heads are numbered from 0.")
ID_COLUMNS = {"example": ("int64", "index of the example in the split (dataset order)"),
              "text_id": ("string", "caption id in the corpus"), "image_id": ("string", "image id in the corpus"),
              "layer": ("int64", "encoder layer, from 0"), "head": ("int64", "attention head, from 0"),
              "n_text": ("int64", "text positions including [CLS] and [SEP]"),
              "n_regions": ("int64", "region positions")}


def example_rows(example, classifier, probs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The rows of one example's layers x heads maps, as columns (`probs`: its classifier output, if known)."""
    layers, heads, n, _ = example.maps.shape
    lay = example.layout
    maps = example.maps.reshape(layers * heads, n, n)
    if probs is None:
        probs = classifier.predict_proba(map_features(maps, lay.n_text, lay.n_regions))
    k = layers * heads
    columns = {"example": np.full(k, lay.example), "text_id": np.full(k, lay.text_id, dtype=object),
               "image_id": np.full(k, lay.image_id, dtype=object),
               "layer": np.repeat(np.arange(layers), heads), "head": np.tile(np.arange(heads), layers),
               "n_text": np.full(k, lay.n_text), "n_regions": np.full(k, lay.n_regions),
               "pattern": np.array(classifier.classes, dtype=object)[probs.argmax(1)]}
    columns.update({f"p_{c}": probs[:, j] for j, c in enumerate(classifier.classes)})
    columns.update(head_stats(maps, lay.n_text, lay.n_regions))
    return columns


def per_map_table(examples, classifier, group: int = 16) -> pd.DataFrame:
    """One row per (example, layer, head). The classifier runs once per `group` examples: one call for a few
    hundred maps costs about what one call for an example's maps does."""
    chunks, pending = [], []

    def flush():
        features = [map_features(ex.maps.reshape(-1, *ex.maps.shape[2:]), ex.layout.n_text, ex.layout.n_regions)
                    for ex in pending]
        probs = np.split(classifier.predict_proba(np.concatenate(features)), np.cumsum([len(f) for f in features])[:-1])
        chunks.extend(example_rows(ex, classifier, p) for ex, p in zip(pending, probs))
        pending.clear()

    for example in examples:
        pending.append(example)
        if len(pending) == group:
            flush()
    if pending:
        flush()
    if not chunks:
        raise ExportError("the split holds no examples")
    table = pd.DataFrame({name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]})
    for name, (dtype, _) in ID_COLUMNS.items():
        table[name] = table[name].astype("int64" if dtype == "int64" else str)
    table["pattern"] = table["pattern"].astype(str)
    prob_stats = [f"p_{c}" for c in PATTERNS] + list(HEAD_STATS)
    table[prob_stats] = table[prob_stats].astype("float64")
    return table


def aggregate(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Pattern fractions, mean probabilities and mean statistics per group; dominant = most frequent pattern."""
    groups = table.groupby(keys, sort=True)
    out = groups.size().rename("n_maps").to_frame()
    fractions = pd.crosstab([table[k] for k in keys], table["pattern"], normalize="index")
    for c in PATTERNS:
        out[f"frac_{c}"] = fractions[c] if c in fractions else 0.0
    out["dominant_pattern"] = out[[f"frac_{c}" for c in PATTERNS]].to_numpy().argmax(1)
    out["dominant_pattern"] = [PATTERNS[i] for i in out["dominant_pattern"]]
    means = groups[[f"p_{c}" for c in PATTERNS] + list(HEAD_STATS)].mean()
    out = out.join(means.rename(columns=lambda c: f"mean_{c}"))
    out = out.reset_index()
    out["n_maps"] = out["n_maps"].astype("int64")
    return out


def column_docs(table: pd.DataFrame) -> dict:
    docs = {name: desc for name, (_, desc) in ID_COLUMNS.items()}
    docs["pattern"] = "predicted pattern (argmax of the p_ columns)"
    docs["n_maps"] = "maps in the group (examples x heads for a layer, examples for a head)"
    docs["dominant_pattern"] = "pattern with the largest frac_ in the group"
    for c in PATTERNS:
        docs[f"p_{c}"] = f"classifier probability of {c}"
        docs[f"frac_{c}"] = f"share of the group's maps predicted {c}"
        docs[f"mean_p_{c}"] = f"mean classifier probability of {c}"
    for name, desc in HEAD_STATS.items():
        docs[name] = desc
        docs[f"mean_{name}"] = f"mean over the group of: {desc}"
    return {"rows": int(len(table)),
            "columns": {c: {"dtype": str(table[c].dtype), "description": docs[c]} for c in table.columns}}


STATS_ENTRIES = ("figures", "columns.json") + tuple(f"{t}.{e}" for t in ("examples", "heads", "layers")
                                                    for e in ("csv", "parquet", "json"))


class ExportError(UserError):
    """Statistics that must not replace an earlier export (NaN, no maps)."""


def check_tables(tables: dict[str, pd.DataFrame], out: Path) -> None:
    """Every float column finite, every table non-empty: otherwise nothing is written."""
    for name, table in tables.items():
        if table.empty:
            raise ExportError(f"{out} not written: the {name} table is empty")
        numeric = table.select_dtypes("number")
        bad = [c for c in numeric.columns if not np.isfinite(numeric[c].to_numpy(np.float64)).all()]
        if bad:
            raise ExportError(f"{out} not written: column {bad[0]} of the {name} table holds NaN or infinite values")


def export(examples, classifier, out: Path, source: dict, force: bool = True) -> dict[str, pd.DataFrame]:
    """Classify and measure every map of `examples` (ExampleAttention), then write tables, figures and sidecar
    into OUT.partial and move it into place: OUT holds a complete export or the earlier one."""
    folder = _out_folder(out, force)
    folder.check()
    table = per_map_table(examples, classifier)
    tables = {"examples": table, "heads": aggregate(table, ["layer", "head"]), "layers": aggregate(table, ["layer"])}
    check_tables(tables, out)
    folder.start({"source": source})
    with folder.building() as work:
        for name, t in tables.items():
            write_table(t, work, name)
        figures.write_all(tables["layers"], tables["heads"], work / "figures")
        write_json(work / "columns.json", {
            "layout": LAYOUT, "patterns": list(PATTERNS), "feature_version": FEATURE_VERSION,
            "source": source, "tables": {name: column_docs(t) for name, t in tables.items()}})
        folder.finish()
    return tables


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="run folder written by uniter_core.train")
    src.add_argument("--checkpoint", type=Path, help="official UNITER .pt checkpoint (needs --corpus)")
    p.add_argument("--corpus", type=Path, help="corpus folder (default: the run's data.corpus)")
    p.add_argument("--preset", default="uniter-base", help="model preset of --checkpoint")
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, type=output_path)
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", type=Path, default=None, help="pattern classifier (default: the built-in one)")
    p.add_argument("--device", default=DEFAULT_DEVICE)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.checkpoint and not args.corpus:
        p.error("--checkpoint needs --corpus")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device {args.device!r} is not a device (cpu, cuda, cuda:1, ...)")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no GPU is available")
    if args.max_examples is not None and args.max_examples < 1:
        p.error("--max-examples must be at least 1")
    return args


def _out_folder(out: Path, force: bool = True) -> OutputFolder:
    return OutputFolder(out, "export_stats", "columns.json", force=force, legacy=lambda f: True,
                        own_entries=lambda name: name in STATS_ENTRIES)


def export_stats(*, out: Path, run: Path | None = None, checkpoint: Path | None = None, corpus: Path | None = None,
                 preset: str = "uniter-base", split: str = "test", max_examples: int | None = None,
                 batch_size: int = 16, model: Path | None = None, device: str = DEFAULT_DEVICE, progress: bool = True,
                 warn=None) -> dict[str, pd.DataFrame]:
    """Export the statistics of a run folder (`run`) or an official `checkpoint` read with `corpus` into `out`
    (see the module docstring); returns the tables. `warn(message)` hears about damaged checkpoints passed over."""
    # Refuse a bad --out before minutes of extraction (export() checks it again before writing).
    _out_folder(out).check()
    loaded, source = open_source(run=run, checkpoint=checkpoint, corpus=corpus, preset=preset, warn=warn)
    limits = {"max_text_len": loaded.max_text_len, "max_regions": loaded.max_regions}
    corpus = corpus or loaded.corpus
    split_file(corpus, split)
    classifier = load_classifier(model)
    source.update({"corpus": str(corpus), "split": split, "max_examples": max_examples,
                   "classifier": str(model or "default"), "classifier_data_hash": classifier.metadata["data_hash"],
                   "classifier_training": classifier.metadata.get("training", {}).get("description", "")})
    examples = iter_example_attention(loaded.model, corpus, split, batch_size=batch_size, max_examples=max_examples,
                                      device=device, progress=progress, **limits)
    return export(examples, classifier, out, source)


def summary(out: Path, tables: dict[str, pd.DataFrame]) -> str:
    """The command's line about an export: how many maps, examples, layers and heads."""
    maps = tables["examples"]
    return (f"{out}: {len(maps)} maps ({maps['example'].nunique()} examples x {len(tables['layers'])} layers x "
            f"{maps['head'].nunique()} heads)")


def _cli(argv=None) -> None:
    args = parse_args(argv)
    tables = export_stats(out=args.out, run=args.run, checkpoint=args.checkpoint, corpus=args.corpus,
                          preset=args.preset, split=args.split, max_examples=args.max_examples,
                          batch_size=args.batch_size, model=args.model, device=args.device,
                          progress=not args.no_progress, warn=warn)
    print(summary(args.out, tables))


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
