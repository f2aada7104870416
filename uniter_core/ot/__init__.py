"""Word-Region Alignment by optimal transport (UNITER's WRA): cosine cost, IPOT plan, WRA distance.

Solvers for the plan, all with the same signature (cost, txt_pad, img_pad, beta, iteration, k):
`ipot_reference` (the official algorithm), `ipot_batched` (fast eager, CPU default), the Triton
kernel `uniter_core.ot.fused_triton.ipot_fused` (CUDA default; imported on demand), and the POT
baselines `ipot_pot_sinkhorn` / `ipot_pot_emd`. `ipot(..., solver=...)` picks one by name. The facts they rely on (marginals, padding, dtypes, how
they are checked against POT) are in docs/ARCHITECTURE.md.
"""
from .api import ipot, optimal_transport_dist, wra_plan
from .batched import ipot_batched
from .cost import cost_matrix_cosine
from .pot_solvers import ipot_pot_emd, ipot_pot_sinkhorn
from .problem import SOLVERS
from .reference import ipot_reference

__all__ = ["SOLVERS", "cost_matrix_cosine", "ipot", "ipot_batched", "ipot_pot_emd", "ipot_pot_sinkhorn",
           "ipot_reference", "optimal_transport_dist", "wra_plan"]
