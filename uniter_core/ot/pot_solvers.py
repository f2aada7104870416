"""Per-problem POT solvers on the unpadded sub-matrices: independent references and app views.

They solve a different problem than IPOT on purpose: "pot-emd" is the exact transport plan, and
"pot-sinkhorn" the entropic one with epsilon = beta / iteration, the regularisation IPOT approaches
after `iteration` proximal steps. Both loop over the batch in Python on the
CPU in float64, so they are for validation and display, not training.
"""
from __future__ import annotations

import numpy as np
import ot
import torch

from .problem import check_problem, compute_dtype

SINKHORN_MAX_ITER = 10_000


@torch.no_grad()
def ipot_pot_emd(cost: torch.Tensor, txt_pad: torch.Tensor | None = None, img_pad: torch.Tensor | None = None,
                 beta: float = 0.5, iteration: int = 50, k: int = 1) -> torch.Tensor:
    """Exact OT plan (ot.emd) per problem with uniform marginals; beta, iteration, k are ignored."""
    return _per_problem(cost, txt_pad, img_pad, beta, iteration, k,
                        lambda a, b, c: ot.emd(a, b, c))


@torch.no_grad()
def ipot_pot_sinkhorn(cost: torch.Tensor, txt_pad: torch.Tensor | None = None, img_pad: torch.Tensor | None = None,
                      beta: float = 0.5, iteration: int = 50, k: int = 1) -> torch.Tensor:
    """Entropic OT plan (log-domain ot.sinkhorn, epsilon = beta / iteration) per problem; log-domain
    because epsilon is small next to the costs. At epsilon 0.01 Sinkhorn converges slowly: after its
    SINKHORN_MAX_ITER iterations the region marginal can still be off by ~1e-4 of the mass."""
    epsilon = beta / max(iteration, 1)
    return _per_problem(cost, txt_pad, img_pad, beta, iteration, k,
                        lambda a, b, c: ot.sinkhorn(a, b, c, epsilon, method="sinkhorn_log",
                                                    numItermax=SINKHORN_MAX_ITER, stopThr=1e-7, warn=False))


def _per_problem(cost, txt_pad, img_pad, beta, iteration, k, solve) -> torch.Tensor:
    txt_pad, img_pad = check_problem(cost, txt_pad, img_pad, beta, iteration, k)
    plan = np.zeros(cost.shape, dtype=np.float64)
    cost_np = cost.detach().to("cpu", torch.float64).numpy()
    txt_real = (~txt_pad).cpu().numpy()
    img_real = (~img_pad).cpu().numpy()
    for b in range(cost.shape[0]):
        rows, cols = np.flatnonzero(txt_real[b]), np.flatnonzero(img_real[b])
        if len(rows) == 0 or len(cols) == 0:
            continue
        sub_cost = np.ascontiguousarray(cost_np[b][np.ix_(rows, cols)])
        a = np.full(len(rows), 1.0 / len(rows))
        b_marginal = np.full(len(cols), 1.0 / len(cols))
        plan[b][np.ix_(rows, cols)] = solve(a, b_marginal, sub_cost)
    return torch.from_numpy(plan).to(device=cost.device, dtype=compute_dtype(cost.dtype))
