"""Fault injection for the readers: every damaged input file raises one of the project's errors naming the file
(and line / image id / key), and commands turn it into one `error:` line and exit code 2, never a traceback or a
SIGBUS. Each test damages a copy of the shared tiny corpus (or a file it writes itself), never the shared one."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from faults import assert_failed_cleanly, command_env, run
from uniter_core.data.store import FeatureStore, StoreError
from uniter_core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus(tiny_corpus, tmp_path) -> Path:
    """A private copy of the tiny corpus (without its images) that a test may damage."""
    out = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, out, ignore=shutil.ignore_patterns("images"))
    return out


def shard_rows(corpus: Path, shard: int) -> list[dict]:
    return json.loads((corpus / "img_db" / f"shard_{shard:05d}.json").read_text())


def raises_naming(error_type, call, *names):
    """call() raises error_type (a UserError) whose one-line message names every one of `names`."""
    with pytest.raises(error_type) as info:
        call()
    assert isinstance(info.value, UserError), type(info.value).__mro__
    message = str(info.value)
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, f"{name!r} not named in: {message}"
    return message


# ------------------------------------------------------------------------------------------ feature store

def test_manifest_not_json_or_lacking_keys(corpus):
    manifest = corpus / "img_db" / "manifest.json"
    good = json.loads(manifest.read_text())
    manifest.write_text(manifest.read_text()[:40])
    raises_naming(StoreError, lambda: FeatureStore(corpus / "img_db"), manifest, "line")
    manifest.write_text(json.dumps({k: v for k, v in good.items() if k != "num_shards"}))
    raises_naming(StoreError, lambda: FeatureStore(corpus / "img_db"), manifest, "num_shards")
    manifest.write_text(json.dumps({**good, "feature_dim": "1280"}))
    raises_naming(StoreError, lambda: FeatureStore(corpus / "img_db"), manifest, "feature_dim")


@pytest.mark.parametrize("damage", ["missing", "not json", "not a list"])
def test_shard_index_missing_or_unreadable(corpus, damage):
    path = corpus / "img_db" / "shard_00001.json"
    if damage == "missing":
        path.unlink()
    elif damage == "not json":
        path.write_text(path.read_text()[:-30])
    else:
        path.write_text(json.dumps({"image_id": "x", "start": 0, "n_regions": 3}))
    raises_naming(StoreError, lambda: FeatureStore(corpus / "img_db"), path)


@pytest.mark.parametrize("damage", ["no image_id", "start a string", "zero regions", "overlap", "out of range",
                                    "duplicate id"])
def test_shard_rows_are_checked(corpus, damage):
    path = corpus / "img_db" / "shard_00001.json"
    rows = shard_rows(corpus, 1)
    if damage == "no image_id":
        del rows[2]["image_id"]
    elif damage == "start a string":
        rows[2]["start"] = str(rows[2]["start"])
    elif damage == "zero regions":
        rows[2]["n_regions"] = 0
    elif damage == "overlap":
        rows[2]["start"] -= 1
    elif damage == "out of range":
        rows[-1]["start"] += 3
    else:
        rows[2]["image_id"] = shard_rows(corpus, 0)[0]["image_id"]
    path.write_text(json.dumps(rows))
    raises_naming(StoreError, lambda: FeatureStore(corpus / "img_db"), path)


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "float32", "too few rows", "wrong columns"])
def test_arrays_are_checked_on_first_open(corpus, damage):
    path = corpus / "img_db" / "shard_00001.features.npy"
    array = np.load(path)
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a numpy file at all" * 10)
    elif damage == "float32":
        np.save(path, array.astype(np.float32))
    elif damage == "too few rows":
        np.save(path, array[:-1])
    else:
        np.save(path, array[:, :-1])
    store = FeatureStore(corpus / "img_db")  # the index alone is fine: arrays are opened on first use
    image_id = shard_rows(corpus, 1)[0]["image_id"]
    raises_naming(StoreError, lambda: store[image_id], path)
    other = shard_rows(corpus, 0)[0]["image_id"]
    assert store[other]["features"].shape[1] == 1280  # other shards still read


@pytest.mark.parametrize("field, value", [("features", np.nan), ("conf", np.inf), ("soft_labels", -np.inf)])
def test_check_finite_names_the_first_bad_image(corpus, field, value):
    path = corpus / "img_db" / f"shard_00001.{field}.npy"
    rows = shard_rows(corpus, 1)
    array = np.load(path)
    victim, later = rows[3], rows[4]
    array[victim["start"] + 1] = value
    array[later["start"]] = value
    np.save(path, array)
    store = FeatureStore(corpus / "img_db")
    clean = [r["image_id"] for r in rows[:3]] + [r["image_id"] for r in shard_rows(corpus, 2)]
    assert store.check_finite(clean) == sum(store.num_regions(i) for i in clean)
    message = raises_naming(StoreError, lambda: store.check_finite(chunk_values=5000), path,
                            repr(victim["image_id"]))
    assert "region 1" in message
    with pytest.raises(KeyError):  # unknown ids keep raising KeyError, as __getitem__ does
        store.check_finite(["no_such_image"])


# ------------------------------------------------------------------------------------ jsonl and json helpers

def test_read_jsonl_and_read_json_name_file_and_line(tmp_path):
    from uniter_core.io import JsonlError, read_json, read_jsonl
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n{"a": 3\n')
    raises_naming(JsonlError, lambda: read_jsonl(path), path, "line 4")
    path.write_bytes(b'{"a": 1}\n[1, 2]\n')
    raises_naming(JsonlError, lambda: read_jsonl(path), path, "line 2")
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    raises_naming(JsonlError, lambda: read_jsonl(path), path, "line 2")
    bad = tmp_path / "x.json"
    bad.write_text('{"a": [1, 2,\n  }')
    raises_naming(JsonlError, lambda: read_json(bad, "settings"), "settings", bad, "line 2")
    raises_naming(JsonlError, lambda: read_json(tmp_path / "nope.json", "settings"), "nope.json", "does not exist")
    good = tmp_path / "good.json"
    good.write_text("[1]")
    assert read_json(good, "settings") == [1]


# ------------------------------------------------------------------------------------------- text rows

def _rewrite_line(path: Path, number: int, change) -> None:
    lines = path.read_text().splitlines()
    row = json.loads(lines[number - 1])
    change(row)
    lines[number - 1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("damage", ["not json", "empty input_ids", "string token", "token beyond vocab",
                                    "unknown image", "image_id a number", "bad alignment", "no text_id"])
def test_text_rows_are_checked_on_open(corpus, damage):
    from uniter_core.data.dataset import CorpusError, ImageTextDataset
    path = corpus / "txt_db" / "train.jsonl"
    changes = {"empty input_ids": lambda r: r.update(input_ids=[]),
               "string token": lambda r: r["input_ids"].__setitem__(1, "2048"),
               "token beyond vocab": lambda r: r["input_ids"].__setitem__(1, 30522),
               "unknown image": lambda r: r.update(image_id="collage_999999"),
               "image_id a number": lambda r: r.update(image_id=7),
               "bad alignment": lambda r: r.update(alignment=[[1, 0], [2]]),
               "no text_id": lambda r: r.pop("text_id")}
    if damage == "not json":
        lines = path.read_text().splitlines()
        lines[4] = lines[4][:25]
        path.write_text("\n".join(lines) + "\n")
    else:
        _rewrite_line(path, 5, changes[damage])
    raises_naming(CorpusError, lambda: ImageTextDataset(corpus, "train"), path, "line 5")


def test_text_meta_and_missing_split(corpus):
    from uniter_core.data.dataset import CorpusError, ImageTextDataset
    meta = corpus / "txt_db" / "meta.json"
    meta.write_text(meta.read_text()[:-10])
    raises_naming(CorpusError, lambda: ImageTextDataset(corpus, "train"), meta)
    meta.write_text(json.dumps({"special_tokens": {"[CLS]": 101}, "vocab_size": 30522}))
    raises_naming(CorpusError, lambda: ImageTextDataset(corpus, "train"), meta, "[SEP]")
    message = raises_naming(FileNotFoundError, lambda: ImageTextDataset(corpus, "tran"), "tran.jsonl")
    assert "test, train, val" in message


def test_train_command_on_a_damaged_corpus(corpus, tmp_path):
    """A NaN in the features of a training image: found by FeatureStore.check_finite when the trainer opens the
    split (the text rows' checks are shown in-process above)."""
    from factories import tiny_overrides
    lines = (corpus / "txt_db" / "train.jsonl").read_text().splitlines()
    train_ids = {json.loads(line)["image_id"] for line in lines}
    victim = next(r for r in shard_rows(corpus, 1) if r["image_id"] in train_ids)
    path = corpus / "img_db" / "shard_00001.features.npy"
    array = np.load(path)
    array[victim["start"] + 2, 7] = np.nan
    np.save(path, array)
    result = run("uniter_core.train", "--out", tmp_path / "run", "--no-eval", *tiny_overrides(corpus, steps=2),
                 timeout=300)
    assert_failed_cleanly(result, 2, path, repr(victim["image_id"]))
    assert not (tmp_path / "run" / "checkpoints").exists()


# -------------------------------------------------------------------------------------- official LMDB DBs

META = {"tokenizer": "bert-base-cased", "UNK": 100, "CLS": 101, "SEP": 102, "MASK": 103, "v_range": [999, 28996]}


def _official_dbs(root: Path, compress: bool = False) -> tuple[Path, Path]:
    from uniter_core.data.official_db import write_official_image_db, write_official_text_db
    rng = np.random.default_rng(0)
    items = {f"img_{i}.npz": {"features": rng.normal(size=(30, 256)).astype(np.float32),
                              "norm_bb": rng.uniform(0, 1, (30, 6)).astype(np.float32),
                              "conf": rng.uniform(0.3, 1, 30).astype(np.float32),
                              "soft_labels": rng.uniform(0, 1, (30, 50)).astype(np.float32)} for i in range(6)}
    write_official_image_db(root / "img", items, compress=compress)
    records = {str(i): {"input_ids": list(range(5, 5 + 40 * (i + 1))), "img_fname": f"img_{i % 6}.npz",
                        "raw": "x " * 200} for i in range(40)}
    write_official_text_db(root / "txt.db", records, META)
    return root / "img", root / "txt.db"


def _truncate(path: Path, keep: int) -> None:
    assert path.stat().st_size > max(keep, 3 * 4096), "the LMDB is too small to show a truncation"
    os.truncate(path, keep)


READ_ALL = """
import sys
from uniter_core.data.official_db import OfficialImageDB, OfficialTextDB
from uniter_core.errors import UserError
try:
    if sys.argv[1] == "image":
        db = OfficialImageDB(sys.argv[2], compress=sys.argv[3] == "1")
        for name in db.image_ids:
            db[name]
    else:
        db = OfficialTextDB(sys.argv[2])
        for text_id in db.ids:
            db[text_id]
except UserError as e:
    print(f"{type(e).__name__}: {e}")
    sys.exit(2)
print("read everything")
"""


@pytest.mark.parametrize("which", ["image", "text"])
@pytest.mark.slow
def test_truncated_lmdb_is_refused_not_a_sigbus(tmp_path, which):
    """Read in a subprocess, so that a SIGBUS shows as a negative exit code instead of killing pytest."""
    img, txt = _official_dbs(tmp_path)
    data = (img / "feat_th0.2_max100_min10" if which == "image" else txt) / "data.mdb"
    _truncate(data, 8192)  # the two meta pages survive: LMDB opens it, and reading the rest would be a SIGBUS
    proc = subprocess.run([sys.executable, "-c", READ_ALL, which, str(img if which == "image" else txt), "0"],
                          capture_output=True, text=True, env=command_env(), cwd=ROOT, timeout=120)
    assert proc.returncode == 2, f"exit {proc.returncode} (a negative code is a signal)\n{proc.stderr[-2000:]}"
    assert "OfficialDBError" in proc.stdout and str(data) in proc.stdout, proc.stdout


@pytest.mark.parametrize("damage", ["one byte short", "garbage", "empty", "header only"])
def test_damaged_lmdb_is_refused_on_open(tmp_path, damage):
    """Refused by the constructors, before any read (so in-process: nothing here can reach a SIGBUS)."""
    from uniter_core.data.official_db import OfficialDBError, OfficialImageDB, OfficialTextDB
    img, txt = _official_dbs(tmp_path)
    data = img / "feat_th0.2_max100_min10" / "data.mdb" if damage == "one byte short" else txt / "data.mdb"
    if damage == "one byte short":
        _truncate(data, data.stat().st_size - 1)
    elif damage == "garbage":
        data.write_bytes(b"definitely not an LMDB " * 500)
    else:
        _truncate(data, 0 if damage == "empty" else 100)
    opener = (lambda: OfficialImageDB(img, compress=False)) if damage == "one byte short" else \
        (lambda: OfficialTextDB(txt))
    raises_naming(OfficialDBError, opener, data)


@pytest.mark.parametrize("which", ["image"])  # the text DB's reader is shown truncated above
@pytest.mark.slow
def test_converter_command_on_a_truncated_lmdb(tmp_path, which):
    img, txt = _official_dbs(tmp_path, compress=True)
    data = (img / "feat_th0.2_max100_min10_compressed" if which == "image" else txt) / "data.mdb"
    _truncate(data, 8192)
    result = run("uniter_core.data.official_db", "--img-db", img, "--txt-db", txt, "--out", tmp_path / "corpus",
                 timeout=120)
    assert_failed_cleanly(result, 2, data)
    assert not (tmp_path / "corpus").exists()


# ------------------------------------------------------------------------------------------- checkpoints

def _tiny_model():
    from factories import tiny_config
    from uniter_core.pretrain import UniterForPretraining
    return UniterForPretraining(tiny_config())


@pytest.mark.parametrize("damage", ["truncated weights", "garbage weights", "config not json", "config a list"])
def test_load_pretrained_names_the_damaged_file(tmp_path, damage):
    from uniter_core.checkpoint import CheckpointError
    from uniter_core.pretrain import UniterForPretraining
    folder = tmp_path / "model"
    _tiny_model().save_pretrained(folder)
    weights, config = folder / "model.safetensors", folder / "config.json"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    elif damage == "garbage weights":
        weights.write_bytes(b"\x00" * 4000)
    elif damage == "config not json":
        config.write_text(config.read_text()[:-5])
    else:
        config.write_text("[1, 2]")
    bad = config if damage.startswith("config") else weights
    raises_naming(CheckpointError, lambda: UniterForPretraining.from_pretrained(folder), bad)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "a list", "truncated safetensors"])
def test_read_state_dict_names_the_damaged_file(tmp_path, damage):
    from safetensors.torch import save_file
    from uniter_core.checkpoint import CheckpointError, read_state_dict
    state = {"a.weight": torch.randn(64, 64), "b.bias": torch.randn(64)}
    path = tmp_path / ("ckpt.safetensors" if "safetensors" in damage else "ckpt.pt")
    if damage == "truncated safetensors":
        save_file(state, str(path))
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "a list":
        torch.save([torch.zeros(2)], path)
    else:
        torch.save(state, path)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"garbage" * 100)
    raises_naming(CheckpointError, lambda: read_state_dict(path), path)


def test_train_command_on_a_damaged_official_checkpoint(tiny_corpus, tmp_path):
    from factories import tiny_overrides
    checkpoint = tmp_path / "uniter-base.pt"
    torch.save({"a": torch.zeros(3)}, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    overrides = [o for o in tiny_overrides(tiny_corpus, steps=2) if not o.startswith("model.init=")]
    result = run("uniter_core.train", "--out", tmp_path / "run", "--no-eval", f"model.init={checkpoint}",
                 *overrides, timeout=300)
    assert_failed_cleanly(result, 2, checkpoint)


# ------------------------------------------------------------------------------------------ captions input

COCO_DAMAGE = {
    "images not dicts": (lambda d: d.update(images=["a.png"]), "images[0]"),
    "id a list": (lambda d: d["images"][0].update(id=[1]), "images[0]"),
    "file_name a number": (lambda d: d["images"][0].update(file_name=3), "images[0]"),
    "repeated id": (lambda d: d["images"].append(dict(d["images"][0])), "images[1]"),
    "caption a number": (lambda d: d["annotations"][1].update(caption=5), "annotations[1]"),
    "caption null": (lambda d: d["annotations"][1].update(caption=None), "annotations[1]"),
    "image_id a list": (lambda d: d["annotations"][1].update(image_id=[1]), "annotations[1]"),
    "annotations a dict": (lambda d: d.update(annotations={"0": d["annotations"][0]}), "annotations"),
}


@pytest.mark.parametrize("damage", sorted(COCO_DAMAGE))
def test_coco_captions_with_wrong_types(tmp_path, damage):
    from uniter_core.data.extract import InputError, load_captions
    data = {"images": [{"id": 1, "file_name": "a.png"}],
            "annotations": [{"image_id": 1, "id": 10, "caption": "a cat"},
                            {"image_id": 1, "id": 11, "caption": "a dog"}]}
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    assert len(load_captions(path)) == 2
    change, entry = COCO_DAMAGE[damage]
    change(data)
    path.write_text(json.dumps(data))
    raises_naming(InputError, lambda: load_captions(path), path, entry)


@pytest.mark.parametrize("content, where", [
    (b"image,caption\na.png,a cat\nb.png,a d\x00og\n", "line 3"),
    (b"image,caption\na.png,a cat\nb\x00.png,a dog\n", "line 3"),
    ("image,caption\na.png,a caf\u00e9\n".encode("latin-1"), "line 2"),
    ("image,caption\na.png,a cat\n".encode("utf-16"), "UTF-16"),
], ids=["nul in caption", "nul in image name", "latin-1", "utf-16"])
def test_csv_captions_with_odd_content(tmp_path, content, where):
    from uniter_core.data.extract import InputError, load_captions
    path = tmp_path / "captions.csv"
    path.write_bytes(content)
    raises_naming(InputError, lambda: load_captions(path), path, where)


@pytest.mark.slow
def test_extract_command_on_a_nul_csv(tmp_path):
    (tmp_path / "images").mkdir()
    path = tmp_path / "captions.csv"
    path.write_bytes(b"image,caption\nx\x00.png,a cat\n")
    result = run("uniter_core.data.extract", "--images", tmp_path / "images", "--captions", path,
                 "--out", tmp_path / "corpus", timeout=120)
    assert_failed_cleanly(result, 2, path, "line 2")


# -------------------------------------------------------------------------------------------- label CSVs

LABEL_DAMAGE = {
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01", "NUL"),
    "not utf-8": ("index,label\n0,vertical\n1,diagonal\u00e9\n".encode("latin-1"), "line 3"),
    "no label column": (b"index,lable\n0,vertical\n", "index,label"),
    "non-integer index": (b"index,label\n0,vertical\n1.5,diagonal\n", "line 3"),
    "duplicate index": (b"index,label\n0,vertical\n1,diagonal\n0,block\n", "line 4"),
    "empty label": (b"index,label\n0,vertical\n1,\n", "line 3"),
}


def _gold_dir(root: Path, labels: bytes) -> Path:
    from analyses.mapfile import MapRecord, write_maps
    gold = root / "gold"
    gold.mkdir()
    uniform = np.full((5, 5), 0.2, np.float32)
    write_maps(gold / "maps.npz", [MapRecord(i, uniform, 3, 2) for i in range(3)])
    (gold / "labels.csv").write_bytes(labels)
    return gold


@pytest.mark.parametrize("damage", sorted(LABEL_DAMAGE))
def test_label_csvs_are_checked(tmp_path, damage):
    from analyses.gold import read_labels
    from analyses.mapfile import MapFileError
    from analyses.train_classifier import load_gold
    content, where = LABEL_DAMAGE[damage]
    gold = _gold_dir(tmp_path, b"index,label\n0,vertical\n1,diagonal\n2,skip\n")
    assert len(load_gold(gold)[1]) == 2 and len(read_labels(gold / "labels.csv")) == 3
    (gold / "labels.csv").write_bytes(content)
    raises_naming(MapFileError, lambda: load_gold(gold), gold / "labels.csv", where)
    raises_naming(MapFileError, lambda: read_labels(gold / "labels.csv"), gold / "labels.csv", where)


@pytest.mark.parametrize("damage", ["duplicate index"])  # the other damages: in-process above
def test_train_classifier_command_on_a_broken_labels_csv(tmp_path, damage):
    content, where = LABEL_DAMAGE[damage]
    gold = _gold_dir(tmp_path, content)
    out = tmp_path / "m" / "x.joblib"
    result = run("analyses.train_classifier", "--gold-dir", gold, "--out", out, "--n-synthetic", 60,
                 "--n-test", 20, "--trees", 5, timeout=120)
    assert_failed_cleanly(result, 2, gold / "labels.csv", where)
    assert not out.exists()


def test_gold_sheets_command_on_a_broken_labels_csv(tmp_path):
    gold = _gold_dir(tmp_path, LABEL_DAMAGE["non-integer index"][0])
    result = run("analyses.gold", "sheets", "--maps", gold / "maps.npz", "--labels", gold / "labels.csv",
                 "--out", tmp_path / "sheets", timeout=120)
    assert_failed_cleanly(result, 2, gold / "labels.csv", "line 3")


@pytest.mark.slow
def test_classify_maps_command_on_a_truncated_maps_file(tmp_path):
    gold = _gold_dir(tmp_path, b"index,label\n")
    maps = gold / "maps.npz"
    maps.write_bytes(maps.read_bytes()[:-40])
    result = run("analyses.classify_maps", "--maps", maps, "--out", tmp_path / "out.csv", timeout=120)
    assert_failed_cleanly(result, 2, maps)
    assert not (tmp_path / "out.csv").exists()
