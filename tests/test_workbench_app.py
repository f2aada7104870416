"""The Streamlit app, page by page, through streamlit.testing.v1.AppTest on a tiny trained run (the behaviour
pages too: their outputs missing, computed from the page, read and drawn).

Every page is driven through its widgets; every test also checks that no exception reached the page, including
with a missing run, a corrupt checkpoint, classifier, metrics log, statistics table or gold set.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from analyses import dynamics, goldset
from analyses.mapfile import read_maps
from analyses.patterns import PATTERNS
from workbench import loaders, plots, ui

APP = Path(__file__).resolve().parents[1] / "workbench" / "app.py"


@pytest.fixture
def open_app(workbench_env, monkeypatch):
    """open_app(page, **env) -> AppTest after its first run on `page` (views/<page>.py), with WORKBENCH_* set."""
    def make(page: str = "overview", **env) -> AppTest:
        for key, value in {**workbench_env, **env}.items():
            monkeypatch.setenv(key, str(value))
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.run()
        if page != "start":
            at.switch_page(f"views/{page}.py")
            at.run()
        return ok(at)
    return make


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    unexpected = [e.value for e in at.error if str(e.value).startswith(ui.UNEXPECTED)]
    assert not unexpected, unexpected  # the app's last-resort handler caught a bug
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def test_overview_classifies_the_chosen_examples(open_app):
    at = open_app()
    assert at.title[0].value == "Overview" and charts(at) == 2 and "Share of all maps" in texts(at.markdown)
    assert at.selectbox(key="split").value == "test" and at.selectbox(key="example").value == 0
    assert set(at.session_state["overview_examples"]) == set(range(8))
    ok(at.multiselect(key="overview_examples").set_value([1, 2]).run())
    assert charts(at) == 2 and "2 examples" in at.get("plotly_chart")[0].proto.spec
    ok(at.multiselect(key="overview_examples").set_value([]).run())
    assert "at least one example" in texts(at.info)


def test_head_explorer_steps_through_layers_and_heads(open_app):
    at = open_app("head_explorer")
    assert charts(at) == 2
    predicted = next(m.value for m in at.markdown if m.value.startswith("**Predicted pattern**"))
    assert any(f": {ui.pattern_name(p)} (p = " in predicted for p in PATTERNS)
    ok(at.button(key="head_next").click().run())
    assert at.session_state["head"] == 1
    ok(at.button(key="layer_prev").click().run())
    assert at.session_state["layer"] == 1  # wraps around: the tiny model has 2 layers
    ok(at.selectbox(key="head").set_value(3).run())
    assert "Layer 1, head 3" in at.get("plotly_chart")[0].proto.spec
    ok(at.selectbox(key="example").set_value(4).run())
    assert "Example 4" in texts(at.markdown)
    ok(at.switch_page("views/image_view.py").run())  # the choice carries over to the other pages
    assert at.selectbox(key="layer").value == 1 and at.selectbox(key="head").value == 3


def test_image_view_word_and_region_modes(open_app):
    at = open_app("image_view")
    assert charts(at) == 1 and "Attention on regions" in [m.label for m in at.metric]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["data"][0]["type"] == "image" and spec["data"][0]["source"].startswith("data:image/jpeg;base64,")
    words = at.selectbox(key="word").options
    ok(at.selectbox(key="word").set_value(len(words) - 1).run())
    ok(at.toggle(key="head_mean").set_value(True).run())
    assert "mean over heads" in at.get("plotly_chart")[0].proto.spec
    ok(at.radio(key="image_mode").set_value("Region → words").run())
    assert charts(at) == 2
    ok(at.selectbox(key="region").set_value(1).run())


def test_transport_page_compares_the_solvers(open_app):
    at = open_app("transport")
    assert charts(at) == 2
    table = at.dataframe[0].value
    assert list(table["solver"]) == ["IPOT", "POT Sinkhorn", "POT EMD"]
    assert table["L1 to IPOT"].iloc[0] == 0 and (table["transport cost"] > 0).all()
    assert table["transport cost"].iloc[2] <= table["transport cost"].min() + 1e-9  # EMD is the exact optimum
    captions = texts(at.caption)
    assert "IPOT settings of the model: β = " in captions and "Costs 1 − cos(word-piece, region)" in captions
    for solver, says in (("POT Sinkhorn", "Sinkhorn (log domain) with ε = β / iterations"), ("POT EMD", "Exact EMD")):
        ok(at.radio(key="ot_solver").set_value(solver).run())
        assert f"{solver} plan" in at.get("plotly_chart")[0].proto.spec
        assert says in texts(at.caption) and "IPOT settings of the model" not in texts(at.caption)
    assert "−0.0000" not in str([m.value for m in at.metric]) and "-0.0000" not in str([m.value for m in at.metric])
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["L1 to the IPOT plan"]) > 0
    ok(at.selectbox(key="ot_word").set_value(0).run())


def test_statistics_missing_then_exported_filtered_and_downloaded(open_app, tmp_path):
    at = open_app("statistics", WORKBENCH_STATS_ROOT=tmp_path)
    assert "No exported statistics" in texts(at.info)
    assert at.code[0].value.startswith("python -m analyses.export_stats --run ") and "--split test" in at.code[0].value
    at.number_input(key="export_limit").set_value(3)
    ok(at.button(key="export_now").click().run())
    assert (tmp_path / "tiny" / "columns.json").exists() and not at.info
    assert len(at.dataframe[0].value) == 2 * 4  # per head: 2 layers x 4 heads
    ok(at.multiselect(key="stats_layers_heads").set_value([1]).run())
    assert set(at.dataframe[0].value["layer"]) == {1}
    ok(at.radio(key="stats_table").set_value("examples").run())
    ok(at.multiselect(key="stats_heads_examples").set_value([0, 2]).run())
    assert len(at.dataframe[0].value) == 3 * 2 * 2
    ok(at.multiselect(key="stats_patterns_examples").set_value(list(PATTERNS)).run())
    assert "the per-map pattern filter does not apply to them" in texts(at.caption)
    ok(at.multiselect(key="stats_patterns_examples").set_value([]).run())
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["CSV", "PARQUET", "JSON"] + ["PNG", "SVG", "PDF"] * 3
    (tmp_path / "tiny" / "figures" / "dominant_pattern_grid.svg").unlink()  # older exports had no SVG
    ok(at.run())
    assert len(at.get("download_button")) == 12


def test_statistics_corrupt_files_give_messages(open_app, tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "columns.json").write_text("{not json")
    at = open_app("statistics", WORKBENCH_STATS_ROOT=tmp_path)
    assert "cannot be read" in texts(at.error)
    (folder / "columns.json").write_text("{}")
    (folder / "heads.parquet").write_bytes(b"garbage")
    ok(at.run())
    assert "heads.parquet" in texts(at.error) and "cannot be read" in texts(at.error)


def test_label_heads_saves_labels_and_retrains(open_app, workbench_env, tmp_path):
    classifier = tmp_path / "clf" / "clf.joblib"
    classifier.parent.mkdir()
    for suffix in (".joblib", ".json"):
        shutil.copy(Path(workbench_env["WORKBENCH_CLASSIFIER"]).with_suffix(suffix), classifier.with_suffix(suffix))
    gold = tmp_path / "gold"
    at = open_app("label_heads", WORKBENCH_GOLD_DIR=gold, WORKBENCH_CLASSIFIER=classifier)
    assert "0 labelled maps" in texts(at.markdown)
    for label in ("block", "block", "diagonal", "diagonal", "skip"):
        ok(at.button(key=f"label_{label}").click().run())
        assert "Saved map" in texts(at.success)
    table = pd.read_csv(gold / "labels.csv")
    assert list(table["label"]) == ["block", "block", "diagonal", "diagonal", "skip"]
    assert len(set(zip(table["example"], table["layer"], table["head"]))) == 5  # a new map each time
    assert [r.index for r in read_maps(gold / "maps.npz")] == list(table["index"])
    assert "5 labelled maps" in texts(at.markdown)
    at.number_input(key="retrain_synthetic").set_value(120)
    ok(at.button(key="retrain").click().run())
    assert "macro-F1" in texts(at.success)
    assert "held-out gold maps" in str(at.dataframe[-1].value["evaluated on"].iloc[0])

    (gold / "labels.csv").write_bytes(b"\xff\xfe\x00garbage")
    ok(at.run())
    assert "labels.csv" in texts(at.error)


def test_training_page_curves_evaluation_and_bad_logs(open_app, workbench_env, tmp_path):
    at = open_app("training")
    assert charts(at) >= 3 and at.metric[0].value == "6"
    table = at.dataframe[0].value
    assert "text→image R@1" in list(table["metric"]) and table["initialisation"].notna().all()
    assert "attention pointing game, layer 2 (covering region)" in list(table["metric"])  # one row per layer
    run = tmp_path / "run"
    shutil.copytree(workbench_env["WORKBENCH_RUN"], run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "task": "itm", "lo')  # a run killed while logging
    (run / "eval_test_baseline.json").write_text("[1, 2")
    at = open_app("training", WORKBENCH_RUN=run)
    assert "unreadable line" in texts(at.warning) and "eval_test_baseline.json" in texts(at.error)
    (run / "metrics.jsonl").write_text("garbage\n")
    ok(at.run())
    assert "holds no training records" in texts(at.error)


@pytest.mark.parametrize("page", ["overview", "head_explorer", "image_view", "transport", "statistics",
                                  "label_heads", "training", "importance", "grounding", "relevance", "dynamics"])
def test_missing_run_is_explained_on_every_page(open_app, tmp_path, page):
    at = open_app(page, WORKBENCH_RUN=tmp_path / "nothing")
    assert "No run at" in texts(at.info) and not at.error


def test_corrupt_checkpoint_and_classifier(open_app, workbench_env, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(workbench_env["WORKBENCH_RUN"], run)
    for weights in run.glob("checkpoints/*/model/*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    at = open_app("head_explorer", WORKBENCH_RUN=run)
    assert "cannot be loaded" in texts(at.error)
    ok(at.switch_page("views/training.py").run())  # curves need no weights
    assert charts(at) >= 3
    bad = tmp_path / "clf.joblib"
    bad.write_bytes(b"junk")
    bad.with_suffix(".json").write_text("{}")
    at = open_app("overview", WORKBENCH_CLASSIFIER=bad)
    assert "classifier cannot be loaded" in texts(at.error)


def test_official_checkpoint_source_reports_problems(open_app, tiny_corpus, tmp_path):
    at = open_app()
    ok(at.radio(key="source_kind").set_value("official").run())
    assert "No checkpoint file" in texts(at.info)
    checkpoint = tmp_path / "uniter-base.pt"
    checkpoint.write_bytes(b"0")
    at.text_input(key="ckpt_path").input(str(checkpoint))
    ok(at.text_input(key="ckpt_corpus").input(str(tiny_corpus)).run())
    assert "uniter-base.pt cannot be read as a torch state dict" in texts(at.error)  # the file, not the corpus
    ok(at.switch_page("views/training.py").run())
    assert "official checkpoint has none" in texts(at.info)


def test_official_checkpoint_whose_features_do_not_fit_the_corpus(tiny_corpus, tmp_path):
    import torch
    from uniter_core.runs import load_official_checkpoint
    from uniter_core.config import UniterConfig
    from uniter_core.errors import UserError
    from uniter_core.pretrain import UniterForPretraining
    small = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64,
             "img_dim": 2048}
    checkpoint = tmp_path / "small.pt"
    torch.save(UniterForPretraining(UniterConfig.from_preset("uniter-mini", **small)).state_dict(), checkpoint)
    with pytest.raises(UserError, match="1280-d region features but uniter-mini expects 2048"):
        load_official_checkpoint(checkpoint, tiny_corpus, "uniter-mini", **small)


# ------------------------------------------------------------------------------------------ pure parts
def test_missing_demo_run_says_how_to_make_it():
    assert "make demo" in loaders.missing_run_message("runs/pretrain-mini")


def test_gold_labels_round_trip_and_relabel(tmp_path):
    a = np.full((5, 5), 0.2, np.float32)
    where = {"run": "r", "split": "test", "example": 0, "layer": 1, "head": 2}
    assert goldset.add_gold_label(tmp_path, a, 3, 2, "block", where) == 0
    assert goldset.add_gold_label(tmp_path, a, 3, 2, "diagonal", {**where, "head": 3}) == 1
    assert goldset.add_gold_label(tmp_path, a, 3, 2, "vertical", where) == 0  # relabelled, not duplicated
    table = goldset.read_gold_labels(tmp_path)
    assert list(table["label"]) == ["vertical", "diagonal"] and len(read_maps(tmp_path / "maps.npz")) == 2
    assert goldset.labelled_keys(table) == {("r", "test", 0, 1, 2), ("r", "test", 0, 1, 3)}
    with pytest.raises(ValueError, match="unknown label"):
        goldset.add_gold_label(tmp_path, a, 3, 2, "stripes", where)


def test_plot_builders():
    heads = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "n_maps": 3,
                          "dominant_pattern": ["block", "vertical", "diagonal", "block"],
                          **{f"frac_{c}": 1 / 6 for c in PATTERNS},
                          **{f"mean_{s}": 0.5 for s in ("entropy", "cls_mass", "sep_mass", "tr", "rt")}})
    grid = plots.pattern_grid(heads)
    assert grid.data[0].z.tolist() == [[3, 0], [1, 3]] and len(grid.data) == 1 + len(PATTERNS)
    attention = np.full((6, 6), 1 / 6)
    fig = plots.attention_heatmap(attention, ["[CLS]", "a", "[SEP]", "r #0", "r #1", "r #2"], 3)
    assert [s.x0 for s in fig.layout.shapes] == [2.5, -0.5] and list(fig.layout.xaxis.ticktext)[3] == "r #0"
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20]], float)
    fig = plots.image_boxes(None, 30, 30, boxes, ["a #0", "b #1"], np.array([0.1, 0.3]), highlight=[1], truth=[0])
    assert len(fig.layout.shapes) == 3 and fig.layout.shapes[-1].line.dash == "dash"
    plan = np.full((3, 2), 1 / 6)
    fig = plots.transport_heatmap(plan, ["[CLS]", "a", "[SEP]"], ["x #0", "y #1"], {1: {0}})
    assert fig.data[1].x == (0,) and fig.data[1].y == (1,)


def test_attention_for_chosen_examples_matches_the_stream(workbench_env):
    from analyses.attention import iter_example_attention
    from uniter_core.runs import load_run

    run = load_run(workbench_env["WORKBENCH_RUN"])
    model, corpus = run.model, run.corpus
    stream = list(iter_example_attention(model, corpus, "test", max_examples=4, batch_size=3, progress=False))
    picked = list(iter_example_attention(model, corpus, "test", indices=[3, 1], progress=False))
    assert [e.layout.example for e in picked] == [3, 1]
    for example in picked:
        np.testing.assert_allclose(example.maps, stream[example.layout.example].maps, atol=1e-5)
    with pytest.raises(IndexError, match="out of range"):
        next(iter_example_attention(model, corpus, "test", indices=[99], progress=False))


def test_figures_render_svg_from_tables():
    from analyses import figures

    heads = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1],
                          "dominant_pattern": ["block", "vertical", "diagonal", "block"],
                          **{f"frac_{c}": 1 / 6 for c in PATTERNS}})
    layers = pd.DataFrame({"layer": [0, 1], **{f"frac_{c}": 1 / 6 for c in PATTERNS}})
    for name in figures.FIGURES:
        assert b"<svg" in figures.render(name, layers, heads, "svg")[:2000]
    assert figures.render("pattern_fractions_per_layer", layers, heads, "pdf").startswith(b"%PDF")


def test_many_positions_keep_readable_ticks_and_hover_names():
    labels = [f"p{i}" for i in range(60)]
    fig = plots.attention_heatmap(np.full((60, 60), 1 / 60), labels, 20, hover_labels=[f"h{i}" for i in range(60)])
    shown = list(fig.layout.xaxis.tickvals)
    assert len(shown) < 60 and shown[0] == 0 and len(shown) * plots.TICK_SPACING <= plots.HEATMAP_WIDTH_PX + \
        plots.TICK_SPACING * (shown[1] - shown[0])
    assert fig.layout.xaxis.tickfont.size >= 10 and fig.layout.yaxis.tickfont.size >= 10
    assert fig.layout.height > plots.heatmap_height(10)  # grows with the sequence
    assert fig.data[0].customdata[5][59] == "h5 → h59"  # every cell still named on hover
    few = plots.attention_heatmap(np.eye(6), labels[:6], 3)
    assert list(few.layout.xaxis.tickvals) == list(range(6))


def test_each_split_has_its_own_default_export_folder(monkeypatch, tmp_path):
    from workbench import exports

    monkeypatch.setenv("WORKBENCH_STATS_ROOT", str(tmp_path))
    source = loaders.Source("run", "runs/demo")
    assert exports.export_folder(source) == tmp_path / "demo"  # the test split, as make demo exports it
    assert exports.export_folder(source, split="val") == tmp_path / "demo-val"  # never the test split's folder
    assert exports.export_folder(source, str(tmp_path / "mine"), "val") == tmp_path / "mine"


def test_numbers_never_read_negative_zero():
    assert ui.number(-1e-9) == "0.0000" and ui.number(-1e-9, signed=True) == "±0.0000"
    assert ui.number(0.12345) == "0.1235" and ui.number(-0.5, signed=True) == "-0.5000"
    assert ui.pattern_name("vertical_diagonal") == "vertical + diagonal"
    assert ui.pattern_name("reversed_block") == "reversed block"


def test_itm_is_drawn_by_its_cross_entropy_and_wra_on_its_own():
    from workbench import compute

    steps = pd.DataFrame([
        {"step": 1, "task": "itm", "loss": -2.3, "loss_itm_xe": 0.7, "loss_itm_ot": -1.0, "wra_weight": 3.0},
        {"step": 2, "task": "mlm", "loss": 4.0},
        {"step": 3, "task": "itm", "loss": -2.5, "loss_itm_xe": 0.5, "loss_itm_ot": -1.0, "wra_weight": 3.0}])
    losses = compute.task_losses(steps)
    assert (losses["loss"] > 0).all()  # a log axis shows every curve
    assert list(losses["task"]) == ["itm (cross-entropy)", "mlm", "itm (cross-entropy)"]
    assert list(losses["loss"]) == [0.7, 4.0, 0.5]
    wra = compute.wra_terms(steps)
    assert list(wra[wra["part"] == "WRA transport cost"]["value"]) == [-1.0, -1.0]
    assert list(wra[wra["part"] != "WRA transport cost"]["value"]) == [-3.0, -3.0]  # weight x cost
    old = steps.drop(columns=["loss_itm_xe", "loss_itm_ot", "wra_weight"])  # a log of an older run
    assert list(compute.task_losses(old)["task"]) == ["itm", "mlm", "itm"] and compute.wra_terms(old).empty


def test_regions_are_named_by_the_corpus_first():
    from analyses.attention import ExampleLayout, region_objects_of

    meta = {"objects": [{"category": "moon"}, {"category": "tissue"}], "region_object": [0, 1, 0, -1]}
    assert region_objects_of(meta, 4) == ("moon", "tissue", "part of moon", "background")
    assert region_objects_of({"objects": []}, 2) == ("", "")  # an official store: the detector names them
    layout = ExampleLayout(0, "t", "i", ("[CLS]", "moon", "[SEP]"), ("switch", "quilt", "switch", "mat"),
                           np.zeros((4, 4), np.float32), region_objects_of(meta, 4))
    assert layout.labels()[3:] == ["moon #0", "tissue #1", "part of moon #2", "background #3"]
    assert layout.region_detail(0) == "moon #0 (corpus) · detector: switch"
    plain = ExampleLayout(0, "t", "i", ("[CLS]", "[SEP]"), ("dog",), np.zeros((1, 4), np.float32))
    assert plain.labels()[2:] == ["dog #0"] and not plain.names_from_corpus


def test_figures_follow_a_subset_and_fit_their_colour_scale():
    from analyses import figures

    heads = pd.DataFrame({"layer": [1, 1, 2, 2], "head": [0, 1, 0, 1], "n_maps": 3,
                          "dominant_pattern": ["block", "vertical", "diagonal", "block"],
                          **{f"frac_{c}": 0.1 for c in PATTERNS}})
    heads["frac_reversed_block"] = [0.0, 0.26, 0.1, 0.05]
    fig = figures.reversed_block_share_grid(heads)
    image = fig.axes[0].images[0]
    assert image.get_clim() == (0, 0.26)  # fitted to the largest share, not 0-1
    assert "0 – 0.26" in fig.axes[1].get_ylabel()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["1", "2"]  # the layers shown, not 0..n-1
    part = figures.dominant_pattern_grid(heads[heads["head"] == 1])
    assert [t.get_text() for t in part.axes[0].get_xticklabels()] == ["1"]


# ------------------------------------------------------------------------------------------ behaviour pages
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
