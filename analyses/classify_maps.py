"""Classify attention maps from an .npz file into the six patterns.

    python -m analyses.classify_maps --maps FILE.npz --out FILE.csv [--model PATH]

FILE.npz holds map_<i> ([n, n], rows = queries), n_text_<i> (including [CLS] and [SEP]) and n_regions_<i>
(the analyses.mapfile format). The CSV gets one row per map: index, label, and p_<pattern> for each of the six
patterns. A bad file stops everything with one sentence naming it and the problem, and no CSV is written.
Without --model the default classifier is used (trained on first use).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from analyses.mapfile import MapRecord, read_maps
from analyses.patterns import map_features
from analyses.train_classifier import load_classifier
from uniter_core.cli import exit_with, run_command
from uniter_core.io import atomic_path
from uniter_core.outputs import check_output_file, first_line


def classify_records(records: list[MapRecord], classifier) -> pd.DataFrame:
    """One row per map: index, label, p_<pattern>."""
    x = np.stack([map_features(r.map, r.n_text, r.n_regions)[0] for r in records])
    probs = classifier.predict_proba(x)
    table = pd.DataFrame({"index": [r.index for r in records],
                          "label": np.array(classifier.classes)[probs.argmax(1)]})
    for j, name in enumerate(classifier.classes):
        table[f"p_{name}"] = probs[:, j]
    return table


def classify_maps(*, maps: Path, out: Path, model: Path | None = None) -> pd.DataFrame:
    """Classify every map of the file `maps` and write the table to the CSV `out` (atomically); returns it.
    A bad maps file fails before any classifier work, and nothing is written."""
    check_output_file(out, "classify_maps", lambda f: first_line(f).startswith("index,label,p_"))
    records = read_maps(maps)
    table = classify_records(records, load_classifier(model))
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return table


def _cli(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--maps", required=True, type=Path, help=".npz file of maps")
    p.add_argument("--out", required=True, type=Path, help="CSV to write")
    p.add_argument("--model", type=Path, default=None, help="saved classifier (default: the built-in one)")
    args = p.parse_args(argv)
    table = classify_maps(maps=args.maps, out=args.out, model=args.model)
    print(f"{args.out}: {len(table)} maps classified")


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
