"""Cosine cost between words and regions (the WRA cost of UNITER)."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def cost_matrix_cosine(txt_emb: torch.Tensor, img_emb: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """C[b, i, j] = 1 - cos(w_i, v_j), [B, T, D] x [B, K, D] -> [B, T, K].

    Each vector is divided by max(||x||, eps), as the official code does through F.normalize, so a
    zero vector has cosine 0 with everything (cost 1) instead of producing NaN.
    """
    if txt_emb.dim() != 3 or img_emb.dim() != 3:
        raise ValueError(f"embeddings must be [B, T, D] and [B, K, D], got {tuple(txt_emb.shape)} "
                         f"and {tuple(img_emb.shape)}")
    if txt_emb.shape[0] != img_emb.shape[0] or txt_emb.shape[2] != img_emb.shape[2]:
        raise ValueError(f"batch and feature sizes must match, got {tuple(txt_emb.shape)} and {tuple(img_emb.shape)}")
    txt_unit = F.normalize(txt_emb, p=2, dim=-1, eps=eps)
    img_unit = F.normalize(img_emb, p=2, dim=-1, eps=eps)
    return 1 - txt_unit.matmul(img_unit.transpose(1, 2))
