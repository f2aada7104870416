"""Classify attention maps from an .npz file into the six patterns.

    python -m analyses.classify_maps --maps FILE.npz --out FILE.csv [--model PATH]

FILE.npz holds map_<i> ([n, n], rows = queries), n_text_<i> (including [CLS] and [SEP]) and n_regions_<i>
(the analyses.mapfile format). The CSV gets one row per map: index, label, and p_<pattern> for each of the six
patterns. A bad file stops everything with one sentence naming it and the problem, and no CSV is written.
Without --model the default classifier is used (trained on first use).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analyses.classifier import ClassifierError, load_classifier
from analyses.mapfile import MapFileError, MapRecord, read_maps
from analyses.patterns import map_features
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


def classify_command(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--maps", required=True, type=Path, help=".npz file of maps")
    p.add_argument("--out", required=True, type=Path, help="CSV to write")
    p.add_argument("--model", type=Path, default=None, help="saved classifier (default: the built-in one)")
    args = p.parse_args(argv)
    check_output_file(args.out, "classify_maps", lambda f: first_line(f).startswith("index,label,p_"))
    try:
        records = read_maps(args.maps)  # a bad file fails before any classifier work
        table = classify_records(records, load_classifier(args.model))
    except (MapFileError, ClassifierError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    print(f"{args.out}: {len(table)} maps classified")
    return 0


def main(argv=None) -> int:
    return run_command(classify_command, argv)


if __name__ == "__main__":
    exit_with(main())
