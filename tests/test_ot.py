"""Word-region alignment (uniter_core.ot): reference, batched and POT solvers, in this process.

The fused Triton kernel runs in Triton's interpreter in a subprocess: see test_ot_fused.py.
Inputs are fresh random problems each run; failures print the seed to replay them with.
"""
import pytest
import torch

from uniter_core.ot import SOLVERS, cost_matrix_cosine, ipot, ipot_batched, ipot_reference, optimal_transport_dist
from uniter_core.ot import bench
from uniter_core.ot.check import (check_against_emd, check_degenerate, check_dtypes, check_gradient,
                                  check_matches_reference, check_variants, fresh_seed)
from uniter_core.ot.testing import masked_cost, random_problem, relative_plan_error

EAGER_SOLVERS = ["reference", "batched"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Two xdist workers on two cores: one intra-op thread each avoids oversubscribed OpenMP barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def seed():
    return fresh_seed()


def official_ipot(cost, txt_pad, img_pad, beta=0.5, iteration=50):
    """The official UNITER algorithm, written region-major as in ChenRocks/UNITER model/ot.py."""
    cost_t = cost.transpose(1, 2)
    joint_pad_t = (txt_pad.unsqueeze(2) | img_pad.unsqueeze(1)).transpose(1, 2)
    txt_len = (~txt_pad).sum(1).to(cost.dtype).view(-1, 1, 1)
    img_len = (~img_pad).sum(1).to(cost.dtype).view(-1, 1, 1)
    sigma = (torch.ones_like(txt_pad, dtype=cost.dtype) / txt_len.view(-1, 1)).masked_fill(txt_pad, 0)
    plan = torch.ones_like(cost_t).masked_fill(joint_pad_t, 0)
    kernel = torch.exp(-cost_t / beta).masked_fill(joint_pad_t, 0)
    txt_mask = (txt_pad.to(cost.dtype) * 1e4).unsqueeze(1)
    img_mask = (img_pad.to(cost.dtype) * 1e4).unsqueeze(1)
    for _ in range(iteration):
        q = kernel * plan
        delta = 1 / (img_len * q.matmul(sigma.view(*sigma.shape[:2], 1)).transpose(1, 2) + img_mask)
        sigma = (1 / (txt_len * delta.matmul(q) + txt_mask)).squeeze(1)
        plan = delta.transpose(1, 2) * q * sigma.unsqueeze(1)
    return plan.masked_fill(joint_pad_t, 0).transpose(1, 2)


def test_cost_is_cosine_distance_with_eps_floor():
    txt = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]], dtype=torch.float64)
    img = torch.tensor([[[4.0, 3.0], [-3.0, -4.0], [1e-7, 0.0]]], dtype=torch.float64)
    cost = cost_matrix_cosine(txt, img)
    expected = torch.tensor([[[1 - 24 / 25, 2.0, 1 - 3 / 5 * 1e-7 / 1e-5], [1.0, 1.0, 1.0]]], dtype=torch.float64)
    torch.testing.assert_close(cost, expected)


def test_reference_is_the_official_algorithm(seed):
    txt, img, txt_pad, img_pad = random_problem(6, 13, 17, torch.Generator().manual_seed(seed), dtype=torch.float64)
    cost = masked_cost(txt, img, txt_pad, img_pad)
    official = official_ipot(cost, txt_pad, img_pad)
    assert relative_plan_error(ipot_reference(cost, txt_pad, img_pad), official).max() < 1e-12, f"seed {seed}"
    official_distance = torch.einsum("btk,btk->b", cost, official)
    torch.testing.assert_close(optimal_transport_dist(txt, img, txt_pad, img_pad, solver="reference"),
                               official_distance, msg=f"seed {seed}")


@pytest.mark.parametrize("solver", EAGER_SOLVERS)
def test_matches_float64_reference_on_ragged_batches(solver, seed):
    result = check_matches_reference(solver, "cpu", seed)
    assert result["ok"], f"seed {seed}: {result}"


@pytest.mark.parametrize("solver", EAGER_SOLVERS)
def test_other_k_and_iteration_counts_match_reference(solver, seed):
    result = check_variants(solver, "cpu", seed)
    assert result["ok"], f"seed {seed}: {result}"


def test_batched_chunking_does_not_change_the_plan(seed):
    txt, img, txt_pad, img_pad = random_problem(9, 12, 20, torch.Generator().manual_seed(seed))
    cost = masked_cost(txt, img, txt_pad, img_pad)
    whole = ipot_batched(cost, txt_pad, img_pad, chunk_bytes=1 << 40)
    one_by_one = ipot_batched(cost, txt_pad, img_pad, chunk_bytes=1)
    assert relative_plan_error(one_by_one, whole).max() <= 1e-6, f"seed {seed}"


def test_ipot_close_to_exact_transport(seed):
    """500+ problems against ot.emd; IPOT's entropic bias grows with size (see check_against_emd)."""
    small = check_against_emd("batched", "cpu", seed)
    assert small["ok"] and small["problems"] >= 500, f"seed {seed}: {small}"
    large = check_against_emd("batched", "cpu", seed, n_problems=128, max_txt=60, max_img=100, tolerance=5e-3)
    assert large["ok"], f"seed {seed}: {large}"


@pytest.mark.parametrize("solver", EAGER_SOLVERS)
def test_degenerate_inputs_give_finite_plans_without_mass_on_padding(solver):
    result = check_degenerate(solver, "cpu")
    assert result["ok"], result["failures"]


@pytest.mark.parametrize("solver", EAGER_SOLVERS)
def test_half_precision_is_solved_in_float32(solver):
    result = check_dtypes(solver, "cpu")
    assert result["ok"], result["failures"]


@pytest.mark.parametrize("solver", EAGER_SOLVERS)
def test_gradient_flows_through_the_cost_only(solver, seed):
    result = check_gradient(solver, "cpu", seed)
    assert result["ok"], f"seed {seed}: {result}"


def test_distance_gradient_wrt_cost_is_the_plan(seed):
    """d(sum C*T)/dC = T exactly when no gradient flows into the plan."""
    txt, img, txt_pad, img_pad = random_problem(3, 6, 8, torch.Generator().manual_seed(seed))
    cost = masked_cost(txt, img, txt_pad, img_pad).requires_grad_(True)
    plan = ipot(cost, txt_pad, img_pad)
    assert not plan.requires_grad
    (grad,) = torch.autograd.grad((cost * plan).sum(), cost)
    assert torch.equal(grad, plan)


@pytest.mark.parametrize("solver", ["pot-emd", "pot-sinkhorn"])
def test_pot_solvers_respect_padding_and_marginals(solver, seed):
    txt, img, txt_pad, img_pad = random_problem(4, 7, 9, torch.Generator().manual_seed(seed))
    txt_pad[1] = True
    plan = ipot(masked_cost(txt, img, txt_pad, img_pad), txt_pad, img_pad, solver=solver)
    assert plan.dtype == torch.float32 and plan[1].abs().sum() == 0
    assert plan.masked_select(txt_pad.unsqueeze(2) | img_pad.unsqueeze(1)).abs().max() == 0
    tolerance = 1e-5 if solver == "pot-emd" else 3e-4  # Sinkhorn at epsilon 0.01 converges slowly
    for b in (0, 2, 3):
        for marginal, pad in ((plan[b].sum(1), txt_pad[b]), (plan[b].sum(0), img_pad[b])):
            torch.testing.assert_close(marginal, (~pad).float() / (~pad).sum(), atol=tolerance, rtol=0)


def test_auto_on_cpu_is_the_batched_solver(seed):
    txt, img, txt_pad, img_pad = random_problem(3, 5, 6, torch.Generator().manual_seed(seed))
    cost = masked_cost(txt, img, txt_pad, img_pad)
    assert torch.equal(ipot(cost, txt_pad, img_pad), ipot_batched(cost, txt_pad, img_pad))


def test_unknown_solver_names_the_argument_and_the_choices():
    txt, img, txt_pad, img_pad = random_problem(1, 2, 3, torch.Generator().manual_seed(0))
    for call in (lambda: ipot(masked_cost(txt, img, txt_pad, img_pad), txt_pad, img_pad, solver="sinkhorn"),
                 lambda: optimal_transport_dist(txt, img, txt_pad, img_pad, solver="sinkhorn")):
        with pytest.raises(ValueError) as error:
            call()
        message = str(error.value)
        assert "solver='sinkhorn'" in message and all(name in message for name in SOLVERS)


def test_mismatched_padding_mask_is_rejected():
    with pytest.raises(ValueError, match="txt_pad must have shape"):
        ipot(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.bool))


def test_bench_prints_a_table_with_speedups(capsys):
    assert bench.main(["--device", "cpu", "--shapes", "4x3x5", "--repeats", "1", "--pot-loop-problems", "2"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 4 x 3 x 5")]
    assert len(table) == 1 and table[0].count("x)") == 3
