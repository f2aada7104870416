"""IPOT speed against the eager reference, every number measured in the same run.

    python -m uniter_core.ot.bench                      # CPU: reference vs batched vs POT
    python -m uniter_core.ot.bench --device cuda --check  # GPU: correctness checks, then the fused kernel

Times are medians over interleaved rounds (each round runs every method once), so a load spike on
a shared machine hits all methods alike. The memory floor is the time to read the cost once and
write the plan once at the copy bandwidth measured here.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import ot
import torch
from ot.batch import solve_batch

from uniter_core.cli import device_arg, exit_with, run_command

from .api import ipot
from .check import run_checks
from .reference import ipot_reference
from .testing import masked_cost, random_problem

DEFAULT_SHAPES = "32x20x36,128x40x50,512x60x100"


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    try:
        shapes = [tuple(int(n) for n in item.lower().split("x")) for item in text.split(",") if item]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 3 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"shapes must look like 32x20x36,128x40x50 (BxTxK), got {text!r}")
    return shapes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(methods: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call. Fast calls are repeated inside a sample so that it lasts >= 2 ms."""
    inner = {}
    for name, fn in methods.items():
        fn()  # warm-up: compilation, caches, allocator
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        inner[name] = max(1, min(200, int(2e-3 / max(time.perf_counter() - start, 1e-7))))
    samples = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {name: statistics.median(values) for name, values in samples.items()}


def copy_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second of a large device copy (each byte read once and written once)."""
    src = torch.ones(megabytes * (1 << 18), device=device)
    dst = torch.empty_like(src)
    seconds = time_methods({"copy": lambda: dst.copy_(src)}, repeats, device)["copy"]
    return 2 * src.numel() * src.element_size() / seconds


def pot_batched_log_sinkhorn(cost, txt_pad, img_pad, beta, iteration):
    """POT's batched log-domain Sinkhorn, `iteration` iterations at epsilon = beta / iteration."""
    a = (~txt_pad).to(cost.dtype)
    b = (~img_pad).to(cost.dtype)
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    return solve_batch(M=cost, reg=beta / iteration, a=a, b=b, max_iter=iteration, tol=0.0,
                       method="log_sinkhorn").plan


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def run(args) -> int:
    device = torch.device(args.device)
    fast = "fused" if device.type == "cuda" else "batched"
    if args.check:
        seed = args.seed
        results = run_checks(fast, args.device, seed)
        print(f"correctness checks, solver={fast}, device={args.device}, seed={seed}")
        for name, result in results.items():
            print(f"  {'PASS' if result['ok'] else 'FAIL'}  {name}: "
                  + ", ".join(f"{k}={v}" for k, v in result.items() if k != "ok"))
        if not all(r["ok"] for r in results.values()):
            return 1
    bandwidth = copy_bandwidth(device)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"device: {device_name(device)}; load average {load}")
    print(f"date: {datetime.datetime.now().isoformat(timespec='minutes')}; torch {torch.__version__}, "
          f"POT {ot.__version__}; copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(f"median of {args.repeats} interleaved rounds; float32 masked ragged batches; beta {args.beta}, "
          f"{args.iteration} iterations; speed-up = reference time / method time")
    print(f"POT loop = ot.emd per problem on the unpadded sub-matrix, timed on the first "
          f"{args.pot_loop_problems} problems of the batch and extrapolated to all of them\n")
    header = ["B x T x K", "reference", fast, "POT batched log-Sinkhorn", "POT loop (extrapolated)", "memory floor"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    gen = torch.Generator().manual_seed(args.seed)
    for batch, n_txt, n_img in args.shapes:
        txt, img, txt_pad, img_pad = random_problem(batch, n_txt, n_img, gen, device=device)
        cost = masked_cost(txt, img, txt_pad, img_pad)
        subset = min(batch, args.pot_loop_problems)
        methods = {
            "reference": lambda: ipot_reference(cost, txt_pad, img_pad, args.beta, args.iteration),
            fast: lambda: ipot(cost, txt_pad, img_pad, args.beta, args.iteration, solver=fast),
        }
        if not args.no_pot:
            methods["pot-batch"] = lambda: pot_batched_log_sinkhorn(cost, txt_pad, img_pad, args.beta, args.iteration)
            methods["pot-loop"] = lambda: ipot(cost[:subset], txt_pad[:subset], img_pad[:subset], solver="pot-emd")
        seconds = time_methods(methods, args.repeats, device)
        if "pot-loop" in seconds:
            seconds["pot-loop"] *= batch / subset
        floor = 2 * cost.numel() * cost.element_size() / bandwidth
        cells = [f"{batch} x {n_txt} x {n_img}", _ms(seconds["reference"])]
        for name in (fast, "pot-batch", "pot-loop"):
            speedup = seconds["reference"] / seconds[name] if name in seconds else None
            cells.append(f"{_ms(seconds[name])} ({speedup:.2f}x)" if speedup else "-")
        cells.append(f"{floor * 1e6:.1f} us")
        print("| " + " | ".join(cells) + " |", flush=True)
        if args.sweep_warps and fast == "fused":
            _sweep_warps(cost, txt_pad, img_pad, args, seconds["reference"], device)
    return 0


def _sweep_warps(cost, txt_pad, img_pad, args, reference_seconds: float, device: torch.device) -> None:
    """Fused-kernel time for each num_warps, to re-tune fused_triton._num_warps on a new GPU."""
    from .fused_triton import ipot_fused

    methods = {warps: (lambda warps=warps: ipot_fused(cost, txt_pad, img_pad, args.beta, args.iteration,
                                                       num_warps=warps)) for warps in (1, 2, 4, 8, 16, 32)}
    seconds = time_methods(methods, args.repeats, device)
    print("|   num_warps sweep | " + ", ".join(f"{w}: {_ms(s)} ({reference_seconds / s:.0f}x)"
                                         for w, s in seconds.items()) + " | | | |", flush=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 0.01 else f"{seconds * 1e3:.1f} ms"


def bench_command(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--shapes", type=parse_shapes, default=parse_shapes(DEFAULT_SHAPES),
                        help=f"comma-separated BxTxK batches (default {DEFAULT_SHAPES})")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds (default 7)")
    parser.add_argument("--pot-loop-problems", type=int, default=16,
                        help="problems timed for the POT per-problem loop, extrapolated to the batch (default 16)")
    parser.add_argument("--no-pot", action="store_true", help="skip both POT baselines")
    parser.add_argument("--check", action="store_true", help="run the correctness checks on the device first")
    parser.add_argument("--sweep-warps", action="store_true",
                        help="on cuda, also time the fused kernel for each num_warps")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 is steadier on a shared machine")
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--iteration", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random problems (default 0)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.pot_loop_problems < 1:
        parser.error("--repeats and --pot-loop-problems must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was asked for, but torch sees no CUDA device")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    return run(args)


def main(argv=None) -> int:
    return run_command(bench_command, argv)


if __name__ == "__main__":
    exit_with(main())
