"""Redraw time of the app after warm-up: the head explorer stepping through heads, the image view through words.

    python -m workbench.bench_app [--run runs/pretrain-mini] [--repeats 20]

Each measurement is one full script run through streamlit.testing.v1.AppTest (sidebar + page, figures
serialised), as the server does it after a click; the browser's drawing is not included. The first visit of a
page loads the model and computes the example's maps (cached), so it is timed separately as the warm-up.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from uniter_core.cli import at_least, exit_with, run_command
from uniter_core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 1.0


def timed(action) -> float:
    start = time.perf_counter()
    at = action()
    seconds = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(at.exception[0].value)
    return seconds


def summary(name: str, times: list[float]) -> str:
    return (f"{name:<34} median {1000 * statistics.median(times):6.0f} ms   max {1000 * max(times):6.0f} ms   "
            f"({len(times)} redraws)")


def bench_app(*, run: str | Path = "runs/pretrain-mini", repeats: int = 20) -> tuple[dict, dict]:
    """(warm-up seconds by step, redraw seconds by action) of the app opened on the run folder `run`."""
    if not (Path(run) / "train_config.json").exists():
        raise UserError(f"{run} is not a run folder (make the demo run with `make demo`)")
    os.environ["WORKBENCH_RUN"] = str(Path(run).resolve())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "workbench" / "app.py"), default_timeout=600)
    warm = {"first script run (imports, model)": timed(at.run)}
    at.switch_page("views/head_explorer.py")
    warm["head explorer, first visit"] = timed(at.run)
    heads = [timed(lambda: at.button(key="head_next").click().run()) for _ in range(repeats)]
    layers = [timed(lambda: at.button(key="layer_next").click().run()) for _ in range(max(3, repeats // 4))]
    at.switch_page("views/image_view.py")
    warm["image view, first visit"] = timed(at.run)
    words = at.selectbox(key="word").options
    word_times = [timed(lambda i=i: at.selectbox(key="word").set_value(i % len(words)).run())
                  for i in range(repeats)]
    at.toggle(key="head_mean").set_value(True).run()
    mean_times = [timed(lambda i=i: at.selectbox(key="word").set_value(i % len(words)).run())
                  for i in range(max(3, repeats // 4))]
    return warm, {"head explorer: next head": heads, "head explorer: next layer": layers,
                  "image view: another word (head)": word_times, "image view: another word (mean)": mean_times}


def _cli(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/pretrain-mini")
    p.add_argument("--repeats", type=at_least(1), default=20)
    args = p.parse_args(argv)
    warm, results = bench_app(run=args.run, repeats=args.repeats)
    print(f"run {args.run}, {os.cpu_count()} CPU cores visible, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    for name, seconds in warm.items():
        print(f"warm-up: {name:<34} {seconds:6.2f} s")
    for name, times in results.items():
        print(summary(name, times))
    worst = max(statistics.median(t) for t in results.values())
    print(f"slowest median redraw {1000 * worst:.0f} ms: {'within' if worst < TARGET_S else 'OVER'} the "
          f"{TARGET_S:.0f} s target")


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
