"""Print a run's evaluation beside its baseline (the un-pretrained initialisation) as a Markdown table.

    python -m uniter_core.report --run runs/pretrain-mini [--split test]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from uniter_core.cli import exit_with, run_command

ROWS = [("t2i_r1", "text→image R@1"), ("t2i_r5", "text→image R@5"), ("t2i_r10", "text→image R@10"),
        ("i2t_r1", "image→text R@1"), ("i2t_r5", "image→text R@5"), ("i2t_r10", "image→text R@10"),
        ("mlm_accuracy", "MLM accuracy"), ("mrckl_kl", "MRC-kl (KL per region, lower is better)"),
        ("alignment_accuracy", "WRA alignment accuracy"), ("alignment_chance", "alignment chance level")]


def table(pretrained: dict, baseline: dict | None) -> str:
    lines = ["| metric | pre-trained | initialisation |", "|---|---|---|"]
    for key, label in ROWS:
        base = f"{baseline[key]:.3f}" if baseline and key in baseline else "–"
        lines.append(f"| {label} | {pretrained[key]:.3f} | {base} |")
    return "\n".join(lines)


def report_command(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    result_file = args.run / f"eval_{args.split}.json"
    if not result_file.exists():
        print(f"error: {result_file} does not exist (train and evaluate the run first)", file=sys.stderr)
        return 2
    pretrained = json.loads(result_file.read_text())
    baseline_file = args.run / f"eval_{args.split}_baseline.json"
    baseline = json.loads(baseline_file.read_text()) if baseline_file.exists() else None
    print(f"{args.run} ({pretrained['checkpoint']}), {args.split} split, "
          f"{pretrained['candidates']} retrieval candidates:\n")
    print(table(pretrained, baseline))
    return 0


def main(argv=None) -> int:
    return run_command(report_command, argv)


if __name__ == "__main__":
    exit_with(main())
