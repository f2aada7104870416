"""The app under hostile use: widget changes in any order, wrong values in session state, broken files.

Runs on the tiny trained run of conftest's `workbench_env`, through streamlit.testing.v1.AppTest. Every step
checks the contract: no exception reached the page, and no message is a traceback, a raw TypeError or the
app's last-resort "Unexpected error" (which means a failure no page foresaw).
"""
import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest

from analyses.patterns import PATTERNS

APP = Path(__file__).resolve().parents[1] / "workbench" / "app.py"
PAGES = ["start", "overview", "head_explorer", "image_view", "transport", "statistics", "label_heads", "training"]
BAD_WORDS = ("Traceback", "TypeError", "Unexpected error")  # the last is workbench.ui.UNEXPECTED


@pytest.fixture
def open_app(workbench_env, monkeypatch, tmp_path):
    """open_app(page, **env) -> AppTest after its first run on `page`; the gold set and statistics exports go
    to this test's own folders unless `env` says otherwise."""
    def make(page: str = "overview", **env) -> AppTest:
        env = {**workbench_env, "WORKBENCH_GOLD_DIR": tmp_path / "gold", "WORKBENCH_STATS_ROOT": tmp_path / "stats",
               **env}
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        at = clean(AppTest.from_file(str(APP), default_timeout=120).run())
        return go(at, page) if page != "start" else at
    return make


def messages(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in [*at.error, *at.warning, *at.info])


def clean(at: AppTest) -> AppTest:
    """The contract of every step: nothing raised, and no message is a traceback or an unforeseen failure."""
    assert not at.exception, [e.value for e in at.exception][:1]
    for error in at.error:
        assert not any(word in str(error.value) for word in BAD_WORDS), error.value
    return at


def go(at: AppTest, page: str) -> AppTest:
    return clean(at.switch_page(f"views/{page}.py").run())


def has(at: AppTest, kind: str, key: str) -> bool:
    """Whether the page shows widget `key` and a user could change it."""
    return any(getattr(w, "key", None) == key and not w.proto.disabled for w in at.get(kind))


def send_label(widget, label: str) -> None:
    """Make the next run receive `label` from this select box, whatever its options now are."""
    sent = WidgetState(id=widget.id, string_value=label)
    widget.__class__ = type("SentLabel", (type(widget),), {"_widget_state": property(lambda self: sent)})


class Browser:
    """Drives an AppTest as the browser does: a select box sends the label it shows, and that label changes
    only when the user picks an option or the app sends a value (set_value), not when the options alone change.
    (AppTest itself re-formats the current value with the current options, which hides stale labels.)"""

    def __init__(self, at: AppTest):
        self.at, self.labels = at, {}
        self._look()

    def _look(self) -> None:
        shown = {}
        for widget in self.at.get("selectbox"):
            if widget.proto.set_value:
                shown[widget.id] = widget.proto.raw_value
            elif widget.id in self.labels:
                shown[widget.id] = self.labels[widget.id]
            elif widget.options:
                shown[widget.id] = widget.options[widget.proto.default]
        self.labels = shown  # a widget no longer drawn is unmounted and forgets its label

    def run(self, action=None) -> AppTest:
        """Do `action(at)` (a click, a choice, a page switch), then run the app as the browser would."""
        touched = getattr(action(self.at), "id", None) if action else None
        for widget in self.at.get("selectbox"):
            if widget.id == touched:  # the user's pick, in the labels shown now
                self.labels[widget.id] = widget._widget_state.string_value
            elif widget.id in self.labels:
                send_label(widget, self.labels[widget.id])
        clean(self.at.run())
        self._look()
        return self.at


def sidebar_caption(at: AppTest) -> str:
    return "\n".join(c.value for c in at.sidebar.caption)


def page(name: str):
    return lambda at: at.switch_page(f"views/{name}.py")


def pick(key: str, value):
    return lambda at: at.selectbox(key=key).set_value(value)


def click(key: str):
    return lambda at: at.button(key=key).click()


# ------------------------------------------------------------------------------------------ the split bug
def test_split_change_then_any_click(open_app):
    """The reported bug: after test -> val the browser kept the test split's example label and sent it with
    the next click; the app read it back as a str and failed with TypeError on every page until a reload."""
    browser = Browser(open_app("head_explorer"))
    at = browser.at
    for split, other in (("val", "test"), ("test", "val")):
        browser.run(pick("example", 2))
        browser.run(pick("split", split))
        told = at.selectbox(key="example").proto.set_value
        browser.run(click("head_next"))
        browser.run(click("layer_prev"))
        browser.run(pick("head", 3))
        browser.run(pick("layer", 0))
        for name in PAGES:
            browser.run(page(name))
        assert told, "a new split must send the example's new label to the browser"
        assert at.session_state["example"] == 0  # reset: example 2 of another split is another caption
        assert f"{split} split" in sidebar_caption(at) and f"{other} split" not in sidebar_caption(at)
        browser.run(page("head_explorer"))
        assert "Example 0" in "\n".join(m.value for m in at.markdown)
    old = at.selectbox(key="example").options[4]
    browser.run(pick("split", "val"))
    send_label(at.selectbox(key="example"), old)  # worst case: a browser that missed the update anyway
    clean(at.run())
    assert at.session_state["example"] == 4 and at.selectbox(key="example").proto.set_value


def test_example_change_with_word_and_region_pickers(open_app):
    """The same trap on the Image view and Transport pages: word and region labels are the example's."""
    browser = Browser(open_app("image_view"))
    at = browser.at
    for name, key, example in (("image_view", "word", 5), ("transport", "ot_word", 1)):
        browser.run(page(name))
        browser.run(pick(key, len(at.selectbox(key=key).options) - 1))
        browser.run(pick("example", example))
        assert at.selectbox(key=key).proto.set_value
        browser.run(click("head_next") if name == "image_view" else None)
        assert 0 <= at.session_state[key] < len(at.selectbox(key=key).options)
    browser.run(page("image_view"))
    browser.run(lambda at: at.radio(key="image_mode").set_value("Region → words"))
    browser.run(pick("region", len(at.selectbox(key="region").options) - 1))
    browser.run(pick("example", 8))
    browser.run(click("layer_next"))
    assert at.get("plotly_chart")


# ------------------------------------------------------------------------------------------ random orders
def _actions(at: AppTest, rng: random.Random) -> list[tuple[str, object]]:
    """Every change the current page offers a user, as (name, action) pairs; a page switch is one of them."""
    target = rng.choice(PAGES)
    acts = [(f"page {target}", page(target))]
    if has(at, "selectbox", "split"):
        acts += [("split", lambda at: at.selectbox(key="split").set_value(rng.choice(["test", "val", "train"])))]
    for key in ("example", "layer", "head", "word", "region", "ot_word"):
        if has(at, "selectbox", key):
            size = len(at.selectbox(key=key).options)
            acts += [(key, lambda at, key=key, size=size: at.selectbox(key=key).set_value(rng.randrange(size)))]
    acts += [(key, click(key)) for key in ("layer_prev", "layer_next", "head_prev", "head_next")
             if has(at, "button", key)]
    if has(at, "toggle", "head_mean"):
        acts += [("mean", lambda at: at.toggle(key="head_mean").set_value(not at.toggle(key="head_mean").value))]
    for key in ("image_mode", "ot_solver"):
        if has(at, "radio", key):
            acts += [(key, lambda at, key=key: at.radio(key=key).set_value(rng.choice(at.radio(key=key).options)))]
    if has(at, "multiselect", "overview_examples"):
        count = len(at.selectbox(key="example").options)
        acts += [("examples", lambda at: at.multiselect(key="overview_examples").set_value(
            rng.sample(range(count), rng.randint(1, 2))))]
    return acts


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_orders_of_widget_changes(open_app, seed):
    rng = random.Random(seed)
    browser = Browser(open_app(rng.choice(PAGES[:4])))
    done = []
    for _ in range(15):
        name, action = rng.choice(_actions(browser.at, rng))
        done.append(name)
        try:
            browser.run(action)
        except AssertionError as error:
            raise AssertionError(f"after {done}: {error}") from None
        assert browser.at.title, f"after {done}: the page shows nothing"


# ------------------------------------------------------------------------------------------ session values
WRONG = {"split": 7, "example": "3: no such caption", "layer": "eleven", "head": 99, "head_mean": "yes",
         "word": -4, "region": [1], "ot_word": 2.5, "ot_solver": 3, "image_mode": None, "overview_examples": "all",
         "stats_dir": 12, "gold_dir": None, "stats_table": "nope", "label_pool": 10 ** 9}


def test_wrong_types_and_out_of_range_values_in_session_state(open_app):
    """Values set while their widgets are not drawn (an official source without a checkpoint file shows no
    split, example or head pickers), then every page with the run again."""
    at = open_app()
    clean(at.radio(key="source_kind").set_value("official").run())
    for key, value in WRONG.items():
        at.session_state[key] = value
    clean(at.run())
    assert "No checkpoint file" in messages(at)
    clean(at.radio(key="source_kind").set_value("run").run())
    assert at.session_state["split"] == "test" and at.session_state["example"] == 3
    assert at.session_state["overview_examples"] == list(range(8))
    for name in PAGES:
        go(at, name)
    assert at.session_state["layer"] == 0 and at.session_state["head"] == 0
    for key, value in {"layer": 1.0, "head": "3", "word": 10 ** 6, "overview_examples": ["2", 99, 1]}.items():
        at.session_state[key] = value
    go(at, "overview")
    assert at.session_state["overview_examples"] == [2, 1]
    go(at, "image_view")
    assert (at.session_state["layer"], at.session_state["head"]) == (1, 3)
    assert 0 <= at.session_state["word"] < len(at.selectbox(key="word").options)


# ------------------------------------------------------------------------------------------ broken inputs
def _run_copy(workbench_env, folder: Path, corpus: Path | None = None) -> Path:
    """A run folder beside the fixture's: its config (pointing at `corpus` if given), log and checkpoints."""
    source = Path(workbench_env["WORKBENCH_RUN"])
    folder.mkdir(parents=True)
    config = json.loads((source / "train_config.json").read_text())
    if corpus:
        config["data"]["corpus"] = str(corpus)
    (folder / "train_config.json").write_text(json.dumps(config))
    shutil.copy(source / "metrics.jsonl", folder / "metrics.jsonl")
    (folder / "checkpoints").symlink_to(source / "checkpoints")
    return folder


def test_run_folder_typed_that_does_not_exist(open_app, tmp_path):
    at = open_app("head_explorer")
    typed = str(tmp_path / "no-such-run")
    at.text_input(key="run_dir").input(typed)
    clean(at.run())
    for name in PAGES:
        go(at, name)
        assert f"No run at `{typed}`" in messages(at), name
    (tmp_path / "notes.txt").write_text("not a run folder")
    at.text_input(key="run_dir").input(str(tmp_path / "notes.txt"))
    clean(at.run())
    assert "is a file" in messages(at)
    at.text_input(key="run_dir").input("")  # cleared: back to the default run
    clean(at.run())
    assert at.get("plotly_chart")


def test_run_folder_whose_checkpoints_were_deleted(open_app, workbench_env, tmp_path):
    run = _run_copy(workbench_env, tmp_path / "run")
    at = open_app("head_explorer", WORKBENCH_RUN=run)
    assert at.get("plotly_chart")
    (run / "checkpoints").unlink()  # deleted while the app shows it
    for name in PAGES:
        go(at, name)
        if name != "training":
            assert "not a run folder" in messages(at) or "No exported statistics" in messages(at), name
    shutil.rmtree(run)
    for name in ("head_explorer", "training"):
        go(at, name)
        assert "No run at" in messages(at)


def test_empty_and_unreadable_splits(open_app, workbench_env, tiny_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "txt_db").mkdir(parents=True)
    for name in ("manifest.json", "img_db", "images"):
        (corpus / name).symlink_to(tiny_corpus / name)
    for name in ("meta.json", "test.jsonl"):
        (corpus / "txt_db" / name).symlink_to(tiny_corpus / "txt_db" / name)
    (corpus / "txt_db" / "val.jsonl").write_text("")
    (corpus / "txt_db" / "train.jsonl").write_text('{"text_id": "t0", "image_id": "nowhere", "input_ids": [1]}\n')
    at = open_app("head_explorer", WORKBENCH_RUN=_run_copy(workbench_env, tmp_path / "run", corpus=corpus))
    clean(at.selectbox(key="example").set_value(6).run())
    for split, expected in (("val", "holds no examples"), ("train", "split 'train' of")):
        clean(at.selectbox(key="split").set_value(split).run())
        assert expected in sidebar_caption(at)
        for name in PAGES:
            go(at, name)
            if name not in ("start", "statistics", "training"):
                assert expected in messages(at), (split, name)
    clean(at.selectbox(key="split").set_value("test").run())
    go(at, "image_view")
    assert at.get("plotly_chart")


def test_official_checkpoint_that_is_a_folder_or_garbage(open_app, tiny_corpus, tmp_path):
    at = open_app("head_explorer")
    clean(at.radio(key="source_kind").set_value("official").run())
    assert "No checkpoint file" in messages(at)
    at.text_input(key="ckpt_corpus").input(str(tiny_corpus))
    clean(at.selectbox(key="ckpt_preset").set_value("uniter-mini").run())  # the preset of 1280-d features
    clean(at.text_input(key="ckpt_path").input(str(tmp_path)).run())
    assert f"`{tmp_path}` is a folder" in messages(at)
    garbage = tmp_path / "uniter-mini.pt"
    garbage.write_bytes(b"\x00garbage, not a torch file" * 10)
    clean(at.text_input(key="ckpt_path").input(str(garbage)).run())
    for name in PAGES:
        go(at, name)
        if name not in ("statistics", "training"):
            assert f"`{garbage}` cannot be loaded" in messages(at), name


def test_corrupt_labels_csv_in_the_gold_folder(open_app, tmp_path):
    gold = tmp_path / "gold"
    gold.mkdir()
    labels = gold / "labels.csv"
    for content, problem in ((b"index,label,run,split,example,layer,head\n0,block,r,test,zero,1,2\n",
                              "line 2: column example must hold whole numbers"),
                             (b"index,label\n,block\n", "column index must hold whole numbers"),
                             (b"\x00\x01\x02", "needs columns index,label"),
                             (b'"unclosed,\n', "not a readable CSV file")):
        labels.write_bytes(content)
        at = open_app("label_heads", WORKBENCH_GOLD_DIR=gold)
        assert f"{labels}: " in messages(at) and problem in messages(at), messages(at)
    labels.unlink()
    labels.mkdir()  # a folder where the file should be
    assert "labels.csv" in messages(open_app("label_heads", WORKBENCH_GOLD_DIR=gold))
    shutil.rmtree(gold)
    gold.write_text("a file")
    assert "is a file" in messages(open_app("label_heads", WORKBENCH_GOLD_DIR=gold))


def _stats_tables(folder: Path) -> None:
    """Per-head and per-layer tables as export_stats writes them (2 layers x 2 heads), as CSV."""
    fractions = {f"frac_{c}": 1 / len(PATTERNS) for c in PATTERNS}
    pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "n_maps": 3,
                  "dominant_pattern": ["block", "vertical", "diagonal", "block"], **fractions}).to_csv(
        folder / "heads.csv", index=False)
    pd.DataFrame({"layer": [0, 1], "dominant_pattern": ["block", "diagonal"], **fractions}).to_csv(
        folder / "layers.csv", index=False)


def test_stats_folder_with_broken_files(open_app, tmp_path):
    folder = tmp_path / "stats" / "tiny"
    (folder / "figures").mkdir(parents=True)
    (folder / "columns.json").write_text(json.dumps({"tables": ["not", "a", "dict"]}))
    _stats_tables(folder)
    (folder / "layers.csv").write_text("")  # empty: no columns at all
    (folder / "examples.csv").write_text("a,b\n1,2\n")  # not an export_stats table
    at = open_app("statistics")
    assert "layers.csv` cannot be read" in messages(at)  # the figures are drawn from it
    assert len(at.dataframe[0].value) == 4
    clean(at.multiselect(key="stats_layers_heads").set_value([1]).run())
    assert len(at.dataframe[0].value) == 2
    clean(at.radio(key="stats_table").set_value("examples").run())
    assert "examples.csv` has no layer, head, pattern column" in messages(at)
    clean(at.radio(key="stats_table").set_value("layers").run())
    assert "layers.csv` cannot be read" in messages(at)
    (folder / "layers.csv").write_text("layer,dominant_pattern\n0,block\n")
    clean(at.run())
    assert "layers.csv` has no frac_vertical" in messages(at)
    _stats_tables(folder)
    (folder / "figures" / "dominant_pattern_grid.png").write_bytes(b"garbage")
    clean(at.run())  # the page draws every figure from the tables, so a damaged figure file is never shown
    assert not at.warning and len(at.get("download_button")) == 3 + 3 * 3


def test_a_damaged_newest_checkpoint_is_named_and_the_older_one_shown(open_app, workbench_env, tmp_path):
    """The app says which checkpoint it skipped and why, and which one it shows (a browser user found it silent)."""
    from uniter_core import train
    from factories import tiny_overrides
    config = json.loads((Path(workbench_env["WORKBENCH_RUN"]) / "train_config.json").read_text())
    run = tmp_path / "run"
    assert train.main(["--out", str(run), "--no-eval", *tiny_overrides(Path(config["data"]["corpus"]), steps=4,
                                                                       save_every=2)]) == 0
    weights = run / "checkpoints" / "step_00000004" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    at = open_app("head_explorer", WORKBENCH_RUN=run)
    warnings = " ".join(str(w.value) for w in at.warning)
    assert "step_00000004" in warnings and "model.safetensors" in warnings and "step_00000002" in warnings
    assert "checkpoint step_00000002" in " ".join(str(c.value) for c in at.caption)
    assert at.get("plotly_chart")
