"""IPOT exactly as the official UNITER code runs it (ChenRocks/UNITER, model/ot.py).

This is the oracle the fast solvers are tested against, so it keeps the official arithmetic and
masking on purpose, warts included: padded positions get 1e4 added to their denominators, and
nothing guards against exp(-C/beta) underflowing. The official code stores the plan region-major
([B, K, T]); here it is returned text-major ([B, T, K]) like every other solver. A word whose costs
all exceed about 700 * beta (float64) or 85 * beta (float32) underflows exp(-C / beta) to zeros and
turns the plan into NaN here; the "batched" and "fused" solvers stay finite there. Cosine costs
(at most 2) are far from that.
"""
from __future__ import annotations

import torch

from .problem import check_problem, compute_dtype

PADDING_PENALTY = 1e4  # the official constant added to denominators of padded positions


@torch.no_grad()
def ipot_reference(cost: torch.Tensor, txt_pad: torch.Tensor | None = None, img_pad: torch.Tensor | None = None,
                   beta: float = 0.5, iteration: int = 50, k: int = 1) -> torch.Tensor:
    """Eager IPOT plan [B, T, K] in float64 for float64 input, float32 otherwise.

    Uniform marginals 1/n over the non-padded words and regions; the text marginal comes out exact,
    the region marginal approximately (k = 1 inner Sinkhorn step per outer iteration). k > 1 repeats
    the two half-steps with Q fixed; the official code only runs k = 1 (its sigma changes shape).
    """
    txt_pad, img_pad = check_problem(cost, txt_pad, img_pad, beta, iteration, k)
    dtype = compute_dtype(cost.dtype)
    cost = cost.detach().to(dtype)
    batch, n_txt_max, n_img_max = cost.shape

    txt_len = (n_txt_max - txt_pad.sum(dim=1)).to(dtype)  # [B]
    img_len = (n_img_max - img_pad.sum(dim=1)).to(dtype)
    joint_pad = txt_pad.unsqueeze(2) | img_pad.unsqueeze(1)  # [B, T, K]

    sigma = (torch.ones(batch, n_txt_max, dtype=dtype, device=cost.device) / txt_len.unsqueeze(1))
    sigma = sigma.masked_fill(txt_pad, 0).unsqueeze(1)  # [B, 1, T]
    plan = torch.ones(batch, n_txt_max, n_img_max, dtype=dtype, device=cost.device).masked_fill(joint_pad, 0)
    kernel = torch.exp(-cost / beta).masked_fill(joint_pad, 0)

    txt_len = txt_len.view(batch, 1, 1)
    img_len = img_len.view(batch, 1, 1)
    txt_penalty = (txt_pad.to(dtype) * PADDING_PENALTY).unsqueeze(2)  # [B, T, 1]
    img_penalty = (img_pad.to(dtype) * PADDING_PENALTY).unsqueeze(1)  # [B, 1, K]

    for _ in range(iteration):
        q = kernel * plan
        for _ in range(k):
            delta = 1 / (img_len * sigma.bmm(q) + img_penalty)  # [B, 1, K], region scaling
            sigma_col = 1 / (txt_len * q.bmm(delta.transpose(1, 2)) + txt_penalty)  # [B, T, 1]
            sigma = sigma_col.transpose(1, 2)
        plan = sigma_col * q * delta
    return plan.masked_fill_(joint_pad, 0)
