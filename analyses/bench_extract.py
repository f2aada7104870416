"""What attention analysis costs on top of the model: extraction + features + classification vs the bare forward.

    python -m analyses.bench_extract --run runs/pretrain-mini [--split test] [--examples 96] [--rounds 3]

Both sides see the same examples in the same batches. `bare forward` is the model as training and retrieval run
it (SDPA attention, no maps kept). `analysis` is what `export_stats` does per example: the forward pass with
attention probabilities (eager attention), maps cropped and copied out, the features and statistics of every
(layer, head) map and the classifier's probabilities (export_stats.per_map_table). Rounds alternate the two, and the medians give the overhead
(analysis - bare) / bare; the target is at most 1.0 (the analysis at most doubles the forward time).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from analyses.attention import iter_example_attention
from analyses.errors import as_input_error
from analyses.export_stats import per_map_table
from analyses.train_classifier import load_classifier
from uniter_core.cli import at_least, exit_with, run_command
from uniter_core.data.dataset import ImageTextDataset, collate
from uniter_core.runs import load_run


@torch.inference_mode()
def bare_forward(uniter, dataset, order: list[int], batch_size: int) -> None:
    for start in range(0, len(order), batch_size):
        batch = collate([dataset[i] for i in order[start:start + batch_size]])
        uniter.forward_batch(batch)


def analysis(model, corpus, split: str, order: list[int], batch_size: int, classifier, tokenizer) -> int:
    """export_stats's per-map table of these examples; returns the number of maps."""
    examples = iter_example_attention(model, corpus, split, batch_size=batch_size, indices=order,
                                      tokenizer=tokenizer, progress=False)
    return len(per_map_table(examples, classifier))


def bench_extract(run_dir: Path, *, split: str = "test", examples: int = 96, batch_size: int = 16, rounds: int = 3,
                  model: Path | None = None) -> dict:
    """Time the bare forward and the analysis on the same examples, `rounds` times alternately: {"examples",
    "maps", "seconds": {"bare forward": median, "analysis": median}}."""
    with as_input_error():
        run = load_run(run_dir)
    from uniter_core.data.tokenizer import load_tokenizer
    tokenizer = load_tokenizer()
    classifier = load_classifier(model)
    uniter = run.model.uniter.eval()
    dataset = ImageTextDataset(run.corpus, split, 60, 100)  # the extraction's limits
    order = list(range(min(examples, len(dataset))))
    bare_forward(uniter, dataset, order[:batch_size], batch_size)  # warm-up
    analysis(run.model, run.corpus, split, order[:batch_size], batch_size, classifier, tokenizer)
    times = {"bare forward": [], "analysis": []}
    maps = 0
    for _ in range(rounds):
        start = time.perf_counter()
        bare_forward(uniter, dataset, order, batch_size)
        times["bare forward"].append(time.perf_counter() - start)
        start = time.perf_counter()
        maps = analysis(run.model, run.corpus, split, order, batch_size, classifier, tokenizer)
        times["analysis"].append(time.perf_counter() - start)
    return {"examples": len(order), "maps": maps,
            "seconds": {name: statistics.median(values) for name, values in times.items()}}


def _cli(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("runs/pretrain-mini"))
    p.add_argument("--split", default="test")
    p.add_argument("--examples", type=at_least(1), default=96)
    p.add_argument("--batch-size", type=at_least(1), default=16)
    p.add_argument("--rounds", type=at_least(1), default=3)
    p.add_argument("--model", type=Path, help="classifier (default: the default one)")
    args = p.parse_args(argv)
    result = bench_extract(args.run, split=args.split, examples=args.examples, batch_size=args.batch_size,
                           rounds=args.rounds, model=args.model)
    n, seconds = result["examples"], result["seconds"]
    print(f"{args.run}: {n} {args.split} examples, batch {args.batch_size}, {result['maps']} maps, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} alternating rounds")
    print(f"{'step':<16}{'seconds':>10}{'ms/example':>12}")
    for name, value in seconds.items():
        print(f"{name:<16}{value:>10.2f}{1e3 * value / n:>12.1f}")
    bare, full = seconds["bare forward"], seconds["analysis"]
    print(f"overhead (analysis - bare) / bare: {(full - bare) / bare:.2f}x (target <= 1.0x)")


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
