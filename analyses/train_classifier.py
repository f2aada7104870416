"""Train the head-pattern classifier and write its evaluation report beside it.

    python -m analyses.train_classifier [--gold-dir analyses/gold] [--out analyses/models/head_classifier.joblib]

Training data: synthetic maps (analyses.synthetic), plus the gold set when one exists.
Evaluation on the gold set by K-fold cross-validation (--gold-folds, default 5): K models, each trained on the
synthetic maps and K-1 folds of the gold set, predict the fold they never saw, so every gold map is scored
held-out; the saved model is then trained on the synthetic maps and the whole gold set. With --gold-folds 1 a
single stratified split is used instead (--gold-test-fraction held out, the saved model trained on the rest),
and --gold-folds 0 trains on everything without a gold evaluation (what the automatic first-use training does).
Without a gold set: a held-out synthetic stream (another seed),
which the report says plainly: such numbers show the classifier learned the generator, not that it is right
on real heads. The rule baseline (analyses.rules) is scored on the same maps. Writes OUT, OUT's .json
metadata, and OUT with suffixes .eval.json / .eval.md.

Gold set (made by hand from a trained model; see analyses/README.md): GOLD/maps.npz in the analyses.mapfile
format and GOLD/labels.csv with columns index,label (more columns, e.g. run, example, layer, head, labeller,
note, are kept but unused); label is one of the six patterns, or "skip" for maps left out.

`load_classifier()` is how every other module gets a classifier: with no path the default one, trained here on
first use (`train_classifier(out=DEFAULT_MODEL, gold_folds=0, write_report=False)`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import StratifiedKFold, train_test_split

from analyses.classifier import DEFAULT_MODEL, USED_FEATURES, HeadClassifier, fit, metadata_path
from analyses.goldset import PROJECT_GOLD, read_labels
from analyses.mapfile import MapFileError, read_maps
from analyses.patterns import FEATURE_NAMES, FEATURE_VERSION, PATTERNS, map_features
from analyses.rules import rule_predict
from analyses.synthetic import synthetic_features
from uniter_core.cli import exit_with, run_command
from uniter_core.io import write_json, write_text
from uniter_core.outputs import check_output_file, first_line

SYNTHETIC_TEST_SEED_OFFSET = 1000  # the held-out synthetic stream never overlaps the training one


def shown(path: Path) -> str:
    """A path as the report shows it: relative to the working directory when inside it (no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_gold(gold_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(features [N, F], labels [N]) of the labelled gold maps, or None when the folder holds no gold set."""
    if gold_dir.exists() and not gold_dir.is_dir():
        raise MapFileError(f"--gold-dir {gold_dir} is a file; give the folder that holds maps.npz and labels.csv")
    maps_file, labels_file = gold_dir / "maps.npz", gold_dir / "labels.csv"
    if not maps_file.exists() and not labels_file.exists():
        return None
    for f in (maps_file, labels_file):
        if not f.exists():
            raise MapFileError(f"{f}: missing (a gold set needs both maps.npz and labels.csv)")
    records = {r.index: r for r in read_maps(maps_file)}
    rows = read_labels(labels_file, labels=None)  # checks the CSV, the indices and that labels are non-empty
    table = pd.DataFrame({"index": list(rows), "label": [r["label"] for r in rows.values()]})
    table = table[table["label"] != "skip"]
    bad = sorted(set(table["label"]) - set(PATTERNS))
    if bad:
        raise MapFileError(f"{labels_file}: unknown label {bad[0]!r} (known: {', '.join(PATTERNS)}, skip)")
    missing = sorted(set(table["index"]) - set(records))
    if missing:
        raise MapFileError(f"{labels_file}: index {missing[0]} has no map_{missing[0]} in {maps_file}")
    if table.empty:
        raise MapFileError(f"{labels_file}: every map is labelled skip, so the gold set is empty")
    x = [map_features(records[i].map, records[i].n_text, records[i].n_regions)[0] for i in table["index"]]
    return np.stack(x), table["label"].to_numpy(str)


def scores(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Per-class precision/recall/F1/support, macro-F1, accuracy and confusion (rows true, columns predicted)."""
    p, r, f, s = precision_recall_fscore_support(truth, predicted, labels=list(PATTERNS), zero_division=0)
    return {"per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                              "support": int(s[i])} for i, c in enumerate(PATTERNS)},
            "macro_f1": float(np.mean(f[s > 0])) if (s > 0).any() else 0.0,
            "accuracy": float(np.mean(np.asarray(truth) == np.asarray(predicted))),
            "confusion": confusion_matrix(truth, predicted, labels=list(PATTERNS)).tolist()}


def evaluate(classifier, x: np.ndarray, y: np.ndarray, description: str, predicted=None) -> dict:
    """Classifier (or given held-out `predicted` labels) and rule baseline scored on the same maps."""
    predicted = classifier.predict(x) if predicted is None else predicted
    return {"description": description, "n": int(len(y)),
            "classifier": scores(y, predicted), "rules": scores(y, rule_predict(x))}


def cross_validated_predictions(x, y, w, gx, gy, *, folds: int, seed: int, gold_weight: float, trees: int,
                                features: str) -> np.ndarray:
    """Out-of-fold predictions of the gold maps: fold k is predicted by a model trained without it."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    predicted = np.empty(len(gy), dtype=object)
    for train, test in splitter.split(gx, gy):
        model = fit(np.concatenate([x, gx[train]]), np.concatenate([y, gy[train]]),
                    sample_weight=np.concatenate([w, np.full(len(train), gold_weight)]), seed=seed,
                    trees=trees, used_features=features)
        predicted[test] = model.predict(gx[test])
    return predicted.astype(str)


def markdown(report: dict) -> str:
    lines = ["# Head-pattern classifier: evaluation", "", f"Model: `{report['model']}`  ",
             f"Training: {report['training']['description']}", ""]
    if report["note"]:
        lines += [f"**{report['note']}**", ""]
    for ev in report["evaluations"]:
        c, r = ev["classifier"], ev["rules"]
        lines += [f"## {ev['description']} ({ev['n']} maps)", "",
                  "| class | support | classifier P | R | F1 | rules P | R | F1 |", "|---|---|---|---|---|---|---|---|"]
        for name in PATTERNS:
            a, b = c["per_class"][name], r["per_class"][name]
            lines.append(f"| {name} | {a['support']} | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | "
                         f"{b['precision']:.3f} | {b['recall']:.3f} | {b['f1']:.3f} |")
        lines += [f"| **macro-F1** | | | | **{c['macro_f1']:.3f}** | | | **{r['macro_f1']:.3f}** |",
                  f"| accuracy | | | | {c['accuracy']:.3f} | | | {r['accuracy']:.3f} |", ""]
        for who, m in (("classifier", c), ("rules", r)):
            lines += [f"Confusion, {who} (rows true, columns predicted):", "",
                      "| true \\ predicted | " + " | ".join(PATTERNS) + " |", "|---" * (len(PATTERNS) + 1) + "|"]
            lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |"
                      for name, row in zip(PATTERNS, m["confusion"])]
            lines.append("")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gold-dir", type=Path, default=PROJECT_GOLD)
    p.add_argument("--out", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--n-synthetic", type=int, default=6000, help="synthetic training maps (default 6000)")
    p.add_argument("--n-test", type=int, default=1800, help="held-out synthetic maps (default 1800)")
    p.add_argument("--gold-folds", type=int, default=5,
                   help="cross-validation folds over the gold set (1: one split, see --gold-test-fraction; "
                        "0: no gold evaluation, train on all of it)")
    p.add_argument("--gold-test-fraction", type=float, default=0.5,
                   help="with --gold-folds 1: share of the gold set held out (1: train on synthetic maps only)")
    p.add_argument("--gold-weight", type=float, default=5.0,
                   help="sample weight of a gold map in training (a synthetic map weighs 1)")
    p.add_argument("--trees", type=int, default=300, help="trees in the forest (default 300)")
    p.add_argument("--features", choices=sorted(USED_FEATURES), default="scalar",
                   help="feature columns the trees read: scalar (default) or all (with the quadrant thumbnails)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-report", action="store_true",
                   help="write only the model and its metadata, not OUT.eval.json / .eval.md (the first-use "
                        "training, which must not overwrite the committed cross-validated report)")
    args = p.parse_args(argv)
    if not 0 < args.gold_test_fraction <= 1:
        p.error("--gold-test-fraction must lie in (0, 1]")
    if args.gold_folds < 0 or args.gold_folds > 20:
        p.error("--gold-folds must lie in 0..20")
    if args.trees < 1:
        p.error("--trees must be at least 1")
    if not (math.isfinite(args.gold_weight) and args.gold_weight > 0):
        p.error(f"--gold-weight must be a finite number > 0, not {args.gold_weight}")
    if args.n_synthetic < 60 or args.n_test < 6:
        p.error("--n-synthetic must be at least 60 and --n-test at least 6")
    if args.seed < 0:
        p.error(f"--seed must be a non-negative integer, not {args.seed}")
    return args


def _is_classifier(path: Path) -> bool:
    """An earlier output of this command: a model file with its metadata (feature names) beside it."""
    return _is_metadata(metadata_path(path))


def _json_object(path: Path) -> dict | None:
    """The JSON object in `path`; None when it is missing, unreadable, not JSON or another JSON type."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return value if isinstance(value, dict) else None


def _is_metadata(path: Path) -> bool:
    value = _json_object(path) if path.is_file() else None
    return value is not None and "feature_names" in value


def _is_report(path: Path) -> bool:
    if path.suffix == ".md":
        return first_line(path).startswith("# Head-pattern classifier")
    value = _json_object(path)
    return value is not None and "evaluations" in value


def check_outputs(out: Path, write_report: bool = True) -> None:
    """Refuse to overwrite a model, metadata or report file this command did not write."""
    check_output_file(out, "train_classifier", _is_classifier)
    check_output_file(metadata_path(out), "train_classifier", _is_metadata, what="--out's metadata")
    if write_report:
        for report in (out.with_suffix(".eval.json"), out.with_suffix(".eval.md")):
            check_output_file(report, "train_classifier", _is_report, what="--out's report")


def train_classifier(*, gold_dir: Path = PROJECT_GOLD, out: Path = DEFAULT_MODEL, n_synthetic: int = 6000,
                     n_test: int = 1800, gold_folds: int = 5, gold_test_fraction: float = 0.5,
                     gold_weight: float = 5.0, trees: int = 300, features: str = "scalar", seed: int = 0,
                     write_report: bool = True) -> dict:
    """Train and save the classifier at `out` (with OUT.eval.json / .eval.md unless write_report is False) and
    return its report: what it was trained on, and its scores against the rules' (see the module docstring).
    Paths are shown relative to the working directory in the report; MapFileError for an unusable gold set."""
    gold_dir, out = Path(shown(gold_dir)), Path(shown(out))
    check_outputs(out, write_report)
    start = time.time()
    gold = load_gold(gold_dir)
    x, y = synthetic_features(n_synthetic, seed=seed)
    weights = np.ones(len(y))
    training = {"synthetic": {"n": n_synthetic, "seed": seed, "sharpness": "mixed"}}
    description = f"{n_synthetic} synthetic maps (seed {seed}, sharp and diffuse)"
    evaluations = []
    cv_predicted = None
    if gold is not None:
        gx, gy = gold
        counts = pd.Series(gy).value_counts()
        if gold_folds >= 2 and counts.min() < gold_folds:
            raise MapFileError(f"{gold_dir}/labels.csv: class {counts.idxmin()!r} has {counts.min()} maps, fewer "
                               f"than --gold-folds {gold_folds}")
        if gold_folds >= 2 or gold_folds == 0:
            if gold_folds >= 2:
                cv_predicted = cross_validated_predictions(x, y, weights, gx, gy, folds=gold_folds, seed=seed,
                                                           gold_weight=gold_weight, trees=trees, features=features)
            gx_test, gy_test = gx, gy
            x, y = np.concatenate([x, gx]), np.concatenate([y, gy])
            weights = np.concatenate([weights, np.full(len(gy), gold_weight)])
            description += f" + all {len(gy)} gold maps from {gold_dir} (weight {gold_weight})"
        elif gold_test_fraction < 1:
            stratify = gy if counts.min() >= 2 else None
            gx_train, gx_test, gy_train, gy_test = train_test_split(
                gx, gy, test_size=gold_test_fraction, random_state=seed, stratify=stratify)
            x, y = np.concatenate([x, gx_train]), np.concatenate([y, gy_train])
            weights = np.concatenate([weights, np.full(len(gy_train), gold_weight)])
            description += f" + {len(gy_train)} gold maps from {gold_dir} (weight {gold_weight})"
        else:
            gx_test, gy_test = gx, gy
        n_train = len(gy) if gold_folds != 1 else len(gy) - len(gy_test)
        training["gold"] = {"dir": str(gold_dir), "n_total": int(len(gy)), "n_train": int(n_train),
                            "folds": gold_folds, "weight": gold_weight,
                            "test_fraction": gold_test_fraction if gold_folds == 1 else None}
    training["description"] = description
    classifier = fit(x, y, sample_weight=weights, seed=seed, trees=trees, used_features=features,
                     training=training)
    note = ""
    if gold is not None and cv_predicted is not None:
        evaluations.append(evaluate(None, gx_test, gy_test, f"held-out gold maps from {gold_dir}, "
                                    f"{gold_folds}-fold cross-validation", predicted=cv_predicted))
    elif gold is not None and gold_folds == 1:
        evaluations.append(evaluate(classifier, gx_test, gy_test, f"held-out gold maps from {gold_dir}"))
    elif gold is not None:
        note = f"Trained on all of {gold_dir} without a gold evaluation (--gold-folds 0)."
    if gold is None:
        note = (f"No gold set at {gold_dir}: trained on synthetic maps only and evaluated on a held-out "
                f"synthetic split. These numbers show how well the classifier learned the generator, not how "
                f"well it labels real attention heads.")
    test_seed = seed + SYNTHETIC_TEST_SEED_OFFSET
    for sharpness, n in (("mixed", n_test), ("sharp", max(6, n_test // 3))):
        tx, ty = synthetic_features(n, seed=test_seed, sharpness=sharpness)
        evaluations.append(evaluate(classifier, tx, ty, f"held-out synthetic maps, {sharpness} (seed {test_seed})"))
    classifier.save(out)
    report = {"model": str(out), "metadata": classifier.metadata, "training": training, "note": note,
              "classes": list(PATTERNS), "evaluations": evaluations, "seconds": round(time.time() - start, 1)}
    if write_report:
        write_json(out.with_suffix(".eval.json"), report)
        write_text(out.with_suffix(".eval.md"), markdown(report) + "\n")
    return report


def summary(report: dict, with_report: bool = True) -> str:
    """What the command prints about a train_classifier report: the first evaluation's macro-F1 against the
    rules', where the report went (with_report), and the report's note."""
    out, first = Path(report["model"]), report["evaluations"][0]
    line = (f"{out}: macro-F1 {first['classifier']['macro_f1']:.3f} (rules {first['rules']['macro_f1']:.3f}) on "
            f"{first['description']}" + (f"; report in {out.with_suffix('.eval.md')}" if with_report else ""))
    return f"{line}\n{report['note']}" if report["note"] else line


# ------------------------------------------------------------------------------------------ the default model
def load_classifier(path: str | Path | None = None) -> HeadClassifier:
    """The classifier at `path`; with no path the default one (DEFAULT_MODEL), trained and saved first when it is
    missing or made for other features (about 30 s; its cross-validated report beside it is committed)."""
    if path is not None:
        return HeadClassifier.load(path)
    problem = default_model_problem()
    if problem:
        print(f"{DEFAULT_MODEL}: {problem}: training the default one first", file=sys.stderr)
        # on all gold maps, without evaluation: the cross-validated report beside it is committed
        print(summary(train_classifier(out=DEFAULT_MODEL, gold_folds=0, write_report=False), with_report=False))
    return HeadClassifier.load(DEFAULT_MODEL)


def default_model_problem() -> str | None:
    """Why the default classifier must be (re)trained: missing, or made for another feature version."""
    meta_file = metadata_path(DEFAULT_MODEL)
    if not DEFAULT_MODEL.is_file() or not meta_file.is_file():
        return "no classifier yet"
    metadata = _json_object(meta_file)
    if metadata is None:
        return "unreadable metadata"
    if metadata.get("feature_version") != FEATURE_VERSION or metadata.get("feature_names") != FEATURE_NAMES:
        return f"made for feature version {metadata.get('feature_version')}, this code computes {FEATURE_VERSION}"
    return None


def _cli(argv=None) -> None:
    args = parse_args(argv)
    report = train_classifier(
        gold_dir=args.gold_dir, out=args.out, n_synthetic=args.n_synthetic, n_test=args.n_test,
        gold_folds=args.gold_folds, gold_test_fraction=args.gold_test_fraction, gold_weight=args.gold_weight,
        trees=args.trees, features=args.features, seed=args.seed, write_report=not args.no_report)
    print(summary(report, with_report=not args.no_report))


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
