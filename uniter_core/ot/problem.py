"""Input checks and conventions shared by every IPOT solver.

One place decides the compute dtype and the padding semantics, so that the solvers can be compared
entry by entry and a caller gets the same error message whichever solver it picked.
"""
from __future__ import annotations

import torch

SOLVERS = ("auto", "reference", "batched", "fused", "pot-sinkhorn", "pot-emd")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (fp16, bf16, fp32) is solved in float32.

    WRA is computed in fp32, and exp(-C/beta) over 50 iterations has a dynamic
    range that half precision cannot hold.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_solver(solver: str) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is not a known IPOT solver; valid choices: {', '.join(SOLVERS)}")
    return solver


def check_problem(cost: torch.Tensor, txt_pad: torch.Tensor | None, img_pad: torch.Tensor | None,
                  beta: float, iteration: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes and hyper-parameters; return boolean pad masks (None means no padding)."""
    if cost.dim() != 3:
        raise ValueError(f"cost must be [B, T, K], got shape {tuple(cost.shape)}")
    if not cost.is_floating_point():
        raise ValueError(f"cost must be a floating-point tensor, got {cost.dtype}")
    batch, n_txt, n_img = cost.shape
    txt_pad = _pad_mask(txt_pad, (batch, n_txt), "txt_pad", cost.device)
    img_pad = _pad_mask(img_pad, (batch, n_img), "img_pad", cost.device)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if int(iteration) != iteration or iteration < 0:
        raise ValueError(f"iteration must be a non-negative integer, got {iteration}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    return txt_pad, img_pad


def _pad_mask(pad: torch.Tensor | None, shape: tuple[int, int], name: str, device: torch.device) -> torch.Tensor:
    if pad is None:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    if tuple(pad.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)} to match the cost, got {list(pad.shape)}")
    return pad.to(device=device, dtype=torch.bool)

