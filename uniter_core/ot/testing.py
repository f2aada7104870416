"""Random ragged WRA problems and error measures, shared by the tests, the benchmark and --check."""
from __future__ import annotations

import torch

from .cost import cost_matrix_cosine


def ragged_pad(batch: int, max_len: int, generator: torch.Generator, min_len: int = 1) -> torch.Tensor:
    """Padding mask [batch, max_len] (True = padding) with lengths uniform in [min_len, max_len], at the end
    like UNITER's batches; at least one row uses the full length so the tensor is not over-padded."""
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=generator)
    lengths[torch.randint(0, batch, (1,), generator=generator)] = max_len
    return torch.arange(max_len).unsqueeze(0) >= lengths.unsqueeze(1)


def random_problem(batch: int, n_txt: int, n_img: int, generator: torch.Generator, dim: int = 16,
                   dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Text and region embeddings with a shared latent part, so the cosine costs have structure
    (values spread over roughly [0.2, 1.8]) like trained WRA features rather than all sitting near 1."""
    latent = torch.randn(batch, 4, dim, generator=generator, dtype=torch.float64)
    txt = torch.randn(batch, n_txt, 4, generator=generator, dtype=torch.float64) @ latent
    img = torch.randn(batch, n_img, 4, generator=generator, dtype=torch.float64) @ latent
    txt = txt + 0.5 * torch.randn(txt.shape, generator=generator, dtype=torch.float64)
    img = img + 0.5 * torch.randn(img.shape, generator=generator, dtype=torch.float64)
    txt_pad = ragged_pad(batch, n_txt, generator)
    img_pad = ragged_pad(batch, n_img, generator)
    return (txt.to(device=device, dtype=dtype), img.to(device=device, dtype=dtype),
            txt_pad.to(device), img_pad.to(device))


def masked_cost(txt: torch.Tensor, img: torch.Tensor, txt_pad: torch.Tensor, img_pad: torch.Tensor) -> torch.Tensor:
    """Cosine cost with padded pairs zeroed, as optimal_transport_dist feeds it to the solver."""
    joint_pad = txt_pad.unsqueeze(2) | img_pad.unsqueeze(1)
    return cost_matrix_cosine(txt, img).masked_fill(joint_pad, 0)


def relative_plan_error(plan: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Per-problem ||P - P_ref||_1 / ||P_ref||_1 in float64 (plans have unit mass, so this is the
    mass that went to the wrong place); 0 where the reference is all zero and the plan matches."""
    plan, expected = plan.double(), expected.double()
    err = (plan - expected).abs().sum(dim=(1, 2))
    return err / expected.abs().sum(dim=(1, 2)).clamp_min(1e-300)
