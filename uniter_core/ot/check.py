"""Correctness checks of an IPOT solver, shared by the tests and by runs on a GPU machine.

    python -m uniter_core.ot.check --device cuda              # the fused kernel on a GPU
    TRITON_INTERPRET=1 python -m uniter_core.ot.check --solver fused --device cpu

Each check returns a dict of measurements plus "ok"; the command prints them and exits non-zero when
one fails. Inputs are fresh random problems; the seed is printed so that a failure can be replayed.
"""
from __future__ import annotations

import argparse
import json
import random

import numpy as np
import torch

from uniter_core.cli import device_arg, exit_with, run_command

from .api import ipot, optimal_transport_dist
from .problem import SOLVERS
from .reference import ipot_reference
from .testing import masked_cost, random_problem, relative_plan_error

PLAN_TOLERANCE = 1e-4  # relative L1 plan error of a float32 solver against the float64 reference
EMD_MEDIAN_TOLERANCE = 2e-3  # median relative error of the IPOT transport cost against ot.emd
SHAPES = [(1, 1), (1, 37), (23, 1), (2, 2), (7, 13), (20, 36), (33, 64), (64, 33), (40, 50), (60, 100),
          (100, 128), (128, 128), (128, 17), (17, 128)]


def fresh_seed() -> int:
    return random.SystemRandom().randrange(2**31)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_matches_reference(solver: str, device: str, seed: int, shapes=SHAPES, batch: int = 4) -> dict:
    """float32 plans of `solver` against the float64 reference, and its float64 plans too."""
    gen = _generator(seed)
    worst, worst_shape, worst64 = 0.0, None, 0.0
    for n_txt, n_img in shapes:
        txt, img, txt_pad, img_pad = random_problem(batch, n_txt, n_img, gen)
        cost = masked_cost(txt, img, txt_pad, img_pad)
        expected = ipot_reference(cost.double(), txt_pad, img_pad)
        args = (txt_pad.to(device), img_pad.to(device))
        err = relative_plan_error(ipot(cost.to(device), *args, solver=solver).cpu(), expected).max().item()
        err64 = relative_plan_error(ipot(cost.double().to(device), *args, solver=solver).cpu(), expected).max().item()
        if err > worst:
            worst, worst_shape = err, (batch, n_txt, n_img)
        worst64 = max(worst64, err64)
    return {"ok": worst <= PLAN_TOLERANCE and worst64 <= 1e-9, "max_rel_error": worst,
            "worst_shape": worst_shape, "max_rel_error_float64": worst64, "tolerance": PLAN_TOLERANCE}


def check_variants(solver: str, device: str, seed: int) -> dict:
    """Other k, iteration counts (0 returns the all-ones plan on real pairs) and beta values.

    At beta 0.1 about 2 % of these problems are ill-conditioned in float32: the reference's own float32
    plan then parts from its float64 one by 10-100 % (not a solver bug), so beta stays >= 0.2 here
    (worst error over 300 seeds: 2e-6 at 0.2, 6e-7 at 0.5).
    """
    gen = _generator(seed)
    txt, img, txt_pad, img_pad = random_problem(5, 24, 31, gen)
    cost = masked_cost(txt, img, txt_pad, img_pad)
    errors = {}
    for k, iteration, beta in [(1, 0, 0.5), (1, 1, 0.5), (1, 7, 0.5), (2, 50, 0.5), (3, 20, 0.5), (1, 200, 0.5),
                               (1, 50, 0.2), (1, 50, 3.0)]:
        expected = ipot_reference(cost.double(), txt_pad, img_pad, beta, iteration, k)
        plan = ipot(cost.to(device), txt_pad.to(device), img_pad.to(device), beta, iteration, k, solver=solver)
        errors[f"k={k},iteration={iteration},beta={beta}"] = relative_plan_error(plan.cpu(), expected).max().item()
    return {"ok": max(errors.values()) <= PLAN_TOLERANCE, "max_rel_error": errors, "tolerance": PLAN_TOLERANCE}


def check_against_emd(solver: str, device: str, seed: int, n_problems: int = 512, batch: int = 64,
                      max_txt: int = 20, max_img: int = 36, tolerance: float = EMD_MEDIAN_TOLERANCE) -> dict:
    """Transport cost of the IPOT plan against the exact one (ot.emd) on ragged random problems.

    IPOT (beta 0.5, 50 iterations) is entropic OT with epsilon ~ 0.01, so its bias grows with the
    problem size: measured medians ~0.9e-3 up to 20x36 (the default, UNITER's small batches), 1.7e-3 up
    to 40x50, 3.2e-3 up to 60x100, 5.5e-3 at 128x128; POT's Sinkhorn at the same epsilon shows the same.
    """
    gen = _generator(seed)
    errors = []
    for _ in range(0, n_problems, batch):
        txt, img, txt_pad, img_pad = random_problem(batch, max_txt, max_img, gen)
        cost = masked_cost(txt, img, txt_pad, img_pad).double()
        plan = ipot(cost.float().to(device), txt_pad.to(device), img_pad.to(device), solver=solver).cpu()
        exact = ipot(cost, txt_pad, img_pad, solver="pot-emd")
        ipot_cost, emd_cost = (cost * plan).sum(dim=(1, 2)), (cost * exact).sum(dim=(1, 2))
        errors.append(((ipot_cost - emd_cost).abs() / emd_cost).numpy())
    errors = np.concatenate(errors)
    median = float(np.median(errors))
    return {"ok": median <= tolerance, "median_rel_error": median,
            "p90_rel_error": float(np.percentile(errors, 90)), "problems": len(errors),
            "max_size": (max_txt, max_img), "tolerance": tolerance}


def degenerate_cases(device: str):
    """(name, cost, txt_pad, img_pad, extreme) with extreme = costs outside the cosine range."""
    gen = _generator(0)
    cases = []

    def from_embeddings(name, txt, img, txt_pad=None, img_pad=None):
        txt_pad = torch.zeros(txt.shape[:2], dtype=torch.bool) if txt_pad is None else txt_pad
        img_pad = torch.zeros(img.shape[:2], dtype=torch.bool) if img_pad is None else img_pad
        cases.append((name, masked_cost(txt, img, txt_pad, img_pad), txt_pad, img_pad, False))

    for n_txt, n_img in [(1, 1), (1, 9), (9, 1)]:
        from_embeddings(f"single {n_txt}x{n_img}", *random_problem(3, n_txt, n_img, gen))
    same = torch.randn(1, 1, 8, generator=gen)
    from_embeddings("all-equal embeddings", same.expand(2, 6, 8), same.expand(2, 5, 8))
    from_embeddings("zero text vectors", torch.zeros(2, 6, 8), torch.randn(2, 5, 8, generator=gen))
    from_embeddings("huge embeddings", 1e30 * torch.randn(2, 6, 8, generator=gen), torch.randn(2, 5, 8, generator=gen))
    from_embeddings("tiny embeddings", 1e-30 * torch.randn(2, 6, 8, generator=gen), torch.randn(2, 5, 8, generator=gen))
    txt, img, txt_pad, img_pad = random_problem(4, 6, 7, gen)
    txt_pad[0], img_pad[1], txt_pad[2], img_pad[2] = True, True, True, True
    from_embeddings("fully padded sides", txt, img, txt_pad, img_pad)

    txt_pad, img_pad = random_problem(4, 9, 11, gen)[2:]
    base = torch.rand(4, 9, 11, generator=gen)
    first_row = (torch.arange(9) == 0).view(1, 9, 1)
    for name, cost in [("costs x1e4", base * 1e4), ("costs +-1e6", (base - 0.5) * 2e6),
                       ("costs +-1e30", (base - 0.5) * 2e30), ("one row +1000", base + 1000 * first_row)]:
        cases.append((name, cost, txt_pad, img_pad, True))
    return [(name, cost.to(device), tp.to(device), ip.to(device), extreme) for name, cost, tp, ip, extreme in cases]


def check_degenerate(solver: str, device: str) -> dict:
    """Finite plans, zero mass on padding, exact text marginals (and unit mass) on non-empty problems.
    The reference skips the extreme-cost cases: like the official code it underflows there."""
    failures, checked = [], 0
    for name, cost, txt_pad, img_pad, extreme in degenerate_cases(device):
        if extreme and solver == "reference":
            continue
        for dtype in (torch.float32, torch.float64):
            checked += 1
            plan = ipot(cost.to(dtype), txt_pad, img_pad, solver=solver).double().cpu()
            problem = _plan_problem(plan, txt_pad.cpu(), img_pad.cpu())
            if problem:
                failures.append(f"{name} ({dtype}): {problem}")
    return {"ok": not failures, "cases": checked, "failures": failures}


def _plan_problem(plan: torch.Tensor, txt_pad: torch.Tensor, img_pad: torch.Tensor) -> str:
    if not torch.isfinite(plan).all():
        return "non-finite plan"
    joint_pad = txt_pad.unsqueeze(2) | img_pad.unsqueeze(1)
    if joint_pad.any() and plan[joint_pad].abs().max() > 0:
        return "mass on padding"
    txt_len, img_len = (~txt_pad).sum(1), (~img_pad).sum(1)
    for b in range(plan.shape[0]):
        if txt_len[b] == 0 or img_len[b] == 0:
            continue
        row_error = (plan[b].sum(1) - (~txt_pad[b]).double() / txt_len[b]).abs().max().item()
        if row_error > 1e-5 or abs(plan[b].sum().item() - 1) > 1e-5:
            return f"problem {b}: text marginal off by {row_error:.1e}, mass {plan[b].sum().item():.6f}"
    return ""


def check_dtypes(solver: str, device: str) -> dict:
    """fp16/bf16 are solved in float32 and give float32 plans; float64 stays float64; strided inputs work."""
    gen = _generator(1)
    txt, img, txt_pad, img_pad = (x.to(device) for x in random_problem(3, 8, 10, gen))
    cost = masked_cost(txt, img, txt_pad, img_pad)
    failures = []
    for dtype, expected in [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                            (torch.float32, torch.float32), (torch.float64, torch.float64)]:
        low = cost.to(dtype)
        plan = ipot(low, txt_pad, img_pad, solver=solver)
        same = ipot(low.to(expected), txt_pad, img_pad, solver=solver)
        if plan.dtype != expected or relative_plan_error(plan, same).max() > 1e-6:
            failures.append(f"{dtype}: plan {plan.dtype}, expected {expected} and the upcast input's plan")
    def strided(x):  # same values, another memory layout
        return x.transpose(0, -1).contiguous().transpose(0, -1)

    expected = ipot(cost, txt_pad, img_pad, solver=solver)
    plan = ipot(strided(cost), strided(txt_pad), strided(img_pad), solver=solver)
    if relative_plan_error(plan, expected).max() > 1e-6:
        failures.append("non-contiguous inputs give a different plan")
    return {"ok": not failures, "failures": failures}


def check_gradient(solver: str, device: str, seed: int) -> dict:
    """Gradients of the distance reach the embeddings through the cost only (plan held fixed)."""
    gen = _generator(seed)
    txt, img, txt_pad, img_pad = (x.to(device) for x in random_problem(2, 4, 5, gen, dim=6, dtype=torch.float64))
    txt.requires_grad_(True)
    img.requires_grad_(True)
    distance = optimal_transport_dist(txt, img, txt_pad, img_pad, solver=solver)
    plan = ipot(masked_cost(txt, img, txt_pad, img_pad), txt_pad, img_pad, solver=solver)

    def fixed_plan_distance(txt_emb, img_emb):
        return (masked_cost(txt_emb, img_emb, txt_pad, img_pad) * plan).sum(dim=(1, 2))

    finite_difference_ok = torch.autograd.gradcheck(fixed_plan_distance, (txt, img), eps=1e-6, atol=1e-7,
                                                    rtol=1e-5, raise_exception=False)
    grads = torch.autograd.grad(distance.sum(), (txt, img))
    expected = torch.autograd.grad(fixed_plan_distance(txt, img).sum(), (txt, img))
    gap = max((a - b).abs().max().item() for a, b in zip(grads, expected))
    plan_detached = not plan.requires_grad and plan.grad_fn is None
    return {"ok": bool(finite_difference_ok) and gap <= 1e-10 and plan_detached,
            "finite_difference_ok": bool(finite_difference_ok), "gap_to_fixed_plan_gradient": gap,
            "plan_detached": plan_detached}


CHECKS = {  # name -> check(solver, device, seed)
    "matches_reference": check_matches_reference,
    "variants": check_variants,
    "against_emd": check_against_emd,
    "degenerate": lambda solver, device, seed: check_degenerate(solver, device),
    "dtypes": lambda solver, device, seed: check_dtypes(solver, device),
    "gradient": check_gradient,
}


def run_checks(solver: str, device: str, seed: int, names=None) -> dict:
    return {name: CHECKS[name](solver, device, seed) for name in (names or CHECKS)}


def check_command(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--solver", default=None, choices=SOLVERS,
                        help="default: fused on cuda, batched on cpu")
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh random seed (printed)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(CHECKS)}")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    solver = args.solver or ("fused" if args.device.startswith("cuda") else "batched")
    if solver == "fused" and not args.device.startswith("cuda"):
        from uniter_core.ot.fused_triton import interpreter_active
        if not interpreter_active():
            parser.error("--solver fused on cpu runs only in Triton's interpreter: set TRITON_INTERPRET=1")
    seed = fresh_seed() if args.seed is None else args.seed
    names = args.only.split(",") if args.only else None
    unknown = set(names or ()) - set(CHECKS)
    if unknown:
        parser.error(f"unknown check(s) {sorted(unknown)}; valid: {', '.join(CHECKS)}")
    results = run_checks(solver, args.device, seed, names)
    if args.json:
        print(json.dumps({"solver": solver, "device": args.device, "seed": seed, "results": results}))
    else:
        print(f"IPOT checks: solver={solver} device={args.device} seed={seed}")
        for name, result in results.items():
            details = ", ".join(f"{k}={v}" for k, v in result.items() if k != "ok")
            print(f"  {'PASS' if result['ok'] else 'FAIL'}  {name}: {details}")
    return 0 if all(r["ok"] for r in results.values()) else 1


def main(argv=None) -> int:
    return run_command(check_command, argv)


if __name__ == "__main__":
    exit_with(main())
