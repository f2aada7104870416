"""Head gates, head importance, grounding per head and relevance, on constructed models where the answer is known,
and the three commands end to end (schemas like export_stats, a run and an official-format checkpoint alike)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from analyses import grounding as head_grounding
from analyses import head_importance, relevance
from analyses.grounding import HeadTally
from analyses.patterns import PATTERNS
from analyses.head_importance import ablation_table, gradient_importance, head_gates
from analyses.probe import build_probe, candidate_logits, mlm_scores, probe_metrics, probe_states
from analyses.relevance import (explain_example, gradient_relevance, match_probabilities, removal_order, rollout,
                                variants_of)
from factories import make_batch, tiny_config, tiny_overrides
from uniter_core import train
from uniter_core.data.dataset import ImageTextDataset, collate
from uniter_core.model import SequenceLayout, UniterModel
from uniter_core.ot import wra_plan
from uniter_core.pretrain import split_text_regions
from uniter_core.runs import load_run
from uniter_core.tasks import wra_pads
from uniter_core.train_state import snapshots


def _head_columns(model, layer: int, head: int) -> slice:
    size = model.config.hidden_size // model.config.num_attention_heads
    return slice(head * size, (head + 1) * size)


def _silence_head(uniter, layer: int, head: int) -> None:
    """Zero the output projection's columns that read head (layer, head)."""
    with torch.no_grad():
        uniter.encoder.layer[layer].attention.output.dense.weight[:, _head_columns(uniter, layer, head)] = 0


# ------------------------------------------------------------------------------------------ head gates
def test_gates_of_one_change_nothing_and_a_zero_gate_is_a_silenced_output_projection():
    torch.manual_seed(0)
    model = UniterModel(tiny_config()).eval()
    batch = make_batch(model.config)
    plain = model.forward_batch(batch).last_hidden_state
    ones = head_gates(model.config)
    torch.testing.assert_close(model.forward_batch(batch, head_mask=ones).last_hidden_state, plain)
    gated = model.forward_batch(batch, head_mask=head_gates(model.config, [(1, 2)])).last_hidden_state
    silenced = copy.deepcopy(model)
    _silence_head(silenced, 1, 2)
    torch.testing.assert_close(gated, silenced.forward_batch(batch).last_hidden_state)
    assert not torch.allclose(gated, plain)
    model.unpad_tokens = True  # the packed path steps aside for gates and gives the same states
    torch.testing.assert_close(model.forward_batch(batch, head_mask=head_gates(model.config, [(1, 2)])
                                                   ).last_hidden_state, gated)


def test_masking_a_head_whose_output_projection_is_zero_changes_nothing():
    torch.manual_seed(1)
    model = UniterModel(tiny_config()).eval()
    _silence_head(model, 0, 1)
    batch = make_batch(model.config)
    torch.testing.assert_close(model.forward_batch(batch, head_mask=head_gates(model.config, [(0, 1)])
                                                   ).last_hidden_state, model.forward_batch(batch).last_hidden_state)


def test_per_example_gates_touch_only_their_example_and_encode_from_resumes_a_layer():
    torch.manual_seed(2)
    model = UniterModel(tiny_config()).eval()
    batch = make_batch(model.config)
    output = model.forward_batch(batch, output_hidden_states=True)
    for layer in range(model.config.num_hidden_layers):
        torch.testing.assert_close(model.encode_from(layer, output.hidden_states[layer], batch["attn_masks"]),
                                   output.last_hidden_state)
    gates = head_gates(model.config, rows=3)
    gates[1, 0, 3] = 0
    mixed = model.forward_batch(batch, head_mask=gates).last_hidden_state
    everywhere = model.forward_batch(batch, head_mask=head_gates(model.config, [(0, 3)])).last_hidden_state
    torch.testing.assert_close(mixed[[0, 2]], output.last_hidden_state[[0, 2]])
    torch.testing.assert_close(mixed[1], everywhere[1])


# ------------------------------------------------------------------------------------------ importance
@pytest.fixture(scope="module")
def tiny_probe(tiny_run):
    loaded = load_run(tiny_run)
    model = loaded.model.eval()
    dataset = ImageTextDataset(loaded.corpus, "test", loaded.max_text_len, loaded.max_regions)
    return model, build_probe(dataset, model.config, queries=3, candidates=3, batch_size=4)


def _wra_cost_and_plan(model, chunk, final):
    txt_pad, img_pad = wra_pads(chunk.batch)
    txt, img = split_text_regions(final.double(), txt_pad, img_pad)
    c = model.config
    return wra_plan(txt, img, txt_pad, img_pad, c.ot_beta, c.ot_iteration, c.ot_k, c.ot_solver)


def _probe_losses(model, probe, query: int, gate_for_query: torch.Tensor, plans=None) -> dict[str, float]:
    """The three gradient losses of one query, with `gate_for_query` [layers, heads] on its rows only; the WRA
    distance with the plan of `plans` (chunk index -> plan) held fixed, as the backward pass holds it."""
    finals = []
    for chunk in probe.chunks:
        gates = head_gates(model.config, rows=len(chunk.queries)).double()
        rows = [i for i, q in enumerate(chunk.queries) if q == query]
        gates[rows] = gate_for_query
        finals.append(model.uniter.forward_batch(chunk.batch, head_mask=gates).last_hidden_state)
    logits = candidate_logits(model, probe, finals)
    out = {"retrieval": float(-logits[query].double().log_softmax(0)[0])}
    for index, (chunk, final) in enumerate(zip(probe.chunks, finals)):
        rows = [i for i, q in enumerate(chunk.queries) if q == query]
        if chunk.kind == "mlm":
            scores, labels, row_of = mlm_scores(model, chunk, final)
            keep = torch.isin(row_of, torch.tensor(rows))
            out["mlm"] = float(torch.nn.functional.cross_entropy(scores[keep].double(), labels[keep], reduction="sum"))
        elif chunk.kind == "true":
            cost, plan = _wra_cost_and_plan(model, chunk, final)
            plan = plans[index] if plans is not None else plan
            out["wra"] = float((cost * plan).sum(dim=(1, 2))[rows].sum())
    return out


def test_gradient_importance_matches_a_finite_difference(tiny_probe):
    """In float64; the WRA distance's plan is held fixed in the difference, as the backward pass holds it (the
    envelope theorem of training; the distance itself runs in float32 there: a looser tolerance)."""
    model, probe = tiny_probe
    model, probe = copy.deepcopy(model).double(), copy.deepcopy(probe)
    for chunk in probe.chunks:
        for key, value in chunk.batch.items():
            if torch.is_tensor(value) and value.is_floating_point():
                chunk.batch[key] = value.double()
    importance = gradient_importance(model, probe)
    with torch.no_grad():
        plans = {i: _wra_cost_and_plan(model, c, model.uniter.forward_batch(c.batch).last_hidden_state)[1]
                 for i, c in enumerate(probe.chunks) if c.kind == "true"}
    eps, layer, head = 1e-3, 1, 2
    estimate = {name: 0.0 for name in importance}
    with torch.no_grad():
        for query in range(probe.queries):
            up, down = head_gates(model.config).double(), head_gates(model.config).double()
            up[layer, head] += eps
            down[layer, head] -= eps
            plus = _probe_losses(model, probe, query, up, plans)
            minus = _probe_losses(model, probe, query, down, plans)
            for name in estimate:
                estimate[name] += abs(plus[name] - minus[name]) / (2 * eps) / probe.queries
    for name, value in estimate.items():
        tolerance = 1e-3 if name == "wra" else 1e-4
        assert importance[name][layer, head] == pytest.approx(value, rel=tolerance, abs=1e-8), name


def test_a_model_with_one_informative_head_loses_only_when_that_head_goes(tiny_probe):
    model, probe = tiny_probe
    model = copy.deepcopy(model)
    config = model.config
    keep = (1, 2)
    for layer in range(config.num_hidden_layers):
        for head in range(config.num_attention_heads):
            if (layer, head) != keep:
                _silence_head(model.uniter, layer, head)
    with torch.no_grad():  # a random model's heads barely move its outputs: make the one left count
        model.uniter.encoder.layer[keep[0]].attention.output.dense.weight[:, _head_columns(model, *keep)] *= 100
    states = probe_states(model.uniter, probe)
    base = probe_metrics(model, probe, [s[-1] for s in states])
    table = ablation_table(model, probe, states, base)
    effects = table[[c for c in table.columns if c.startswith("effect_")]].abs()
    informative = (table["layer"] == keep[0]) & (table["head"] == keep[1])
    assert effects[~informative].to_numpy().max() < 1e-6
    assert effects[informative][["effect_margin", "effect_mlm_loss"]].to_numpy().min() > 1e-5


# ------------------------------------------------------------------------------------------ grounding
def test_head_tally_scores_a_pointing_head_and_a_wandering_head():
    # [CLS] w1 w2 [SEP] r0 r1 r2: w1 names object 0, w2 object 1; r0 is object 0's box, r1 object 1's, r2 background
    item = {"alignment": [(1, 0), (2, 1)]}
    owners = [0, 1, -1]
    attention = torch.full((1, 2, 7, 7), 1 / 7)
    pointing = {1: 4, 2: 5, 4: 1, 5: 2}  # head 0: words to their regions and back
    wandering = {1: 6, 2: 6, 4: 2, 5: 1}  # head 1: both words to the background, regions to the wrong word
    for head, targets in enumerate((pointing, wandering)):
        for row, column in targets.items():
            attention[0, head, row] = 0.01
            attention[0, head, row, column] = 1 - 0.06
    tally = HeadTally(1, 2)
    tally.add_example(attention, 4, 3, item, owners)
    table = tally.table()
    assert table["word_to_region"].tolist() == [1.0, 0.0]
    assert table["word_to_region_chance"].tolist() == pytest.approx([1 / 3, 1 / 3])
    assert table["region_to_word"].tolist() == [1.0, 0.0]
    assert table["region_to_word_chance"].tolist() == pytest.approx([0.5, 0.5])
    words_to_regions = attention[0, :, 1:3, 4:].sum(-1).mean(-1)
    assert table["word_to_regions"].tolist() == pytest.approx(words_to_regions.tolist())


# ------------------------------------------------------------------------------------------ relevance
def test_rollout_of_identity_attention_is_the_identity_and_rows_stay_distributions():
    eye = torch.eye(5).expand(2, 5, 5)
    torch.testing.assert_close(rollout([eye, eye, eye]), eye)
    random = torch.rand(2, 5, 5).softmax(-1)
    torch.testing.assert_close(rollout([random, random.flip(1)]).sum(-1), torch.ones(2, 5))


def test_gradient_relevance_by_hand():
    attention = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])  # [B=1, heads=1, 2, 2]
    assert torch.equal(gradient_relevance([attention], [torch.zeros_like(attention)]), torch.eye(2)[None])
    gradient = torch.tensor([[[[1.0, -1.0], [2.0, 1.0]]]])
    weighted = torch.tensor([[0.5, 0.0], [0.0, 1.0]])  # (grad * A)^+
    expected = torch.eye(2) + weighted @ torch.eye(2)
    expected = expected + weighted @ expected  # a second layer with the same attention and gradient
    torch.testing.assert_close(gradient_relevance([attention] * 2, [gradient] * 2)[0], expected)
    assert removal_order(torch.tensor([0.1, 0.9, 0.5]), "positive") == [1, 2, 0]
    assert removal_order(torch.tensor([0.1, 0.9, 0.5]), "negative") == [0, 2, 1]


def test_removing_regions_from_the_attention_is_leaving_them_out(tiny_probe):
    model, probe = tiny_probe
    dataset_item = probe.chunks[0].examples[0]
    batch = collate([dataset_item])
    layout = SequenceLayout.from_batch(batch)
    fake = {name: torch.rand(1, layout.seq_len, layout.seq_len) for name in ("attention", "rollout", "gradient")}
    variants = variants_of(0, fake, layout, torch.Generator().manual_seed(0))
    probabilities = match_probabilities(model, batch, variants)
    first = layout.region_slice(0).start
    for variant, probability in zip(variants, probabilities):
        if variant.modality != "regions" or variant.share not in (0.3, 0.6):
            continue
        kept = [k for k in range(layout.num_bbs[0]) if first + k not in variant.removed]
        shorter = dict(dataset_item, img_feat=dataset_item["img_feat"][kept], norm_bb=dataset_item["norm_bb"][kept],
                       soft_labels=dataset_item["soft_labels"][kept])
        short_batch = collate([shorter])
        with torch.no_grad():
            hidden = model.uniter.forward_batch(short_batch).last_hidden_state
            logit = model.itm_output(model.uniter.pooler(hidden))[0]
        assert probability == pytest.approx(float(torch.sigmoid(logit[1] - logit[0])), abs=1e-5)
    shares = {(v.order, v.modality, v.direction): [] for v in variants}
    for variant in variants:
        shares[(variant.order, variant.modality, variant.direction)].append(len(variant.removed))
    for (order, modality, _), removed in shares.items():
        total = layout.num_bbs[0] if modality == "regions" else layout.txt_lens[0] - 2
        assert removed[0] == 0 and removed[-1] == total and removed == sorted(removed)


def test_explain_example_gives_every_method_and_the_curves(tiny_probe):
    model, probe = tiny_probe
    item = probe.chunks[0].examples[1]
    explained = explain_example(model, item)
    assert 0 < explained.probability < 1
    assert set(explained.words) == set(explained.regions) == {"attention", "rollout", "gradient"}
    assert len(explained.regions["gradient"]) == len(item["img_feat"])
    start = explained.curves[explained.curves["share"] == 0.0]["probability"]
    assert np.allclose(start, explained.probability, atol=1e-5)


# ------------------------------------------------------------------------------------------ commands
def _run(module, argv, capsys):
    try:
        code = module.main([str(a) for a in argv])
    except SystemExit as error:
        code = error.code
    return code, capsys.readouterr()


def _check_schema(out, tables, figures):
    summary = json.loads((out / "summary.json").read_text())
    for name in tables:
        csv, parquet = pd.read_csv(out / f"{name}.csv"), pd.read_parquet(out / f"{name}.parquet")
        records = json.loads((out / f"{name}.json").read_text())
        columns = list(summary["tables"][name]["columns"])
        assert list(csv.columns) == list(parquet.columns) == list(records[0]) == columns
        assert len(csv) == len(parquet) == len(records) == summary["tables"][name]["rows"] > 0
        for column, spec in summary["tables"][name]["columns"].items():
            assert spec["description"] and spec["dtype"] == str(parquet[column].dtype)
    for figure in figures:
        for fmt in ("png", "pdf", "svg"):
            assert (out / "figures" / f"{figure}.{fmt}").stat().st_size > 1000
    return summary


@pytest.fixture(scope="module")
def official_file(tiny_run, tmp_path_factory):
    """The tiny run's weights as an official-format .pt checkpoint."""
    path = tmp_path_factory.mktemp("official") / "tiny.pt"
    torch.save(load_run(tiny_run).model.state_dict(), path)
    return path


TINY_PRESET = ["--preset", "uniter-mini", "--override", "num_hidden_layers=2", "--override", "hidden_size=32",
               "--override", "num_attention_heads=4", "--override", "intermediate_size=64"]


def test_head_importance_command_on_a_run_and_on_its_official_checkpoint(tiny_run, tiny_corpus, official_file,
                                                                         model_path, tmp_path, capsys):
    settings = ["--queries", 3, "--candidates", 2, "--random-orders", 1, "--model", model_path, "--no-progress"]
    code, captured = _run(head_importance, ["--run", tiny_run, "--out", tmp_path / "a", *settings], capsys)
    assert code == 0, captured.err
    assert "ablation sweep" in captured.out
    summary = _check_schema(tmp_path / "a", head_importance.TABLES,
                            ("importance_grid", "pruning_curves", "effect_by_pattern"))
    heads = pd.read_csv(tmp_path / "a" / "heads.csv")
    assert len(heads) == 8 and set(heads["dominant_pattern"]) <= set(PATTERNS)
    pruning = pd.read_csv(tmp_path / "a" / "pruning.csv")
    assert set(pruning["order"]) == {"ablation", "gradient", "random"}
    full = pruning[pruning["share"] == 1.0]
    assert (full["removed"] == 8).all() and full["r1"].nunique() == 1
    assert summary["cost"]["ablation_sweep_over_bare"] > 0
    code, captured = _run(head_importance, ["--checkpoint", official_file, "--corpus", tiny_corpus, *TINY_PRESET,
                                            "--out", tmp_path / "b", *settings], capsys)
    assert code == 0, captured.err
    official = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert official["base"] == pytest.approx(summary["base"])
    assert official["source"]["overrides"]["hidden_size"] == 32
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    code, captured = _run(head_importance, ["--run", tiny_run, "--out", tmp_path / "foreign", *settings], capsys)
    assert code == 2 and "did not write" in captured.err and "Traceback" not in captured.err
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_grounding_and_relevance_commands(tiny_run, tiny_corpus, official_file, model_path, tmp_path, capsys):
    code, captured = _run(head_grounding, ["--run", tiny_run, "--out", tmp_path / "g", "--model", model_path,
                                           "--no-progress"], capsys)
    assert code == 0, captured.err
    summary = _check_schema(tmp_path / "g", head_grounding.TABLES, ("grounding_grid", "grounding_layers"))
    heads = pd.read_csv(tmp_path / "g" / "heads.csv")
    assert len(heads) == 8 and heads["cross_modal"].between(0, 1).all()
    assert summary["grounded_word_pieces"] > 0 and summary["rule"] == "covering"
    code, captured = _run(relevance, ["--checkpoint", official_file, "--corpus", tiny_corpus, *TINY_PRESET,
                                      "--out", tmp_path / "r", "--max-examples", 3, "--no-progress"], capsys)
    assert code == 0, captured.err
    summary = _check_schema(tmp_path / "r", relevance.TABLES, ("perturbation_curves", "pointing_game"))
    curves = pd.read_csv(tmp_path / "r" / "curves.csv")
    assert set(curves["order"]) == {"attention", "rollout", "gradient", "random"}
    assert (curves["examples"] == 3).all() and curves["probability"].between(0, 1).all()
    assert set(summary["pointing"]) == {"attention", "rollout", "gradient"}
    code, captured = _run(relevance, ["--run", tiny_run, "--override", "hidden_size=8", "--out", tmp_path / "x"],
                          capsys)
    assert code == 2 and "--override applies to --checkpoint only" in captured.err


# ------------------------------------------------------------------------------------------ snapshots
def test_snapshots_leave_the_training_as_it_is_and_force_removes_them(trained_run, tiny_corpus, tmp_path):
    from factories import final_weights
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_corpus, steps=4, save_every=2, keep_last=2)
    assert train.main(["--out", str(out), *overrides, "run.keep_steps=[0, 3]", "run.keep_every=2"]) == 0
    assert [step for step, _ in snapshots(out)] == [0, 2, 3, 4]
    mine, theirs = final_weights(out), final_weights(trained_run)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert train.main(["--out", str(out), *overrides, "--force"]) == 0
    assert snapshots(out) == []


def test_dynamics_measures_every_kept_step_compares_runs_and_resumes(trained_run, tiny_corpus, model_path, tmp_path,
                                                                      capsys, monkeypatch):
    from analyses import dynamics
    kept = tmp_path / "kept"
    overrides = tiny_overrides(tiny_corpus, steps=4, save_every=2, keep_last=2)
    assert train.main(["--out", str(kept), *overrides, "run.keep_steps=[0, 2]"]) == 0
    argv = ["--run", kept, "--compare", trained_run, "--out", tmp_path / "d", "--queries", 3, "--candidates", 2,
            "--grounding-examples", 3, "--model", model_path, "--no-progress"]
    real, calls = dynamics.measure_step, []

    def interrupted_after_two(*args, **kwargs):
        calls.append(args[-1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(dynamics, "measure_step", interrupted_after_two)
    code, captured = _run(dynamics, argv, capsys)
    assert code == 130 and "resume" in captured.err and "Traceback" not in captured.err
    monkeypatch.setattr(dynamics, "measure_step", lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
    code, captured = _run(dynamics, argv, capsys)
    assert code == 0, captured.err
    assert calls == [0, 2, 4, 4, 4]  # kept: 0, 2, 4 (newest checkpoint); the compared run: its step 4
    summary = _check_schema(tmp_path / "d", dynamics.TABLES, ("metrics_over_steps", "patterns_over_steps",
                                                              "grounding_over_steps", "importance_over_steps"))
    steps = pd.read_csv(tmp_path / "d" / "steps.csv")
    assert list(zip(steps["run"], steps["step"])) == [("kept", 0), ("kept", 2), ("kept", 4), ("run", 4)]
    assert summary["steps"] == {"kept": [0, 2, 4], "run": [4]}
    final_kept, final_other = steps.iloc[2], steps.iloc[3]  # the same training, with and without snapshots
    assert final_kept["margin"] == pytest.approx(final_other["margin"])
    layers = pd.read_csv(tmp_path / "d" / "layers.csv")
    assert len(layers) == 4 * 2 and np.allclose(layers[[f"frac_{c}" for c in PATTERNS]].sum(axis=1), 1)
    assert not (tmp_path / "d" / "steps").exists()


def test_relevance_without_grounded_words_has_an_empty_pointing_game(tiny_probe, tmp_path):
    """An official corpus has no word-region alignment: the pointing game is NaN over 0 word-pieces, and the
    output is still written."""
    from analyses.relevance import evaluate_split
    from analyses.results import check_tables
    model, probe = tiny_probe

    class NoAlignment:
        def __init__(self, items):
            self.items = [dict(item, alignment=[]) for item in items]
            self.store = type("Store", (), {"meta": staticmethod(lambda image_id: {})})()

        def __getitem__(self, index):
            return self.items[index]

    dataset = NoAlignment(probe.chunks[0].examples)
    curves, auc, pointing = evaluate_split(model, dataset, [0, 1])
    assert list(pointing["method"]) == ["attention", "rollout", "gradient"]
    assert (pointing["word_pieces"] == 0).all() and pointing["hits"].isna().all()
    check_tables({"curves": curves, "auc": auc, "pointing": pointing}, tmp_path,
                 lambda table, column: column.endswith("_std") or table == "pointing")


def test_bad_overrides_devices_and_corpora_are_one_line(tiny_run, tiny_corpus, official_file, tmp_path, capsys):
    from analyses import dynamics
    for override in ("num_hidden_layers=three", "num_attention_heads=5", "hidden_dropout_prob=abc"):
        code, captured = _run(head_grounding, ["--checkpoint", official_file, "--corpus", tiny_corpus, *TINY_PRESET,
                                               "--override", override, "--out", tmp_path / "o"], capsys)
        assert code == 2 and "--override" in captured.err and "Traceback" not in captured.err, captured.err
        assert len(captured.err.strip().splitlines()) == 1
    code, captured = _run(dynamics, ["--run", tiny_run, "--out", tmp_path / "d", "--device", "banana"], capsys)
    assert code == 2 and "--device 'banana'" in captured.err
    code, captured = _run(head_grounding, ["--run", tiny_run, "--corpus", tmp_path / "nothing", "--out",
                                           tmp_path / "g"], capsys)
    assert code == 2 and "--corpus" in captured.err and "not a built corpus" in captured.err
    assert not (tmp_path / "o").exists() and not (tmp_path / "g").exists()
