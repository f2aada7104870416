"""The two entry points: the IPOT plan with a choice of solver, and the WRA distance."""
from __future__ import annotations

import torch

from .batched import ipot_batched
from .cost import cost_matrix_cosine
from .pot_solvers import ipot_pot_emd, ipot_pot_sinkhorn
from .problem import check_solver, compute_dtype
from .reference import ipot_reference


def ipot(cost: torch.Tensor, txt_pad: torch.Tensor | None, img_pad: torch.Tensor | None, beta: float = 0.5,
         iteration: int = 50, k: int = 1, solver: str = "auto") -> torch.Tensor:
    """Transport plan [B, T, K] between words and regions for cost [B, T, K] (pads: True = padding).

    solver: "reference" (official UNITER IPOT, eager), "batched" (fast eager, default on CPU),
    "fused" (one Triton kernel, default on CUDA), "pot-sinkhorn" / "pot-emd" (per-problem POT, CPU,
    a different regularisation: for validation and display), "auto". The plan is float64 for
    float64 cost and float32 otherwise (fp16/bf16 are solved in float32); no gradient flows into it.
    """
    solver = _resolve(check_solver(solver), cost)
    if solver == "fused":
        from .fused_triton import ipot_fused  # imports triton, which CPU-only installs may lack
        return ipot_fused(cost, txt_pad, img_pad, beta, iteration, k)
    solve = {"reference": ipot_reference, "batched": ipot_batched,
             "pot-sinkhorn": ipot_pot_sinkhorn, "pot-emd": ipot_pot_emd}[solver]
    return solve(cost, txt_pad, img_pad, beta, iteration, k)


def wra_plan(txt_emb: torch.Tensor, img_emb: torch.Tensor, txt_pad: torch.Tensor | None,
             img_pad: torch.Tensor | None, beta: float = 0.5, iteration: int = 50, k: int = 1,
             solver: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine cost [B, T, K], zero on padded pairs, with its gradient; IPOT plan [B, T, K], a constant) of
    WRA: what the distance sums and what the alignment accuracy reads. Half precision is upcast first."""
    check_solver(solver)
    dtype = compute_dtype(txt_emb.dtype)
    cost = cost_matrix_cosine(txt_emb.to(dtype), img_emb.to(dtype))
    batch, n_txt, n_img = cost.shape
    if txt_pad is None:
        txt_pad = torch.zeros(batch, n_txt, dtype=torch.bool, device=cost.device)
    if img_pad is None:
        img_pad = torch.zeros(batch, n_img, dtype=torch.bool, device=cost.device)
    joint_pad = txt_pad.to(torch.bool).unsqueeze(2) | img_pad.to(torch.bool).unsqueeze(1)
    cost = cost.masked_fill(joint_pad, 0)
    return cost, ipot(cost.detach(), txt_pad, img_pad, beta, iteration, k, solver)


def optimal_transport_dist(txt_emb: torch.Tensor, img_emb: torch.Tensor, txt_pad: torch.Tensor | None,
                           img_pad: torch.Tensor | None, beta: float = 0.5, iteration: int = 50, k: int = 1,
                           solver: str = "auto") -> torch.Tensor:
    """WRA distance [B] = sum(C * T) with C the cosine cost (zero on padded pairs) and T the IPOT plan.

    T is a constant here (envelope theorem, as in UNITER): gradients reach the embeddings through C
    only. Half-precision embeddings are upcast first, since WRA is computed in fp32.
    """
    cost, plan = wra_plan(txt_emb, img_emb, txt_pad, img_pad, beta, iteration, k, solver)
    return (cost * plan.to(cost.dtype)).sum(dim=(1, 2))


def _resolve(solver: str, cost: torch.Tensor) -> str:
    """auto: the fused kernel on CUDA when its tile fits on-chip, the batched solver otherwise."""
    if solver != "auto":
        return solver
    if cost.is_cuda:
        try:
            from .fused_triton import fits_on_chip
        except ImportError:  # no triton on this install
            return "batched"
        return "fused" if fits_on_chip(cost.shape[1], cost.shape[2]) else "batched"
    return "batched"
