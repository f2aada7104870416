"""The behaviour pages of the app (head importance, grounding, why this match, training dynamics) through AppTest
on the tiny trained run: missing outputs explained and computed from the page, then read and drawn."""
from __future__ import annotations

from analyses import dynamics
from test_workbench_app import charts, ok, open_app, texts  # noqa: F401 - open_app is a fixture


def test_importance_page_computes_the_sweep_then_draws_it(open_app, model_path, tmp_path):
    at = open_app("importance", WORKBENCH_BEHAVIOUR_ROOT=tmp_path, WORKBENCH_CLASSIFIER=model_path)
    assert "No importance output" in texts(at.info) and "analyses.head_importance" in texts(at.code)
    ok(at.number_input(key="imp_queries").set_value(5).run())
    ok(at.button(key="importance_compute").click().run())
    assert (tmp_path / "tiny" / "importance" / "summary.json").exists()
    assert charts(at) == 2 and "Removing one head" in at.get("plotly_chart")[0].proto.spec
    ok(at.radio(key="imp_metric").set_value("mlm_loss").run())
    assert "MLM loss" in at.get("plotly_chart")[0].proto.spec and "Spearman" in texts(at.caption)


def test_grounding_page_computes_then_switches_views(open_app, model_path, tmp_path):
    at = open_app("grounding", WORKBENCH_BEHAVIOUR_ROOT=tmp_path, WORKBENCH_CLASSIFIER=model_path)
    ok(at.button(key="grounding_compute").click().run())
    assert charts(at) == 2 and at.metric[1].value != "0"
    ok(at.radio(key="gr_view").set_value("cross_modal").run())
    assert "attention to the other modality" in at.get("plotly_chart")[0].proto.spec


def test_why_this_match_explains_the_chosen_example(open_app, tmp_path):
    at = open_app("relevance", WORKBENCH_BEHAVIOUR_ROOT=tmp_path)
    assert charts(at) == 4 and 0 < float(at.metric[0].value) < 1
    assert "No relevance output" in texts(at.info)
    ok(at.radio(key="rel_method").set_value("rollout").run())
    assert "attention rollout" in at.get("plotly_chart")[0].proto.spec
    ok(at.radio(key="rel_modality").set_value("words").run())
    ok(at.selectbox(key="example").set_value(2).run())
    assert charts(at) == 4


def test_dynamics_page_reads_the_output(open_app, workbench_env, model_path, tmp_path):
    at = open_app("dynamics", WORKBENCH_BEHAVIOUR_ROOT=tmp_path)
    assert "No dynamics output" in texts(at.info)
    dynamics.dynamics(out=tmp_path / "tiny" / "dynamics", run=workbench_env["WORKBENCH_RUN"], queries=3,
                      candidates=2, grounding_examples=3, classifier=model_path, progress=False)
    ok(at.run())
    assert charts(at) >= 3 and "Steps measured" in texts(at.markdown)
    ok(at.radio(key="dyn_value").set_value("word_to_region").run())
