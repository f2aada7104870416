"""Print a run's evaluation beside its baseline (the un-pretrained initialisation) as a Markdown table.

    python -m uniter_core.report --run runs/pretrain-mini [--split test]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from uniter_core.cli import exit_with, run_command
from uniter_core.errors import UserError
from uniter_core.io import read_json

ROWS = [("t2i_r1", "text→image R@1"), ("t2i_r5", "text→image R@5"), ("t2i_r10", "text→image R@10"),
        ("i2t_r1", "image→text R@1"), ("i2t_r5", "image→text R@5"), ("i2t_r10", "image→text R@10"),
        ("mlm_loss", "MLM loss (cross-entropy per masked word-piece)"), ("mlm_accuracy", "MLM accuracy"),
        ("mlm_accuracy_objects", "MLM accuracy, grounded object words"),
        ("mlm_accuracy_rest", "MLM accuracy, other word-pieces"),
        ("mrckl_kl", "MRC-kl (KL per region, lower is better)"),
        ("alignment_accuracy", "WRA alignment, own box"), ("alignment_chance", "own box chance level"),
        ("alignment_covering", "WRA alignment, covering region (IoU ≥ 0.5)"),
        ("alignment_covering_chance", "covering chance level"),
        ("cosine_word_word", "final states: cosine word-word"),
        ("cosine_region_region", "final states: cosine region-region"),
        ("cosine_word_region", "final states: cosine word-region")]
# what every evaluation file holds; the other rows came later and show "–" where an older file lacks them
REQUIRED = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "mlm_accuracy", "mrckl_kl",
            "alignment_accuracy", "alignment_chance")
POINTING = "pointing_layer"


def report_rows(results: dict) -> list[tuple[str, str]]:
    """ROWS, with the pointing game's layers (and its chance level) after the alignment."""
    layers = sorted((int(k[len(POINTING):]), k) for k in results if k.startswith(POINTING) and
                    k[len(POINTING):].isdigit())
    rule = "covering region" if results.get("pointing_rule") == "covering" else "own box"
    pointing = [(key, f"attention pointing game, layer {n} ({rule})") for n, key in layers]
    if layers:
        pointing.append(("pointing_chance", "pointing game chance level"))
    at = next(i for i, (key, _) in enumerate(ROWS) if key == "cosine_word_word")
    return ROWS[:at] + pointing + ROWS[at:]


def table(pretrained: dict, baseline: dict | None) -> str:
    lines = ["| metric | pre-trained | initialisation |", "|---|---|---|"]
    for key, label in report_rows(pretrained):
        value = f"{pretrained[key]:.3f}" if key in pretrained else "–"
        base = f"{baseline[key]:.3f}" if baseline and key in baseline else "–"
        lines.append(f"| {label} | {value} | {base} |")
    return "\n".join(lines)


def read_results(path: Path, required: tuple[str, ...]) -> dict:
    """An evaluation file of uniter_core.evaluate: a JSON object with the `required` keys and a number for every
    metric of ROWS it holds; else UserError naming the file and what is wrong."""
    results = read_json(path, "evaluation results")
    if not isinstance(results, dict):
        raise UserError(f"evaluation results {path} hold a JSON {type(results).__name__}, not an object; "
                        f"rerun python -m uniter_core.evaluate")
    missing = [key for key in required if key not in results]
    if missing:
        raise UserError(f"evaluation results {path} lack {', '.join(missing)}; rerun python -m "
                        f"uniter_core.evaluate")
    for key in ("candidates", *(key for key, _ in report_rows(results))):
        value = results.get(key)
        if key in results and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UserError(f"evaluation results {path}: {key} is {value!r}, not a number; rerun python -m "
                            f"uniter_core.evaluate")
    return results


def run_report(run_dir: Path, split: str = "test") -> str:
    """The Markdown report of a run's evaluation on `split` (eval_<split>.json) beside its baseline
    (eval_<split>_baseline.json, when it exists)."""
    result_file = Path(run_dir) / f"eval_{split}.json"
    if not result_file.exists():
        raise UserError(f"{result_file} does not exist (train and evaluate the run first)")
    pretrained = read_results(result_file, required=("checkpoint", "candidates", *REQUIRED))
    baseline_file = Path(run_dir) / f"eval_{split}_baseline.json"
    baseline = read_results(baseline_file, required=()) if baseline_file.exists() else None
    return (f"{run_dir} ({pretrained['checkpoint']}), {split} split, {pretrained['candidates']} retrieval "
            f"candidates:\n\n" + table(pretrained, baseline))


def _cli(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    print(run_report(args.run, args.split))
    return 0


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
