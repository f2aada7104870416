"""The Overview page with and without an analyses.export_stats export, through AppTest on the tiny trained run.

An export made from what the page shows stands in for classifying the maps again (and must give the same grid,
bars, metrics and per-head table); one made from anything else is not used, and the page says why; without one
the page classifies with a progress bar, after a warning with the export command when that takes long.
"""
import json
import shlex
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from streamlit.delta_generator import DeltaGenerator
from streamlit.testing.v1 import AppTest

from analyses import export_stats
from analyses.attention import iter_example_attention
from analyses.train_classifier import load_classifier
from uniter_core.runs import load_run
from workbench import compute, loaders, ui
from workbench.loaders import LoadError, Source

APP = Path(__file__).resolve().parents[1] / "workbench" / "app.py"


@pytest.fixture(scope="module")
def exported(workbench_env, tmp_path_factory) -> Path:
    """A stats root holding `tiny/`, the export_stats export of the tiny run's test split with the app's classifier."""
    root = tmp_path_factory.mktemp("stats")
    export_stats.export_stats(out=root / "tiny", run=Path(workbench_env["WORKBENCH_RUN"]), split="test",
                              model=Path(workbench_env["WORKBENCH_CLASSIFIER"]), progress=False)
    return root


@pytest.fixture
def open_overview(workbench_env, monkeypatch):
    """open_overview(**env) -> AppTest after its first run on the Overview, with WORKBENCH_* set."""
    def make(**env) -> AppTest:
        for key, value in {**workbench_env, **env}.items():
            monkeypatch.setenv(key, str(value))
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.switch_page("views/overview.py")
        return ok(at.run())
    return make


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not [e.value for e in at.error], [e.value for e in at.error]
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def shown(at: AppTest) -> dict:
    """What the page shows of its result: the two figures, the metrics and the per-head table."""
    return {"charts": [c.proto.spec for c in at.get("plotly_chart")],
            "metrics": [(m.label, m.value) for m in at.metric], "heads": at.dataframe[0].value}


def same_result(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"]
    pd.testing.assert_frame_equal(a["heads"], b["heads"], check_exact=False, rtol=1e-5, atol=1e-6)
    assert len(a["charts"]) == len(b["charts"]) == 2


def fresh_cache() -> None:
    """Forget the per-example tables computed so far in this process, so that the page computes them."""
    loaders._example_table.clear()
    loaders._classified.clear()


def copy_export(exported: Path, root: Path, **source) -> Path:
    """A copy of the export under `root`/tiny whose columns.json "source" has `source` changed by hand."""
    folder = root / "tiny"
    shutil.copytree(exported / "tiny", folder)
    info = json.loads((folder / "columns.json").read_text())
    info["source"].update(source)
    (folder / "columns.json").write_text(json.dumps(info))
    return root


# ------------------------------------------------------------------------------------------ the same result
def test_aggregates_of_an_export_equal_the_computed_ones(workbench_env, exported):
    """Rows read from the export and rows computed example by example, as the page gathers them, aggregate to
    the same per-map, per-head and per-layer tables, which also equal export_stats' own heads and layers."""
    run = load_run(workbench_env["WORKBENCH_RUN"])
    classifier = load_classifier(workbench_env["WORKBENCH_CLASSIFIER"])
    rows = pd.read_parquet(exported / "tiny" / "examples.parquet")
    chosen = sorted(set(rows["example"]), reverse=True)  # every example, in another order than the export's
    computed = [compute.example_table(next(iter_example_attention(
        run.model.eval(), run.corpus, "test", indices=[i], progress=False, max_text_len=run.max_text_len,
        max_regions=run.max_regions)), classifier) for i in chosen]
    from_export = compute.overview_tables([rows[rows["example"].isin(chosen)]], chosen)
    from_model = compute.overview_tables(computed, chosen)
    for a, b in zip(from_export, from_model):
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)
    for name, table in zip(("heads", "layers"), from_export[1:]):
        pd.testing.assert_frame_equal(table, pd.read_parquet(exported / "tiny" / f"{name}.parquet"))
    mixed = compute.overview_tables([rows[rows["example"] <= 2], *computed[:-3]], chosen)
    for a, b in zip(mixed, from_model):  # part from the export, part computed: still the same
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)


def test_the_page_uses_a_matching_export_and_shows_what_computing_shows(open_overview, exported, tmp_path):
    computed = open_overview(WORKBENCH_STATS_ROOT=tmp_path)
    assert "From the export" not in texts(computed.caption) and "is not used" not in texts(computed.caption)
    at = open_overview(WORKBENCH_STATS_ROOT=exported)
    assert f"From the export `{exported / 'tiny'}` (checkpoint step_00000006, classifier clf.joblib); all 8 " \
           f"chosen examples." in texts(at.caption)
    same_result(shown(at), shown(computed))
    ok(at.multiselect(key="overview_examples").set_value([2, 1]).run())
    assert "all 2 chosen examples" in texts(at.caption) and "2 examples" in at.get("plotly_chart")[0].proto.spec
    ok(computed.multiselect(key="overview_examples").set_value([2, 1]).run())
    same_result(shown(at), shown(computed))
    ok(at.toggle(key="overview_all").set_value(True).run())  # the whole split, without a chip per example
    n = len(exported_examples(exported))  # the export holds the whole split
    assert f"all {n} chosen examples" in texts(at.caption) and f"({n} examples)" in at.get("plotly_chart")[0].proto.spec
    assert not at.multiselect and at.session_state["overview_examples"] == [2, 1]  # kept for when it is off again
    ok(at.toggle(key="overview_all").set_value(False).run())
    assert at.multiselect(key="overview_examples").value == [2, 1]


def exported_examples(exported: Path) -> set:
    return set(pd.read_parquet(exported / "tiny" / "examples.parquet")["example"])


def test_examples_an_export_does_not_cover_are_computed(open_overview, workbench_env, tmp_path):
    export_stats.export_stats(out=tmp_path / "tiny", run=Path(workbench_env["WORKBENCH_RUN"]), split="test",
                              max_examples=2, model=Path(workbench_env["WORKBENCH_CLASSIFIER"]), progress=False)
    at = open_overview(WORKBENCH_STATS_ROOT=tmp_path)
    assert "From the export" in texts(at.caption)
    assert "6 of the chosen examples it does not cover are classified here" in texts(at.caption)
    computed = open_overview(WORKBENCH_STATS_ROOT=tmp_path / "nothing")
    same_result(shown(at), shown(computed))


# ------------------------------------------------------------------------------------------ not used, and why
@pytest.mark.parametrize("edit, why", [
    ({"checkpoint": "step_00000002"}, "the export is of checkpoint step_00000002, the app shows step_00000006"),
    ({"classifier": "default"}, "the export used the classifier `default`, the app uses `"),
    ({"classifier_data_hash": "0" * 64}, "clf.joblib` was retrained on other data since the export"),
    ({"split": "val"}, "the export is of the 'val' split, the page shows 'test'"),
    ({"run": "runs/another"}, "the export is of run `runs/another`, the app shows `"),
])
def test_an_export_of_something_else_is_not_used(open_overview, exported, tmp_path, edit, why):
    root = copy_export(exported, tmp_path, **edit)
    at = open_overview(WORKBENCH_STATS_ROOT=root)
    captions = texts(at.caption)
    assert f"The export `{root / 'tiny'}` is not used: " in captions and why in captions, captions
    assert "From the export" not in captions and len(at.get("plotly_chart")) == 2


def test_a_classifier_retrained_after_the_export_is_noticed(open_overview, workbench_env, tmp_path):
    """Same file, same training data (so the same hash), but trained again after the export: not used."""
    model = tmp_path / "clf" / "clf.joblib"
    shutil.copytree(Path(workbench_env["WORKBENCH_CLASSIFIER"]).parent, model.parent)
    export_stats.export_stats(out=tmp_path / "stats" / "tiny", run=Path(workbench_env["WORKBENCH_RUN"]),
                              split="test", model=model, progress=False)
    at = open_overview(WORKBENCH_STATS_ROOT=tmp_path / "stats", WORKBENCH_CLASSIFIER=model)
    assert "From the export" in texts(at.caption)
    metadata = json.loads(model.with_suffix(".json").read_text())
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    model.with_suffix(".json").write_text(json.dumps({**metadata, "created": later.isoformat(timespec="seconds")}))
    ok(at.run())
    assert "clf.joblib` was retrained after the export" in texts(at.caption)


def test_a_split_rebuilt_since_the_export_is_noticed(exported):
    table = pd.read_parquet(exported / "tiny" / "examples.parquet")
    ids = list(table.drop_duplicates("example")["text_id"])
    maps = int((table["example"] == 0).sum())
    assert compute.export_coverage(table, ids, maps) == (frozenset(range(len(ids))), "")
    examples, why = compute.export_coverage(table, [ids[1], ids[0], *ids[2:]], maps)
    assert not examples and f"example 0 of the export is caption {ids[0]}, in the split it is {ids[1]}" in why
    assert "the split has 2 examples" in compute.export_coverage(table, ids[:2], maps)[1]
    assert f"holds {maps - 1} maps of example 0" in compute.export_coverage(table.iloc[1:], ids, maps)[1]


# ------------------------------------------------------------------------------------------ computing
def test_computing_shows_progress_warns_when_long_and_offers_the_export(open_overview, tmp_path, monkeypatch):
    updates = []
    start, step = st.progress, DeltaGenerator.progress

    def started(value, text=None, **kwargs):
        updates.append(text)
        return start(value, text=text, **kwargs)

    def stepped(self, value, text=None, **kwargs):
        updates.append(text)
        return step(self, value, text=text, **kwargs)

    monkeypatch.setattr(st, "progress", started)
    monkeypatch.setattr(DeltaGenerator, "progress", stepped)
    monkeypatch.setattr(compute, "OVERVIEW_LONG", 1)  # the page shows 8 examples of the tiny split
    fresh_cache()
    at = open_overview(WORKBENCH_STATS_ROOT=tmp_path)
    assert updates[0] == "Classifying the attention maps: 0 / 8 examples"
    assert updates[1].startswith("Classifying the attention maps: 1 / 8 examples · about ") and "left" in updates[1]
    assert updates[-1] == "Classifying the attention maps: 8 / 8 examples"
    assert not at.get("progress")  # gone once done
    assert "Classifying 8 examples took" in texts(at.info)
    command = at.code[0].value
    assert command.startswith("python -m analyses.export_stats --run ") and "--split test --model " in command
    updates.clear()
    ok(at.run())  # computed once: no bar, no warning
    assert not updates and not at.info and not at.warning
    assert export_stats.main(shlex.split(command)[3:] + ["--no-progress"]) == 0  # the command the page offers
    ok(at.run())
    assert "From the export" in texts(at.caption) and (tmp_path / "tiny" / "columns.json").exists()


def test_example_seconds_and_cached_examples_are_known(open_overview, workbench_env, tmp_path):
    fresh_cache()
    open_overview(WORKBENCH_STATS_ROOT=tmp_path)
    loaded = loaders.load(Source("run", workbench_env["WORKBENCH_RUN"]))
    assert all(loaders.example_table_cached(loaded, "test", i) for i in range(8))
    assert not loaders.example_table_cached(loaded, "val", 0)
    assert loaders.example_seconds(loaded) > 0


def test_durations_and_progress_lines():
    assert [compute.duration(s) for s in (0.4, 42, 200, 1500, 3700)] == ["1 s", "42 s", "3 min 20 s", "25 min",
                                                                          "1 h 1 min"]
    assert compute.progress_text(2, 5, 61) == "Classifying the attention maps: 2 / 5 examples · about 1 min 1 s left"
    assert compute.progress_text(5, 5, 0) == "Classifying the attention maps: 5 / 5 examples"


# ------------------------------------------------------------------------------------------ empty paths
@pytest.mark.parametrize("typed", ["", "   "])
def test_an_empty_checkpoint_path_says_what_to_enter(typed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working directory is not the checkpoint
    with pytest.raises(LoadError, match="No checkpoint file chosen: type the path of an official UNITER") as error:
        loaders.load(Source("official", typed, "data/official"))
    assert error.value.missing and "``" not in str(error.value)
    with pytest.raises(LoadError, match="No run folder chosen"):
        loaders.load(Source("run", typed))
    checkpoint = tmp_path / "uniter-base.pt"
    checkpoint.write_bytes(b"0")
    with pytest.raises(LoadError, match="No corpus folder chosen"):
        loaders.load(Source("official", str(checkpoint), typed))


def test_an_empty_checkpoint_path_on_the_page(open_overview):
    at = open_overview()
    ok(at.radio(key="source_kind").set_value("official").run())
    ok(at.text_input(key="ckpt_path").input("   ").run())
    assert "No checkpoint file chosen" in texts(at.info) and "``" not in texts(at.info)
    assert not [e for e in at.error if str(e.value).startswith(ui.UNEXPECTED)]
