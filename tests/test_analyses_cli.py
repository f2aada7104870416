"""Command-line tools: classify_maps (good and bad files), train_classifier (with and without gold), export_stats."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from analyses import classify_maps, collapse, export_stats, train_classifier
from analyses.mapfile import read_maps, write_maps
from analyses.patterns import HEAD_STATS, PATTERNS
from factories import sharp_records
from uniter_core.config import UniterConfig
from uniter_core.data.dataset import ImageTextDataset, collate
from uniter_core.errors import UserError
from uniter_core.io import write_json
from uniter_core.pretrain import UniterForPretraining
from uniter_core.runs import load_run


def run(module, argv, capsys):
    try:
        code = module.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def test_classify_maps_good_file(tmp_path, model_path, capsys):
    records, labels = sharp_records()
    write_maps(tmp_path / "maps.npz", records)
    code, _ = run(classify_maps, ["--maps", tmp_path / "maps.npz", "--out", tmp_path / "out.csv",
                                  "--model", model_path], capsys)
    assert code == 0
    table = pd.read_csv(tmp_path / "out.csv")
    assert list(table.columns) == ["index", "label"] + [f"p_{c}" for c in PATTERNS]
    assert list(table["index"]) == list(range(12))
    np.testing.assert_allclose(table[[f"p_{c}" for c in PATTERNS]].sum(axis=1), 1, atol=1e-4)
    assert (table["label"] == labels).mean() >= 0.9


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def bad_files(tmp):
    eye = np.eye(6, dtype=np.float32)
    ok = {"map_0": eye, "n_text_0": np.int64(3), "n_regions_0": np.int64(3)}
    nan, neg = eye.copy(), eye.copy()
    nan[1, 1] = np.nan
    neg[2, 2], neg[2, 3] = -0.5, 1.5
    (tmp / "text.npz").write_text("hello")
    np.save(tmp / "single.npy", eye)
    return {
        "missing": (tmp / "nosuch.npz", "no such file"),
        "not npz": (tmp / "text.npz", "not a readable .npz"),
        "npy": (tmp / "single.npy", "not an .npz archive"),
        "missing key": (_npz(tmp / "nokey.npz", map_0=eye, n_text_0=np.int64(3)), "n_regions_0 is missing"),
        "no maps": (_npz(tmp / "empty.npz", other=eye), "unexpected array"),
        "non-square": (_npz(tmp / "rect.npz", **{**ok, "map_0": np.ones((6, 5), np.float32) / 5}), "not a square"),
        "sizes": (_npz(tmp / "sizes.npz", **{**ok, "n_text_0": np.int64(4)}), "n_text 4 + n_regions 3"),
        "nan": (_npz(tmp / "nan.npz", **{**ok, "map_0": nan}), "NaN"),
        "negative": (_npz(tmp / "neg.npz", **{**ok, "map_0": neg}), "negative"),
        "rows": (_npz(tmp / "rows.npz", **{**ok, "map_0": eye * 2}), "sums to 2"),
    }


@pytest.mark.parametrize("case", ["missing", "not npz", "npy", "missing key", "no maps", "non-square", "sizes",
                                  "nan", "negative", "rows"])
def test_classify_maps_bad_files(case, tmp_path, model_path, capsys):
    path, problem = bad_files(tmp_path)[case]
    out = tmp_path / "out.csv"
    code, captured = run(classify_maps, ["--maps", path, "--out", out, "--model", model_path], capsys)
    assert code == 2
    err = captured.err.strip()
    assert err.startswith("error: ") and str(path) in err and problem in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))


def test_classify_maps_bad_model(tmp_path, capsys):
    records, _ = sharp_records(6)
    write_maps(tmp_path / "maps.npz", records)
    code, captured = run(classify_maps, ["--maps", tmp_path / "maps.npz", "--out", tmp_path / "o.csv",
                                         "--model", tmp_path / "none.joblib"], capsys)
    assert code == 2 and "no saved classifier" in captured.err and not (tmp_path / "o.csv").exists()


@pytest.mark.slow
def test_train_classifier_synthetic_only_and_with_gold(tmp_path, capsys):
    small = ["--n-synthetic", 120, "--n-test", 30, "--trees", 10]
    out = tmp_path / "m" / "clf.joblib"
    code, captured = run(train_classifier, ["--gold-dir", tmp_path / "nogold", "--out", out, *small], capsys)
    assert code == 0 and "No gold set" in captured.out
    report = json.loads(out.with_suffix(".eval.json").read_text())
    assert report["note"].startswith("No gold set") and "synthetic" in report["evaluations"][0]["description"]
    ev = report["evaluations"][0]
    assert set(ev["classifier"]["per_class"]) == set(PATTERNS) and len(ev["rules"]["confusion"]) == 6
    assert "macro-F1" in out.with_suffix(".eval.md").read_text() and out.with_suffix(".json").exists()

    gold = tmp_path / "gold"
    records, labels = sharp_records(24, seed=4)
    write_maps(gold / "maps.npz", records)
    pd.DataFrame({"index": range(24), "label": labels, "labeller": "test"}).to_csv(gold / "labels.csv", index=False)
    code, captured = run(train_classifier, ["--gold-dir", gold, "--out", out, *small, "--gold-folds", 1], capsys)
    assert code == 0
    report = json.loads(out.with_suffix(".eval.json").read_text())
    assert report["note"] == "" and "gold" in report["evaluations"][0]["description"]
    assert report["evaluations"][0]["n"] == 12 and report["training"]["gold"]["n_train"] == 12
    assert report["metadata"]["n_train"] == 132

    # cross-validation: every gold map is scored by a model that did not see it; the saved model sees them all
    code, captured = run(train_classifier, ["--gold-dir", gold, "--out", out, *small, "--gold-folds", 3], capsys)
    assert code == 0, captured.err
    report = json.loads(out.with_suffix(".eval.json").read_text())
    first = report["evaluations"][0]
    assert "3-fold cross-validation" in first["description"] and first["n"] == 24
    assert sum(map(sum, first["classifier"]["confusion"])) == 24 and report["metadata"]["n_train"] == 144
    code, captured = run(train_classifier, ["--gold-dir", gold, "--out", out, *small, "--gold-folds", 5], capsys)
    assert code == 2 and "fewer than --gold-folds 5" in captured.err

    pd.DataFrame({"index": [0], "label": ["diagonalish"]}).to_csv(gold / "labels.csv", index=False)
    code, captured = run(train_classifier, ["--gold-dir", gold, "--out", out, *small], capsys)
    assert code == 2 and "unknown label 'diagonalish'" in captured.err


# ------------------------------------------------------------------------------------------- export_stats
def test_load_run(tiny_run, tiny_corpus):
    run = load_run(tiny_run)
    assert run.corpus == tiny_corpus and run.model.config.num_hidden_layers == 2
    assert run.config.data.max_regions == run.max_regions == 100 and run.checkpoint.parent.name == "checkpoints"
    with pytest.raises(UserError, match="not a run folder"):
        load_run(tiny_run.parent / "nothing")


def test_export_stats_schemas(tiny_run, model_path, tmp_path, capsys):
    out = tmp_path / "stats"
    code, captured = run(export_stats, ["--run", tiny_run, "--split", "test", "--out", out, "--max-examples", 5,
                                        "--batch-size", 2, "--model", model_path, "--no-progress"], capsys)
    assert code == 0, captured.err
    sidecar = json.loads((out / "columns.json").read_text())
    assert "[CLS]" in sidecar["layout"] and sidecar["source"]["split"] == "test"
    expected_rows = {"examples": 5 * 2 * 4, "heads": 2 * 4, "layers": 2}
    for name, rows in expected_rows.items():
        parquet = pd.read_parquet(out / f"{name}.parquet")
        csv = pd.read_csv(out / f"{name}.csv")
        records = json.loads((out / f"{name}.json").read_text())
        assert len(parquet) == len(csv) == len(records) == rows
        columns = list(sidecar["tables"][name]["columns"])
        assert list(parquet.columns) == list(csv.columns) == list(records[0]) == columns
        assert sidecar["tables"][name]["rows"] == rows
    examples = pd.read_parquet(out / "examples.parquet")
    for col in ("example", "layer", "head", "n_text", "n_regions"):
        assert examples[col].dtype == np.int64
    for col in [f"p_{c}" for c in PATTERNS] + list(HEAD_STATS):
        assert examples[col].dtype == np.float64
    assert set(examples["pattern"]) <= set(PATTERNS) and sorted(examples["example"].unique()) == list(range(5))
    np.testing.assert_allclose(examples["mi_text"] + examples["mi_region"], 1, atol=1e-5)
    np.testing.assert_allclose(examples["tt"] + examples["tr"], 1, atol=1e-5)
    heads = pd.read_parquet(out / "heads.parquet")
    np.testing.assert_allclose(heads[[f"frac_{c}" for c in PATTERNS]].sum(axis=1), 1)
    assert set(heads["dominant_pattern"]) <= set(PATTERNS) and (heads["n_maps"] == 5).all()
    for fig in ("pattern_fractions_per_layer", "dominant_pattern_grid", "reversed_block_share_grid"):
        for fmt in ("png", "pdf"):
            assert (out / "figures" / f"{fig}.{fmt}").stat().st_size > 1000


def test_export_stats_reports_a_bad_run(tmp_path, capsys):
    code, captured = run(export_stats, ["--run", tmp_path / "nope", "--out", tmp_path / "s"], capsys)
    assert code == 2 and "not a run folder" in captured.err and not (tmp_path / "s").exists()


def test_gold_format_round_trip(tmp_path):
    records, _ = sharp_records(3)
    write_maps(tmp_path / "maps.npz", records)
    back = read_maps(tmp_path / "maps.npz")
    assert [(r.index, r.n_text, r.n_regions) for r in back] == [(r.index, r.n_text, r.n_regions) for r in records]
    np.testing.assert_array_equal(back[1].map, records[1].map)


# ------------------------------------------------------------------------------------------- gold-set tools
def test_gold_agree_reports_kappa_and_merges_by_majority(tmp_path, capsys):
    from analyses import gold

    first = ["vertical", "block", "diagonal", "block", "vertical", "heterogeneous"]
    second = ["vertical", "diagonal", "diagonal", "heterogeneous", "vertical", "heterogeneous"]
    files = []
    for name, labels in (("a", first), ("b", second), ("c", {1: "block", 3: "vertical"})):
        rows = labels.items() if isinstance(labels, dict) else enumerate(labels)
        files.append(tmp_path / f"{name}.csv")
        files[-1].write_text("index,label\n" + "".join(f"{i},{label}\n" for i, label in rows))
    observed = 4 / 6  # Cohen's kappa by its definition, from the two lists' label frequencies
    classes = set(first) | set(second)
    expected = sum(first.count(c) * second.count(c) for c in classes) / 36
    kappa = (observed - expected) / (1 - expected)
    code, out = run(gold, ["agree", "--labels", *files, "--out", tmp_path / "merged.csv"], capsys)
    assert code == 0, out.err
    assert f"agree on 4 (66.7%), Cohen's kappa {kappa:.3f}" in out.out
    assert "map 1: block / diagonal" in out.out and "map 3: block / heterogeneous" in out.out
    merged = pd.read_csv(tmp_path / "merged.csv")
    assert merged["label"].tolist() == ["vertical", "block", "diagonal", "skip", "vertical", "heterogeneous"]
    assert merged.loc[1, "labeller"] == "majority of three" and merged.loc[3, "labeller"] == "no majority of three"
    # a rerun may replace its own output, never a file of the user's; a third file must cover every disagreement
    assert run(gold, ["agree", "--labels", *files[:2], "--out", tmp_path / "merged.csv"], capsys)[0] == 0
    code, out = run(gold, ["agree", "--labels", *files[:2], "--out", files[2]], capsys)
    assert code == 2 and "was not written by gold agree" in out.err
    (tmp_path / "c.csv").write_text("index,label\n1,block\n")
    code, out = run(gold, ["agree", "--labels", *files], capsys)
    assert code == 2 and "index 3, where the first two disagree, is not labelled" in out.err
    code, out = run(gold, ["agree", "--labels", files[0], tmp_path / "c.csv"], capsys)
    assert code == 2 and "index 0 is not labelled" in out.err and "Traceback" not in out.err
    # inputs are never outputs, one file is not two annotators, a header alone labels nothing
    merged = tmp_path / "merged.csv"
    code, out = run(gold, ["agree", "--labels", merged, files[1], "--out", merged], capsys)
    assert code == 2 and "is also one of the --labels files" in out.err
    code, out = run(gold, ["agree", "--labels", files[0], files[0]], capsys)
    assert code == 2 and "the same file is given twice" in out.err
    for name in ("h1.csv", "h2.csv"):
        (tmp_path / name).write_text("index,label\n")
    code, out = run(gold, ["agree", "--labels", tmp_path / "h1.csv", tmp_path / "h2.csv"], capsys)
    assert code == 2 and "labels no maps" in out.err and "Traceback" not in out.err
    code, out = run(gold, ["agree", "--labels", tmp_path, files[1]], capsys)
    assert code == 2 and "is a folder" in out.err


def test_gold_sample_sheets_and_finish(tiny_run, model_path, tmp_path, capsys):
    from analyses import gold
    out = tmp_path / "gold"
    code, captured = run(gold, ["sample", "--run", tiny_run, "--split", "test", "--n", 12, "--max-examples", 3,
                                "--model", model_path, "--out", out], capsys)
    assert code == 0, captured.err
    candidates = read_maps(out / "candidates.npz")
    provenance = pd.read_csv(out / "candidates.csv")
    assert len(candidates) == len(provenance) == 12 and list(provenance["index"]) == list(range(12))
    assert not provenance.duplicated(["example", "layer", "head"]).any()
    assert "label" not in provenance.columns  # the classifier's suggestion is never written down
    for record, row in zip(candidates, provenance.itertuples()):
        assert (record.n_text, record.n_regions) == (row.n_text, row.n_regions)
    code, captured = run(gold, ["sheets", "--maps", out / "candidates.npz", "--out", tmp_path / "sheets"], capsys)
    assert code == 0 and sorted(p.name for p in (tmp_path / "sheets").iterdir()) == ["sheet_00.png"]
    labels = provenance.head(4).assign(label=["block", "vertical", "skip", "block"])
    labels.to_csv(out / "labels.csv", index=False)
    code, captured = run(gold, ["finish", "--gold", out], capsys)
    assert code == 0, captured.err
    assert [r.index for r in read_maps(out / "maps.npz")] == [0, 1, 2, 3]
    assert sorted(p.name for p in (out / "examples").iterdir()) == ["block.png", "vertical.png"]
    x, y = train_classifier.load_gold(out)
    assert sorted(y) == ["block", "block", "vertical"]  # skip is kept in the file but not trained on
    labels.assign(label=["block", "vertical", "skip", "blocky"]).to_csv(out / "labels.csv", index=False)
    code, captured = run(gold, ["finish", "--gold", out], capsys)
    assert code == 2 and "label 'blocky' is not one of" in captured.err


def test_bench_extract_prints_the_overhead(tiny_run, model_path, capsys):
    from analyses import bench_extract
    code, captured = run(bench_extract, ["--run", tiny_run, "--examples", 4, "--batch-size", 2, "--rounds", 1,
                                         "--model", model_path], capsys)
    assert code == 0, captured.err
    assert "4 test examples" in captured.out and "overhead (analysis - bare) / bare" in captured.out
    code, captured = run(bench_extract, ["--run", tiny_run.parent / "missing"], capsys)
    assert code == 2 and "not a run folder" in captured.err


def test_default_classifier_is_retrained_when_missing_or_stale_without_touching_the_report(tmp_path, monkeypatch):
    from analyses import classifier as classifier_module
    default = tmp_path / "models" / "head_classifier.joblib"
    monkeypatch.setattr(train_classifier, "DEFAULT_MODEL", default)
    real_train = train_classifier.train_classifier
    calls = []

    def small_train(**kwargs):  # the real training, on a small synthetic set and without the repository's gold set
        calls.append(kwargs)
        return real_train(**{**kwargs, "n_synthetic": 120, "n_test": 30, "trees": 5,
                             "gold_dir": tmp_path / "nogold"})

    monkeypatch.setattr(train_classifier, "train_classifier", small_train)
    report = default.with_suffix(".eval.md")
    report.parent.mkdir(parents=True)
    report.write_text("committed report")
    first = train_classifier.load_classifier()
    assert len(calls) == 1 and calls[0]["write_report"] is False and first.metadata["n_train"] == 120
    train_classifier.load_classifier()
    assert len(calls) == 1  # current: loaded, not retrained
    meta = classifier_module.metadata_path(default)
    meta.write_text(meta.read_text().replace('"feature_version": ', '"feature_version": 0, "old": '))
    train_classifier.load_classifier()
    assert len(calls) == 2  # stale feature version: retrained
    assert report.read_text() == "committed report"


# ------------------------------------------------------------------------------------------- collapse
def test_collapse_cli_reports_every_layer(tiny_run, tmp_path, capsys):
    out = tmp_path / "geometry.json"
    code, captured = run(collapse, ["--run", tiny_run, "--split", "test", "--examples", 4, "--json", out,
                                    "--checkpoint", "step_00000001"], capsys)
    assert code == 0, captured.err
    rows = json.loads(out.read_text())
    assert [r["layer"] for r in rows] == [0, 1, 2]  # embeddings + 2 layers
    assert "word_to_regions" not in rows[0] and all(0 <= r["cls_to_regions"] <= 1 for r in rows[1:])
    assert all(-1 <= r[c] <= 1 for r in rows for c in ("word_word", "region_region", "word_region"))
    assert "word_region" in captured.out
    # grounding per layer: the evaluation's alignment measure on every layer's states, chance in the header
    assert all(0 <= r["word_box_ot"] <= 1 and r["grounded_words"] == rows[0]["grounded_words"] > 0 for r in rows)
    assert f"{rows[0]['grounded_words']} grounded word-pieces" in captured.out
    code, captured = run(collapse, ["--run", tiny_run, "--checkpoint", "step_00000999"], capsys)
    assert code == 2 and "step_00000999" in captured.err
    code, captured = run(collapse, ["--run", tiny_run, "--examples", 0], capsys)
    assert code == 2 and "--examples" in captured.err


def test_collapse_of_the_initialisation_rebuilds_the_seeded_model(tiny_run, tmp_path, capsys):
    """--checkpoint init: the model uniter_core.train starts from (its config, seeded with run.seed)."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    config = json.loads((run_dir / "train_config.json").read_text())
    config["model"]["init"], config["run"]["seed"] = "random", 5
    write_json(run_dir / "train_config.json", config)
    rows = []
    for _ in range(2):
        code, captured = run(collapse, ["--run", run_dir, "--split", "test", "--examples", 3, "--checkpoint", "init",
                                        "--json", tmp_path / "rows.json"], capsys)
        assert code == 0, captured.err
        rows.append(json.loads((tmp_path / "rows.json").read_text()))
    assert rows[0] == rows[1]
    torch.manual_seed(5)
    model = UniterForPretraining(UniterConfig.from_preset("uniter-mini", **config["model"]["overrides"]))
    dataset = ImageTextDataset(config["data"]["corpus"], "test")
    examples = [dataset[i] for i in range(3)]
    expected = collapse.layer_geometry(model.uniter.eval(), collate(examples), examples)
    assert [row.keys() for row in rows[0]] == [row.keys() for row in expected]
    for got, want in zip(rows[0], expected):
        assert got == pytest.approx(want)
    newest = collapse.layer_geometry(load_run(run_dir).model.uniter.eval(), collate(examples), examples)
    assert rows[0][-1]["word_word"] != pytest.approx(newest[-1]["word_word"])  # not the trained checkpoint


def test_collapse_measures_identical_states_and_uniform_attention(tiny_run, tiny_corpus):
    """Last layer's output LayerNorm with zero gain: every state is its bias (all cosines 1). Zero queries and
    keys: attention is uniform, so each row's share on the other modality is that modality's share of tokens."""
    model = load_run(tiny_run).model
    uniter = model.uniter.eval()
    with torch.no_grad():
        last = uniter.encoder.layer[-1].output.LayerNorm
        last.weight.zero_()
        last.bias.uniform_(0.5, 1.0)
        for layer in uniter.encoder.layer:
            for linear in (layer.attention.self.query, layer.attention.self.key):
                linear.weight.zero_()
                linear.bias.zero_()
    dataset = ImageTextDataset(tiny_corpus, "test")
    batch = collate([dataset[i] for i in range(3)])
    rows = collapse.layer_geometry(uniter, batch)
    for column in ("word_word", "region_region", "word_region"):
        assert rows[-1][column] == pytest.approx(1.0, abs=1e-5)
        assert rows[0][column] < 0.999
    spans = list(zip(batch["txt_lens"], batch["num_bbs"]))
    region_share = sum(n / (t + n) for t, n in spans) / len(spans)
    for row in rows[1:]:
        assert row["word_to_regions"] == pytest.approx(region_share, abs=1e-5)
        assert row["cls_to_regions"] == pytest.approx(region_share, abs=1e-5)
        assert row["region_to_text"] == pytest.approx(1 - region_share, abs=1e-5)
