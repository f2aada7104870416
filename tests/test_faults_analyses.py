"""Fault injection over the analysis commands: damaged map files and classifiers, bad arguments, empty splits,
damaged evaluation results, and outputs that hold the user's files.

Each case calls the command's main() in-process (argparse's SystemExit caught) and checks the contract of README
"Errors and recovery": the exit code, a one-line message naming the file or argument, no traceback, user files
intact and nothing half-written.
"""
from __future__ import annotations

import json
import random
import shutil
import zipfile
from pathlib import Path

import joblib
import matplotlib
import numpy as np
import pandas as pd
import pytest
from faults import assert_failed_cleanly, call, leftovers, tree_digest
from factories import sharp_records

from analyses import classify_maps, collapse, gold, train_classifier
from analyses.classifier import metadata_path
from analyses.mapfile import MapFileError, read_maps, write_maps
from uniter_core import report
from uniter_core.io import write_json
from uniter_core.outputs import OutputError, check_output_file

matplotlib.use("Agg")


def good_maps(path: Path) -> Path:
    records, _ = sharp_records(4)
    write_maps(path, records)
    return path


# ------------------------------------------------------------------------------------------ T18: map files
def test_npz_whose_members_are_not_npy_is_refused(tmp_path, capsys):
    bad = tmp_path / "badentry.npz"
    with zipfile.ZipFile(bad, "w") as archive:
        for key in ("map_0", "n_text_0", "n_regions_0"):
            archive.writestr(f"{key}.npy", b"garbage bytes, not an npy header")
    out = tmp_path / "x.csv"
    before = tree_digest(tmp_path)
    result = call(classify_maps.main, ["--maps", bad, "--out", out], capsys)
    assert_failed_cleanly(result, 2, str(bad), ".npy")
    assert tree_digest(tmp_path) == before and not out.exists()


def test_plain_text_maps_file_is_said_not_to_be_an_npz(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("index,label\n0,block\n")
    result = call(classify_maps.main, ["--maps", text, "--out", tmp_path / "x.csv"], capsys)
    assert_failed_cleanly(result, 2, str(text), "not an .npz archive")
    assert "pickled" not in result.stderr and not (tmp_path / "x.csv").exists()


def test_damaged_npz_bytes_always_give_a_map_file_error(tmp_path):
    """Flipped, cut and overwritten bytes of a good file: read_maps either reads it or raises MapFileError (a
    zlib.error, NotImplementedError or a raw-bytes member once escaped as a traceback)."""
    data = good_maps(tmp_path / "good.npz").read_bytes()
    rng = random.Random(0)
    damaged = tmp_path / "damaged.npz"
    for trial in range(300):
        b = bytearray(data)
        if trial % 3 == 0:
            for _ in range(rng.randint(1, 5)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif trial % 3 == 1:
            b = b[:rng.randrange(len(b))]
        else:
            i = rng.randrange(len(b))
            b[i:i + rng.randint(1, 40)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        damaged.write_bytes(bytes(b))
        try:
            read_maps(damaged)
        except MapFileError as error:
            assert str(damaged) in str(error)


# ------------------------------------------------------------------------------------------ T19: classifiers
@pytest.fixture
def model_copy(model_path, tmp_path) -> Path:
    copy = tmp_path / "m" / "M.joblib"
    copy.parent.mkdir()
    shutil.copy(model_path, copy)
    shutil.copy(metadata_path(model_path), metadata_path(copy))
    return copy


def _metadata(model: Path, change) -> None:
    meta = json.loads(metadata_path(model).read_text())
    metadata_path(model).write_text(change(meta) if callable(change) else change)


DAMAGED_MODELS = {
    "not json": lambda m: _metadata(m, "{bad"),
    "a list": lambda m: _metadata(m, "[1,2]"),
    "not utf-8": lambda m: metadata_path(m).write_bytes(b"\xff\xfe{}"),
    "unknown features": lambda m: _metadata(m, lambda meta: json.dumps({**meta, "features": "nonexistent"})),
    "other classes": lambda m: _metadata(m, lambda meta: json.dumps({**meta, "classes": ["x", "y"]})),
    "features of another width": lambda m: _metadata(m, lambda meta: json.dumps({**meta, "features": "all"})),
    "a dict estimator": lambda m: joblib.dump({"not": "a model"}, m),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_MODELS))
def test_damaged_classifier_is_refused_naming_it(case, model_copy, tmp_path, capsys):
    maps = good_maps(tmp_path / "maps.npz")
    DAMAGED_MODELS[case](model_copy)
    before = tree_digest(tmp_path)
    out = tmp_path / "out.csv"
    result = call(classify_maps.main, ["--maps", maps, "--out", out, "--model", model_copy], capsys)
    assert_failed_cleanly(result, 2, str(model_copy))
    assert tree_digest(tmp_path) == before and not out.exists()


# ------------------------------------------------------------------------------------------ T20: is_own checks
SMALL = ["--n-synthetic", 60, "--n-test", 6, "--trees", 2, "--no-report"]


@pytest.mark.parametrize("content", ["5", "null", "[1, 2]", '"text"'])
def test_train_classifier_refuses_a_model_whose_metadata_is_not_an_object(content, tmp_path, capsys):
    out = tmp_path / "x" / "m1.joblib"
    out.parent.mkdir()
    out.touch()
    metadata_path(out).write_text(content + "\n")
    before = tree_digest(tmp_path)
    result = call(train_classifier.main, ["--out", out, "--gold-dir", tmp_path / "nogold", *SMALL], capsys)
    assert_failed_cleanly(result, 2, str(out))
    assert tree_digest(tmp_path) == before and not leftovers(tmp_path)


@pytest.mark.parametrize("content", ["5", "null"])
def test_train_classifier_refuses_a_report_that_is_not_an_object(content, model_copy, tmp_path, capsys):
    report_file = model_copy.with_suffix(".eval.json")
    report_file.write_text(content)
    before = tree_digest(tmp_path)
    argv = ["--out", model_copy, "--gold-dir", tmp_path / "nogold", *SMALL[:-1]]
    result = call(train_classifier.main, argv, capsys)
    assert_failed_cleanly(result, 2, str(report_file))
    assert tree_digest(tmp_path) == before


def test_check_output_file_treats_a_failing_recogniser_as_not_own(tmp_path):
    mine = tmp_path / "mine.csv"
    mine.write_text("keep")
    for error in (KeyError("x"), TypeError("x"), AttributeError("x"), RuntimeError("x")):
        def recogniser(path, error=error):
            raise error
        with pytest.raises(OutputError, match="mine.csv exists and was not written by cmd"):
            check_output_file(mine, "cmd", recogniser)
    assert mine.read_text() == "keep"


# ------------------------------------------------------------------------------------------ T21: arguments
@pytest.mark.parametrize("option, value", [("--gold-weight", "nan"), ("--gold-weight", "inf"),
                                           ("--gold-weight", "0"), ("--gold-weight", "-1"), ("--trees", "0"),
                                           ("--n-synthetic", "0"), ("--n-test", "0"), ("--seed", "-1")])
def test_train_classifier_rejects_bad_numbers(option, value, tmp_path, capsys):
    out = tmp_path / "m.joblib"
    argv = ["--out", out, "--gold-dir", tmp_path / "nogold", *SMALL, option, value]
    result = call(train_classifier.main, argv, capsys)
    assert_failed_cleanly(result, 2, option)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ T22: empty split
def test_collapse_refuses_an_empty_split(tiny_run, tiny_corpus, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus, ignore=shutil.ignore_patterns("images"))
    (corpus / "txt_db" / "test.jsonl").write_text("")
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    config = json.loads((run_dir / "train_config.json").read_text())
    config["data"]["corpus"] = str(corpus)
    write_json(run_dir / "train_config.json", config)
    before = tree_digest(tmp_path)
    out = tmp_path / "rows.json"
    result = call(collapse.main, ["--run", run_dir, "--split", "test", "--examples", 2, "--json", out], capsys)
    assert_failed_cleanly(result, 2, str(corpus / "txt_db" / "test.jsonl"), "holds no examples")
    assert tree_digest(tmp_path) == before and not out.exists()


# ------------------------------------------------------------------------------------------ T23: report
GOOD_RESULTS = {"checkpoint": "step_00000004", "candidates": 3, **{k: 0.5 for k, _ in report.ROWS}}
DAMAGED_RESULTS = {
    "truncated": b'{"checkpoint": "step_0',
    "utf-16 bytes": b"\xff\xfe{\x00}\x00",
    "missing keys": b'{"checkpoint": 1}',
    "a list": b"[1, 2]",
    "a text metric": json.dumps({**GOOD_RESULTS, "t2i_r1": "high"}).encode(),
}


@pytest.mark.parametrize("which", ["eval_test.json", "eval_test_baseline.json"])
@pytest.mark.parametrize("case", sorted(DAMAGED_RESULTS))
def test_report_of_damaged_results_names_the_file(case, which, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_json(run_dir / "eval_test.json", GOOD_RESULTS)
    write_json(run_dir / "eval_test_baseline.json", GOOD_RESULTS)
    damaged = run_dir / which
    if which.endswith("baseline.json") and case == "missing keys":
        damaged.write_bytes(json.dumps({"t2i_r1": None}).encode())  # a baseline needs no key, but numbers
    else:
        damaged.write_bytes(DAMAGED_RESULTS[case])
    before = tree_digest(tmp_path)
    result = call(report.main, ["--run", run_dir], capsys)
    assert_failed_cleanly(result, 2, str(damaged))
    assert tree_digest(tmp_path) == before


def test_report_of_good_results_prints_the_table(tmp_path, capsys):
    write_json(tmp_path / "eval_test.json", {**GOOD_RESULTS, "pointing_layer1": 0.25, "pointing_layer2": 0.75,
                                             "pointing_chance": 0.1, "pointing_rule": "covering"})
    result = call(report.main, ["--run", tmp_path], capsys)
    assert result.code == 0 and "| text→image R@1 | 0.500 | – |" in result.stdout
    assert "| attention pointing game, layer 2 (covering region) | 0.750 | – |" in result.stdout
    # an evaluation written before MLM loss, the covering rule and the cosines existed still reports
    write_json(tmp_path / "eval_test.json", {k: v for k, v in GOOD_RESULTS.items()
                                             if k in ("checkpoint", "candidates", *report.REQUIRED)})
    result = call(report.main, ["--run", tmp_path], capsys)
    assert result.code == 0 and "| MLM loss (cross-entropy per masked word-piece) | – | – |" in result.stdout


# ------------------------------------------------------------------------------------------ V6, V7: gold sample
def sample_argv(tiny_run, model_path, out, *extra):
    return ["sample", "--run", tiny_run, "--split", "test", "--n", 2, "--max-examples", 1, "--model", model_path,
            "--out", out, *extra]


@pytest.mark.parametrize("name", ["candidates.csv", "candidates.npz"])
def test_gold_sample_keeps_the_users_candidates(name, tiny_run, model_path, tmp_path, capsys):
    out = tmp_path / "gold"
    out.mkdir()
    if name == "candidates.csv":
        (out / name).write_text("index,note\n0,my own notes\n")
    else:
        np.savez(out / name, weights=np.arange(3.0))  # an .npz of the user's, not a maps file
    before = tree_digest(out)
    result = call(gold.main, sample_argv(tiny_run, model_path, out), capsys)
    assert_failed_cleanly(result, 2, str(out / name))
    assert tree_digest(out) == before and not leftovers(tmp_path)


def test_gold_sample_replaces_its_own_candidates(tiny_run, model_path, tmp_path, capsys):
    out = tmp_path / "gold"
    assert call(gold.main, sample_argv(tiny_run, model_path, out), capsys).code == 0
    first = tree_digest(out)
    result = call(gold.main, sample_argv(tiny_run, model_path, out, "--seed", 1), capsys)
    assert result.code == 0, result.stderr
    assert len(read_maps(out / "candidates.npz")) == 2 and set(tree_digest(out)) == set(first)


@pytest.mark.parametrize("option, value", [("--n", 0), ("--n", -3), ("--max-examples", 0),
                                           ("--max-examples", -1), ("--seed", -1)])
def test_gold_sample_rejects_counts_below_one(option, value, tiny_run, model_path, tmp_path, capsys):
    out = tmp_path / "gold"
    result = call(gold.main, sample_argv(tiny_run, model_path, out, option, value), capsys)
    assert_failed_cleanly(result, 2, option)
    assert not out.exists()


# ------------------------------------------------------------------------------------------ V6: gold sheets
def _user_png(path: Path) -> None:
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(1, 1))
    fig.savefig(path, format="png")  # a matplotlib PNG of the user's, not one of the command's sheets
    plt.close(fig)


@pytest.mark.parametrize("kind", ["matplotlib png", "text"])
def test_gold_sheets_keeps_the_users_sheet(kind, tmp_path, capsys):
    maps = good_maps(tmp_path / "maps.npz")
    out = tmp_path / "sheets"
    out.mkdir()
    (out / "a.txt").write_text("keep")
    if kind == "text":
        (out / "sheet_00.png").write_text("my sheet")
    else:
        _user_png(out / "sheet_00.png")
    before = tree_digest(out)
    result = call(gold.main, ["sheets", "--maps", maps, "--out", out], capsys)
    assert_failed_cleanly(result, 2, str(out / "sheet_00.png"))
    assert tree_digest(out) == before and not leftovers(tmp_path)


def test_gold_sheets_replaces_its_own_sheets(tmp_path, capsys):
    maps = good_maps(tmp_path / "maps.npz")
    out = tmp_path / "sheets"
    for _ in range(2):
        result = call(gold.main, ["sheets", "--maps", maps, "--out", out], capsys)
        assert result.code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["sheet_00.png"]
    result = call(gold.main, ["sheets", "--maps", maps, "--out", maps], capsys)  # --out is a file
    assert_failed_cleanly(result, 2, str(maps))


# ------------------------------------------------------------------------------------------ V8: gold finish
def gold_folder(tmp_path) -> Path:
    folder = tmp_path / "gold"
    records, labels = sharp_records(6)
    write_maps(folder / "candidates.npz", records)
    write_maps(folder / "maps.npz", records[:2])  # maps labelled earlier (e.g. in the workbench)
    pd.DataFrame({"index": range(6), "label": labels}).to_csv(folder / "labels.csv", index=False)
    return folder


@pytest.mark.parametrize("case", ["examples is a file", "a user's example picture", "maps.npz is a folder"])
def test_gold_finish_checks_every_output_before_writing(case, tmp_path, capsys):
    folder = gold_folder(tmp_path)
    labels = pd.read_csv(folder / "labels.csv")
    if case == "examples is a file":
        (folder / "examples").write_text("my notes")
        named = folder / "examples"
    elif case == "a user's example picture":
        (folder / "examples").mkdir()
        named = folder / "examples" / f"{labels['label'].iloc[-1]}.png"
        named.write_bytes(b"my drawing")
    else:
        (folder / "maps.npz").unlink()
        (folder / "maps.npz").mkdir()
        (folder / "maps.npz" / "mine.txt").write_text("keep")
        named = folder / "maps.npz"
    before = tree_digest(folder)
    result = call(gold.main, ["finish", "--gold", folder], capsys)
    assert_failed_cleanly(result, 2, str(named))
    assert tree_digest(folder) == before and not leftovers(tmp_path)


def test_gold_finish_replaces_its_own_pictures(tmp_path, capsys):
    folder = gold_folder(tmp_path)
    for _ in range(2):
        result = call(gold.main, ["finish", "--gold", folder], capsys)
        assert result.code == 0, result.stderr
    labels = set(pd.read_csv(folder / "labels.csv")["label"]) - {"skip"}
    assert sorted(p.name for p in (folder / "examples").iterdir()) == sorted(f"{label}.png" for label in labels)
    assert [r.index for r in read_maps(folder / "maps.npz")] == list(range(6))
