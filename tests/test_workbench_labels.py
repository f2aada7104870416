"""The Label heads page: labelling without the classifier's guess in sight, undoing this session's labels, and
retraining into the gold folder's own classifier (goldset.remove_gold_label / gold_classifier_file included)."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from analyses import goldset
from analyses.classifier import DEFAULT_MODEL
from analyses.mapfile import MapFileError, read_maps
from workbench import ui

APP = Path(__file__).resolve().parents[1] / "workbench" / "app.py"
MAP_TITLE = re.compile(r"Example \d+, layer \d+, head \d+")


@pytest.fixture
def label_page(workbench_env, monkeypatch, tmp_path):
    """label_page(**env) -> AppTest on the Label heads page, with a gold folder and a copy of the classifier of
    its own under tmp_path (the paths are in .gold and .classifier)."""
    classifier = tmp_path / "clf" / "clf.joblib"
    classifier.parent.mkdir()
    for suffix in (".joblib", ".json"):
        shutil.copy(Path(workbench_env["WORKBENCH_CLASSIFIER"]).with_suffix(suffix), classifier.with_suffix(suffix))

    def make(**env) -> AppTest:
        settings = {**workbench_env, "WORKBENCH_GOLD_DIR": tmp_path / "gold", "WORKBENCH_CLASSIFIER": classifier,
                    **env}
        for key, value in settings.items():
            monkeypatch.setenv(key, str(value))
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.run()
        at.switch_page("views/label_heads.py")
        ok(at.run())
        at.gold, at.classifier = Path(settings["WORKBENCH_GOLD_DIR"]), classifier
        return at
    return make


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    unexpected = [e.value for e in at.error if str(e.value).startswith(ui.UNEXPECTED)]
    assert not unexpected, unexpected
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def shown_map(at: AppTest) -> str:
    """The title of the map the page offers for labelling."""
    titles = [MAP_TITLE.search(chart.proto.spec) for chart in at.get("plotly_chart")]
    found = [t.group(0) for t in titles if t]
    assert len(found) == 1, found
    return found[0]


def gold_state(gold: Path):
    """labels.csv's bytes and maps.npz's maps, or None for a file that is not there."""
    labels = (gold / "labels.csv").read_bytes() if (gold / "labels.csv").exists() else None
    maps = ([(r.index, r.n_text, r.n_regions, r.map.tobytes()) for r in read_maps(gold / "maps.npz")]
            if (gold / "maps.npz").exists() else None)
    return labels, maps


def files(*paths: Path) -> dict:
    return {p: p.read_bytes() for p in paths if p.exists()}


# ------------------------------------------------------------------------------------------ the guess
def test_guess_is_hidden_until_asked_for(label_page):
    at = label_page()
    assert all(at.button(key=f"label_{label}").proto.type == "secondary" for label in goldset.LABELS)
    assert at.toggle(key="label_show_guess").value is False
    assert "classifier says" not in texts(at.markdown) and len(at.get("plotly_chart")) == 1  # the map alone
    assert "order comes from the classifier" in texts(at.caption)
    ok(at.toggle(key="label_show_guess").set_value(True).run())
    assert "classifier says" in texts(at.markdown) and len(at.get("plotly_chart")) == 2  # + probabilities
    assert all(at.button(key=f"label_{label}").proto.type == "secondary" for label in goldset.LABELS)
    ok(at.button(key="label_block").click().run())  # labelling keeps the choice
    assert at.toggle(key="label_show_guess").value is True and "classifier says" in texts(at.markdown)


# ------------------------------------------------------------------------------------------ undo
def test_undo_takes_back_this_sessions_labels_one_by_one(label_page):
    at = label_page()
    gold = at.gold
    assert at.button(key="label_undo").proto.disabled  # nothing to undo yet
    states, offered = [gold_state(gold)], [shown_map(at)]
    for label in ("block", "vertical", "diagonal"):
        ok(at.button(key=f"label_{label}").click().run())
        assert "Saved map" in texts(at.success)
        states.append(gold_state(gold))
        offered.append(shown_map(at))
    assert list(pd.read_csv(gold / "labels.csv")["label"]) == ["block", "vertical", "diagonal"]
    assert not at.button(key="label_undo").proto.disabled and "3 labelled maps" in texts(at.markdown)

    for step in (3, 2, 1):
        ok(at.button(key="label_undo").click().run())
        assert "unlabelled again" in texts(at.success), texts(at.error)
        assert gold_state(gold) == states[step - 1]  # labels.csv byte for byte, maps.npz map for map
        assert shown_map(at) == offered[step - 1]  # the map taken back is offered again
        assert f"{step - 1} labelled map{'' if step == 2 else 's'} " in texts(at.markdown)
    assert gold_state(gold) == (None, None)  # as before the first label: no gold set at all
    assert at.button(key="label_undo").proto.disabled

    ok(at.button(key="label_skip").click().run())  # labelling goes on from there
    assert list(pd.read_csv(gold / "labels.csv")["label"]) == ["skip"] and len(read_maps(gold / "maps.npz")) == 1


def test_undo_of_a_relabel_restores_the_earlier_label_and_keeps_the_map(label_page):
    at = label_page()
    ok(at.number_input(key="label_pool").set_value(1).run())
    gold = at.gold
    while not re.search(r"— 0 of \d+ candidates", texts(at.markdown)):  # label every map of the first example
        ok(at.button(key="label_vertical").click().run())
    assert "already labelled" in texts(at.markdown)
    before, offered = gold_state(gold), shown_map(at)
    ok(at.button(key="label_heterogeneous").click().run())  # a labelled map again: relabelled in place
    assert gold_state(gold)[1] == before[1] and "heterogeneous" in pd.read_csv(gold / "labels.csv")["label"].values
    ok(at.button(key="label_undo").click().run())
    assert "it is labelled vertical again" in texts(at.success), texts(at.error)
    assert gold_state(gold) == before and shown_map(at) == offered


def test_undo_refuses_when_the_entry_changed_meanwhile(label_page):
    at = label_page()
    gold = at.gold
    ok(at.button(key="label_block").click().run())
    ok(at.button(key="label_diagonal").click().run())
    table = pd.read_csv(gold / "labels.csv")
    table.loc[1, "label"] = "vertical"  # someone relabelled the newest map by hand
    table.to_csv(gold / "labels.csv", index=False)
    before = gold_state(gold)
    ok(at.button(key="label_undo").click().run())
    message = texts(at.error)
    assert "labels.csv" in message and "nothing was undone" in message and "\n" not in message
    assert gold_state(gold) == before
    ok(at.button(key="label_undo").click().run())  # the older label is still this session's: taken back
    assert "unlabelled again" in texts(at.success)
    assert list(pd.read_csv(gold / "labels.csv")["label"]) == ["vertical"]
    assert [r.index for r in read_maps(gold / "maps.npz")] == [1]
    assert at.button(key="label_undo").proto.disabled


def test_remove_gold_label_checks_the_entry_before_writing(tmp_path):
    a = np.full((5, 5), 0.2, np.float32)
    b = np.eye(5, dtype=np.float32)
    where = {"run": "r", "split": "test", "example": 0, "layer": 1, "head": 2}
    other = {**where, "head": 3}
    assert goldset.add_gold_label(tmp_path, a, 3, 2, "block", where) == 0
    one = gold_state(tmp_path)
    assert goldset.add_gold_label(tmp_path, b, 3, 2, "diagonal", other) == 1
    two = gold_state(tmp_path)

    for index, provenance, label, problem in ((1, where, "diagonal", "is now r test example 0 layer 1 head 3"),
                                              (1, other, "vertical", "is labelled diagonal now, not vertical"),
                                              (7, other, None, "map 7 is no longer labelled")):
        with pytest.raises(MapFileError, match=problem) as caught:
            goldset.remove_gold_label(tmp_path, index, provenance, expected_label=label)
        assert "labels.csv" in str(caught.value) and "nothing was undone" in str(caught.value)
        assert gold_state(tmp_path) == two  # nothing written

    goldset.remove_gold_label(tmp_path, 1, other, expected_label="diagonal")
    assert gold_state(tmp_path) == one

    assert goldset.add_gold_label(tmp_path, b, 3, 2, "vertical", where) == 0  # a relabel keeps map 0
    goldset.remove_gold_label(tmp_path, 0, where, expected_label="vertical", restore_label="block")
    assert gold_state(tmp_path) == one

    goldset.remove_gold_label(tmp_path, 0, where)
    assert gold_state(tmp_path) == (None, None) and tmp_path.is_dir()
    with pytest.raises(MapFileError, match="no longer labelled"):
        goldset.remove_gold_label(tmp_path, 0, where)


def test_remove_gold_label_leaves_other_entries_alone(tmp_path):
    where = {"run": "r", "split": "val", "example": 4, "layer": 0, "head": 1}
    goldset.add_gold_label(tmp_path, np.full((5, 5), 0.2, np.float32), 3, 2, "block", where)
    header = "index,label,run,split,example,layer,head\n"
    (tmp_path / "labels.csv").write_text(header + "0,block,r,val,4,0,1\n0,skip,r,val,4,0,1\n")
    with pytest.raises(MapFileError, match="labelled 2 times"):
        goldset.remove_gold_label(tmp_path, 0, where)
    (tmp_path / "labels.csv").write_text(header + "0,block,r,val,4,0,1\n5,skip,,,,,\n")  # a hand-made row
    with pytest.raises(MapFileError, match="without run, split"):
        goldset.remove_gold_label(tmp_path, 5, where)
    goldset.remove_gold_label(tmp_path, 0, where)
    assert list(pd.read_csv(tmp_path / "labels.csv")["index"]) == [5]  # the hand-made row stays
    assert not (tmp_path / "maps.npz").exists()  # map 0 was its only map


def test_each_gold_folder_has_its_own_classifier(tmp_path):
    assert goldset.gold_classifier_file(tmp_path) == tmp_path / "head_classifier.joblib"
    assert goldset.gold_classifier_file(goldset.PROJECT_GOLD) == DEFAULT_MODEL
    assert goldset.gold_classifier_file(DEFAULT_MODEL.parent.parent / "models" / ".." / "gold") == DEFAULT_MODEL


# ------------------------------------------------------------------------------------------ retrain
def test_retrain_writes_the_gold_folders_classifier_and_keeps_the_apps(label_page, tmp_path):
    at = label_page()
    gold, classifier = at.gold, at.classifier
    kept = files(classifier, classifier.with_suffix(".json"), DEFAULT_MODEL, DEFAULT_MODEL.with_suffix(".json"),
                 DEFAULT_MODEL.with_suffix(".eval.json"), DEFAULT_MODEL.with_suffix(".eval.md"))
    for label in ("block", "block", "diagonal", "diagonal", "vertical", "vertical"):
        ok(at.button(key=f"label_{label}").click().run())
    own = gold / "head_classifier.joblib"
    page = texts(at.markdown)
    assert f"Retrain writes `{own}`" in page and f"WORKBENCH_CLASSIFIER={own}" in page
    assert at.checkbox(key="retrain_replace_default").value is False  # offered, not ticked
    assert str(classifier) in at.checkbox(key="retrain_replace_default").label
    assert "No classifier trained on this gold folder yet" in texts(at.caption)
    at.number_input(key="retrain_synthetic").set_value(120)
    at.number_input(key="retrain_folds").set_value(2)
    ok(at.button(key="retrain").click().run())
    assert "macro-F1" in texts(at.success), texts(at.error)
    for suffix in (".joblib", ".json", ".eval.json", ".eval.md"):
        assert own.with_suffix(suffix).is_file()
    assert files(*kept) == kept  # the app's classifier and the project's default: byte for byte
    assert f"**Current classifier** `{own}`" in texts(at.markdown)
    assert "held-out gold maps" in str(at.dataframe[-1].value["evaluated on"].iloc[0])
    assert json.loads(own.with_suffix(".eval.json").read_text())["training"]["gold"]["n_total"] == 6

    ok(at.checkbox(key="retrain_replace_default").check().run())  # now the app's own file, said before the click
    assert f"Retrain writes `{classifier}`" in texts(at.markdown) and "the classifier the app uses" in texts(at.markdown)

    other = tmp_path / "other gold"
    ok(at.text_input(key="gold_dir").input(str(other)).run())  # another gold folder: its own file, no box
    assert f"Retrain writes `{other / 'head_classifier.joblib'}`" in texts(at.markdown)
    assert not [c for c in at.checkbox if c.key == "retrain_replace_default"]
    assert "No classifier trained on this gold folder yet" in texts(at.caption)


def test_retrain_never_replaces_the_default_classifier_unasked(label_page):
    at = label_page()
    ok(at.text_input(key="gold_dir").input(str(goldset.PROJECT_GOLD)).run())  # the committed gold set
    box = at.checkbox(key="retrain_replace_default")
    assert box.value is False and "analyses/models/head_classifier.joblib" in box.label
    assert at.button(key="retrain").proto.disabled
    assert "does not replace unasked" in texts(at.info)
    if DEFAULT_MODEL.with_suffix(".eval.json").exists():  # its committed report is the one shown
        assert "**Current classifier** `analyses/models/head_classifier.joblib`" in texts(at.markdown)
    ok(box.check().run())
    assert "Retrain writes `analyses/models/head_classifier.joblib`" in texts(at.markdown)
    assert not at.button(key="retrain").proto.disabled


def test_a_configured_gold_folder_never_offers_to_replace_the_default_classifier(label_page, monkeypatch):
    """WORKBENCH_GOLD_DIR pointing at a scratch gold set, with the app on the default classifier: Retrain trains
    that folder's own classifier and offers no box that would replace the committed default model."""
    monkeypatch.delenv("WORKBENCH_CLASSIFIER", raising=False)
    at = label_page(WORKBENCH_CLASSIFIER="")
    assert not [c for c in at.checkbox if c.key == "retrain_replace_default"]
    assert f"Retrain writes `{at.gold / 'head_classifier.joblib'}`" in texts(at.markdown)
