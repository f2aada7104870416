"""Official UNITER LMDB DBs: exact on-disk format, nbb rule, fork safety, clear errors, conversion to our store."""
import io
import json
import multiprocessing
import pickle

import lmdb
import msgpack
import msgpack_numpy
import numpy as np
import pytest
from lz4.frame import compress as lz4_compress
from lz4.frame import decompress as lz4_decompress

from uniter_core.data import official_db
from uniter_core.data.official_db import (OfficialDBError, OfficialImageDB, OfficialTextDB, compute_num_bb,
                                          write_official_image_db, write_official_text_db)
from uniter_core.data.store import FeatureStore
from uniter_core.io import read_jsonl

META = {"tokenizer": "bert-base-cased", "toker": "bert-base-cased", "UNK": 100, "CLS": 101, "SEP": 102,
        "MASK": 103, "v_range": [999, 28996]}


def make_item(rng, n_boxes: int, n_confident: int) -> dict:
    conf = rng.uniform(0.0, 0.19, n_boxes)
    conf[:n_confident] = rng.uniform(0.25, 1.0, n_confident)
    logits = rng.normal(size=(n_boxes, 1601))
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {"features": rng.normal(size=(n_boxes, 2048)).astype(np.float32) * 3,
            "norm_bb": rng.uniform(0, 1, (n_boxes, 6)).astype(np.float32), "conf": conf.astype(np.float32),
            "soft_labels": soft.astype(np.float32)}


@pytest.fixture(scope="module")
def items():
    rng = np.random.default_rng(0)
    # 3 confident of 40 -> min_bb 10; 25 of 40 -> 25; 120 of 130 -> max_bb 100
    return {"coco_a.npz": make_item(rng, 40, 3), "coco_b.npz": make_item(rng, 40, 25),
            "coco_c.npz": make_item(rng, 130, 120)}


EXPECTED_NBB = {"coco_a.npz": 10, "coco_b.npz": 25, "coco_c.npz": 100}


def fp16(array):
    return np.asarray(array).astype(np.float16).astype(np.float32)


def test_num_bb_rule():
    conf = np.array([0.9, 0.2, 0.21, 0.1] + [0.5] * 10)
    assert compute_num_bb(conf, 0.2, min_bb=2, max_bb=100) == 12  # strictly above the threshold
    assert compute_num_bb(conf, 0.2, min_bb=20, max_bb=100) == 20
    assert compute_num_bb(conf, 0.2, min_bb=2, max_bb=5) == 5


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("with_nbb_json", [True, False])
def test_image_db_round_trip(tmp_path, items, compress, with_nbb_json):
    db_path = write_official_image_db(tmp_path, items, compress=compress, keep_all=not with_nbb_json)
    name = ("feat_th0.2_max100_min10" if with_nbb_json else "all") + ("_compressed" if compress else "")
    assert db_path == tmp_path / name and (db_path / "data.mdb").exists()
    assert (tmp_path / "nbb_th0.2_max100_min10.json").exists() == with_nbb_json
    db = OfficialImageDB(tmp_path, compress=compress)
    assert len(db) == 3 and set(db.image_ids) == set(items) and "coco_b.npz" in db and "nope.npz" not in db
    for fname, item in items.items():
        nbb = EXPECTED_NBB[fname]
        assert db.num_regions(fname) == nbb
        out = db[fname]
        assert out["features"].shape == (nbb, 2048) and out["soft_labels"].shape == (nbb, 1601)
        for field in ("features", "norm_bb", "conf", "soft_labels"):
            assert out[field].dtype == np.float32
            np.testing.assert_array_equal(out[field], fp16(item[field][:nbb]))
    with pytest.raises(KeyError, match="nope.npz"):
        db["nope.npz"]


@pytest.mark.parametrize("compress", [False, True])
def test_writer_matches_official_encoding(tmp_path, items, compress):
    """Values decode with the official calls (patched msgpack / np.load); __keys__ lists the names."""
    db_path = write_official_image_db(tmp_path, items, compress=compress)
    with lmdb.open(str(db_path), readonly=True, lock=False) as env, env.begin() as txn:
        assert json.loads(txn.get(b"__keys__").decode("utf-8")) == list(items)
        raw = txn.get("coco_b.npz".encode("utf-8"))
    if compress:
        dump = dict(np.load(io.BytesIO(raw), allow_pickle=True))
    else:
        dump = msgpack_numpy.unpackb(raw, raw=False)
    assert dump["features"].dtype == np.float16 and dump["features"].shape == (25, 2048)
    assert json.loads((tmp_path / "nbb_th0.2_max100_min10.json").read_text()) == EXPECTED_NBB


@pytest.mark.parametrize("compress", [False, True])
def test_reads_lmdb_written_the_official_way(tmp_path, items, compress):
    """An LMDB written independently (msgpack_numpy.packb / savez_compressed with old numpy's stray key)."""
    name = "all_compressed" if compress else "all"
    with lmdb.open(str(tmp_path / name), map_size=1 << 28) as env, env.begin(write=True) as txn:
        for fname, item in items.items():
            dump = {k: v.astype(np.float16) for k, v in item.items()}
            if compress:
                buffer = io.BytesIO()
                np.savez_compressed(buffer, allow_pickle=np.array(True), **dump)
                value = buffer.getvalue()
            else:
                value = msgpack_numpy.packb(dump, use_bin_type=True)
            txn.put(fname.encode("utf-8"), value)
        txn.put(b"__keys__", json.dumps(list(items)).encode("utf-8"))
    db = OfficialImageDB(tmp_path, compress=compress)
    assert {f: db.num_regions(f) for f in items} == EXPECTED_NBB
    np.testing.assert_array_equal(db["coco_c.npz"]["norm_bb"], fp16(items["coco_c.npz"]["norm_bb"][:100]))


def test_fixed_number_of_boxes(tmp_path, items):
    write_official_image_db(tmp_path, items, conf_th=-1, num_bb=36, compress=False)
    assert (tmp_path / "feat_numbb36").is_dir()
    db = OfficialImageDB(tmp_path, conf_th=-1, num_bb=36, compress=False)
    assert {f: db[f]["features"].shape[0] for f in items} == {f: 36 for f in items}


def _read_conf(db, fname):
    return db[fname]["conf"].tolist()


def test_image_db_survives_pickle_and_fork(tmp_path, items):
    write_official_image_db(tmp_path, items, compress=True)
    db = OfficialImageDB(tmp_path, compress=True)
    expected = db["coco_a.npz"]["conf"].tolist()  # opened in the parent before forking
    assert pickle.loads(pickle.dumps(db))["coco_a.npz"]["conf"].tolist() == expected
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.starmap(_read_conf, [(db, "coco_a.npz")] * 2) == [expected, expected]


def test_text_db_round_trip(tmp_path):
    records = {"t0": {"input_ids": [5, 6, 7], "img_fname": "coco_a.npz", "raw": "a cat"},
               "t1": {"input_ids": list(range(70)), "img_fname": "coco_b.npz", "raw": "long"},
               "t2": {"input_ids": [8], "img_fname": "coco_a.npz", "raw": "dog", "target": 1}}
    write_official_text_db(tmp_path / "pretrain_coco_train.db", records, META)
    # py-lmdb allows one open handle per process, so look at the raw value before the reader opens it
    with lmdb.open(str(tmp_path / "pretrain_coco_train.db"), readonly=True, lock=False) as env, env.begin() as txn:
        assert msgpack_numpy.unpackb(lz4_decompress(txn.get(b"t0")), raw=False) == records["t0"]
    db = OfficialTextDB(tmp_path / "pretrain_coco_train.db")
    assert db.ids == ["t0", "t1", "t2"] and db.id2len == {"t0": 3, "t1": 70, "t2": 1}
    assert db["t2"] == records["t2"] and db.meta == META and (db.cls_, db.sep, db.mask) == (101, 102, 103)
    assert db.txt2img == {"t0": "coco_a.npz", "t1": "coco_b.npz", "t2": "coco_a.npz"}
    assert db.img2txts == {"coco_a.npz": ["t0", "t2"], "coco_b.npz": ["t1"]}
    assert OfficialTextDB(tmp_path / "pretrain_coco_train.db", max_txt_len=60).ids == ["t0", "t2"]
    with pytest.raises(KeyError, match="t9"):
        db["t9"]


def test_reads_text_db_written_the_official_way(tmp_path):
    db_dir = tmp_path / "txt"
    db_dir.mkdir()
    with lmdb.open(str(db_dir), map_size=1 << 24) as env, env.begin(write=True) as txn:
        txn.put(b"7", lz4_compress(msgpack.dumps({"input_ids": [1, 2], "img_fname": "x.npz"}, use_bin_type=True)))
    (db_dir / "id2len.json").write_text('{"7": 2}')
    (db_dir / "meta.json").write_text(json.dumps(META))
    assert OfficialTextDB(db_dir)["7"] == {"input_ids": [1, 2], "img_fname": "x.npz"}


def test_clear_errors(tmp_path, items):
    with pytest.raises(OfficialDBError, match="does not exist"):
        OfficialImageDB(tmp_path / "missing")
    write_official_image_db(tmp_path / "img", items, compress=False)
    with pytest.raises(OfficialDBError, match=r"img has no LMDB feat_th0\.2_max100_min10_compressed/"):
        OfficialImageDB(tmp_path / "img", compress=True)
    write_official_text_db(tmp_path / "txt", {"a": {"input_ids": [1], "img_fname": "coco_a.npz"}}, META)
    (tmp_path / "txt" / "id2len.json").unlink()
    with pytest.raises(OfficialDBError, match=r"txt is not a complete .* id2len\.json is missing"):
        OfficialTextDB(tmp_path / "txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OfficialDBError, match="data.mdb is missing"):
        OfficialTextDB(tmp_path / "empty")
    with pytest.raises(OfficialDBError, match="lacks the keys"):
        write_official_text_db(tmp_path / "t2", {}, {"CLS": 101})


def _official_pair(tmp_path, items):
    write_official_image_db(tmp_path / "img_db" / "coco_train2014", dict(list(items.items())[:2]))
    write_official_image_db(tmp_path / "img_db" / "coco_val2014", dict(list(items.items())[2:]))
    records = {"1": {"input_ids": [5, 6], "img_fname": "coco_a.npz", "raw": "a cat"},
               "2": {"input_ids": [7], "img_fname": "coco_c.npz", "raw": "a dog"}}
    write_official_text_db(tmp_path / "txt_db" / "pretrain_coco_train.db", records, META)
    write_official_text_db(tmp_path / "txt_db" / "pretrain_coco_val.db",
                           {"3": {"input_ids": [8, 9], "img_fname": "coco_b.npz", "sent": "two birds"}}, META)
    return records


def test_converter_makes_a_corpus_folder(tmp_path, items, capsys):
    _official_pair(tmp_path, items)
    out = tmp_path / "corpus"
    argv = ["--img-db", str(tmp_path / "img_db" / "coco_train2014"), str(tmp_path / "img_db" / "coco_val2014"),
            "--txt-db", str(tmp_path / "txt_db" / "pretrain_coco_train.db"),
            str(tmp_path / "txt_db" / "pretrain_coco_val.db"), "--out", str(out), "--shard-size", "2"]
    assert official_db.main(argv) == 0
    store = FeatureStore(out / "img_db")
    assert sorted(store.image_ids) == sorted(items) and store.feature_dim == 2048 and store.background_class
    for fname, item in items.items():
        assert store.num_regions(fname) == EXPECTED_NBB[fname]
        np.testing.assert_array_equal(store[fname]["features"], fp16(item["features"][:EXPECTED_NBB[fname]]))
    train = read_jsonl(out / "txt_db" / "pretrain_coco_train.jsonl")
    assert [(r["text_id"], r["image_id"], r["caption"], r["input_ids"]) for r in train] == [
        ("1", "coco_a.npz", "a cat", [5, 6]), ("2", "coco_c.npz", "a dog", [7])]
    assert read_jsonl(out / "txt_db" / "pretrain_coco_val.jsonl")[0]["caption"] == "two birds"
    meta = json.loads((out / "txt_db" / "meta.json").read_text())
    assert meta["special_tokens"]["[CLS]"] == 101 and meta["vocab_size"] == 28996
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["pretrain_coco_train"] == {"images": 2, "captions": 2}
    assert not out.with_name("corpus.partial").exists()


def test_converter_refuses_text_without_image(tmp_path, items, capsys):
    _official_pair(tmp_path, items)
    out = tmp_path / "corpus"
    argv = ["--img-db", str(tmp_path / "img_db" / "coco_train2014"),
            "--txt-db", str(tmp_path / "txt_db" / "pretrain_coco_train.db"), "--out", str(out)]
    assert official_db.main(argv) == 2
    err = capsys.readouterr().err
    assert "pretrain_coco_train.db refers to image 'coco_c.npz'" in err and err.count("\n") == 1
    assert not out.exists()


def test_text_meta_from_our_tokenizer():
    from uniter_core.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    meta = official_db.official_text_meta(tokenizer, "all-MiniLM-L6-v2")
    assert (meta["CLS"], meta["SEP"], meta["MASK"]) == (tokenizer.cls_token_id, tokenizer.sep_token_id,
                                                         tokenizer.mask_token_id)
    assert meta["v_range"] == [tokenizer.convert_tokens_to_ids("!"), tokenizer.vocab_size]
