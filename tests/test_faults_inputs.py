"""Malformed inputs found by a user trial: every one gets `error: <file>: <problem>`, exit 2, no traceback, no --out.

Official UNITER DBs are written with the project's writers, then one file (or one LMDB entry) is edited; the
converter and the extraction run in-process, as their command-line entry points.
"""
import json
from pathlib import Path

import lmdb
import numpy as np
import pytest
from lz4.frame import compress as lz4_compress
from PIL import Image

from uniter_core.data import extract, official_db
from uniter_core.data.official_db import (OfficialDBError, OfficialTextDB, encode_image_dump,
                                          write_official_image_db, write_official_text_db)

META = {"tokenizer": "bert-base-cased", "UNK": 100, "CLS": 101, "SEP": 102, "MASK": 103, "v_range": [999, 28996]}
NBB_JSON = "nbb_th0.2_max100_min10.json"
LMDB_NAME = "feat_th0.2_max100_min10"


def _item(rng, n: int = 12) -> dict:
    return {"features": rng.normal(size=(n, 8)).astype(np.float32),
            "norm_bb": rng.uniform(0, 1, (n, 6)).astype(np.float32),
            "conf": rng.uniform(0.3, 1, n).astype(np.float32),
            "soft_labels": rng.uniform(0, 1, (n, 5)).astype(np.float32)}


@pytest.fixture
def dbs(tmp_path) -> dict:
    rng = np.random.default_rng(0)
    write_official_image_db(tmp_path / "img", {"a.npz": _item(rng), "b.npz": _item(rng)})
    records = {"t0": {"input_ids": [5, 6, 7], "img_fname": "a.npz", "raw": "a cat"},
               "t1": {"input_ids": [8, 9], "img_fname": "b.npz", "raw": "a dog"}}
    write_official_text_db(tmp_path / "txt_train.db", records, META)
    return {"img": tmp_path / "img", "txt": tmp_path / "txt_train.db", "out": tmp_path / "corpus"}


def _run(main, argv, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _convert(dbs, capsys, *extra) -> tuple[int, str]:
    return _run(official_db.main, ["--img-db", dbs["img"], "--txt-db", dbs["txt"], "--out", dbs["out"], *extra],
                capsys)


def assert_refused(code: int, err: str, out: Path, *names) -> None:
    """Exit 2, one `error:` line (the last on stderr, after any progress bar), naming every one of `names`."""
    assert code == 2, f"exit {code}: {err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error:") for line in lines) == 1, err
    for name in names:
        assert str(name) in lines[-1], f"{name!r} not named in: {lines[-1]}"
    assert not out.exists(), f"{out} was written"


def test_untouched_dbs_convert(dbs, capsys):
    """The fixture itself is fine: each test below differs from it by one edited file."""
    code, err = _convert(dbs, capsys, "--max-txt-len", "5")
    assert code == 0, err
    assert (dbs["out"] / "manifest.json").exists()


# ----------------------------------------------------------------------------------------- text DB JSON files

def _write(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


def test_id2len_a_list(dbs, capsys):
    _write(dbs["txt"] / "id2len.json", ["t0", "t1"])
    assert_refused(*_convert(dbs, capsys), dbs["out"], dbs["txt"] / "id2len.json")


def test_id2len_lengths_as_strings(dbs, capsys):
    _write(dbs["txt"] / "id2len.json", {"t0": "3", "t1": "2"})
    code, err = _convert(dbs, capsys, "--max-txt-len", "5")
    assert_refused(code, err, dbs["out"], dbs["txt"] / "id2len.json", "'t0'")


def test_id2len_names_a_text_the_lmdb_lacks(dbs, capsys):
    _write(dbs["txt"] / "id2len.json", {"t0": 3, "t1": 2, "t9": 4})
    assert_refused(*_convert(dbs, capsys), dbs["out"], dbs["txt"], "'t9'")


def test_meta_a_list(dbs, capsys):
    _write(dbs["txt"] / "meta.json", ["CLS", "SEP", "MASK", "v_range"])
    assert_refused(*_convert(dbs, capsys), dbs["out"], dbs["txt"] / "meta.json")


@pytest.mark.parametrize("key, value", [("v_range", 5), ("v_range", [999]), ("CLS", "101"), ("MASK", True),
                                        ("SEP", 50000)])
def test_meta_with_wrong_values(dbs, capsys, key, value):
    """Refused when the text DB is opened: before a single image is converted (no OUT.partial either)."""
    _write(dbs["txt"] / "meta.json", {**META, key: value})
    assert_refused(*_convert(dbs, capsys), dbs["out"], dbs["txt"] / "meta.json", key)
    assert not dbs["out"].with_name("corpus.partial").exists()


@pytest.mark.parametrize("which, value", [("txt2img", ["a.npz"]), ("txt2img", {"t0": 5}),
                                          ("img2txts", {"a.npz": "t0"}), ("img2txts", {"a.npz": [0]})])
def test_txt2img_and_img2txts_with_wrong_types(dbs, which, value):
    """The converter does not read these two files; the reader refuses them when they are asked for."""
    path = dbs["txt"] / f"{which}.json"
    _write(path, value)
    db = OfficialTextDB(dbs["txt"])
    with pytest.raises(OfficialDBError) as info:
        getattr(db, which)
    assert str(path) in str(info.value)


# -------------------------------------------------------------------------------------------- nbb JSON file

@pytest.mark.parametrize("value", [{"a.npz": "x", "b.npz": 12}, ["a.npz", "b.npz"], {"a.npz": 12, "b.npz": True},
                                   {"a.npz": 12, "b.npz": -1}])
def test_nbb_json_with_wrong_types(dbs, capsys, value):
    _write(dbs["img"] / NBB_JSON, value)
    assert_refused(*_convert(dbs, capsys), dbs["out"], dbs["img"] / NBB_JSON)


def test_nbb_json_names_an_image_the_lmdb_lacks(dbs, capsys):
    _write(dbs["img"] / NBB_JSON, {"a.npz": 12, "b.npz": 12, "c.npz": 12})
    records = {"t0": {"input_ids": [5], "img_fname": "c.npz"}}
    write_official_text_db(dbs["txt"], records, META)
    assert_refused(*_convert(dbs, capsys), dbs["out"], dbs["img"] / LMDB_NAME, "'c.npz'")


# ------------------------------------------------------------------------------------------ text DB records

def _put(lmdb_dir: Path, key: str, value: bytes) -> None:
    with lmdb.open(str(lmdb_dir), map_size=1 << 26) as env, env.begin(write=True) as txn:
        txn.put(key.encode("utf-8"), value)


@pytest.mark.parametrize("input_ids", [["a", "b"], [5, True], [5, -1], [5, 28996], [5, 2.5]])
def test_record_with_bad_input_ids(dbs, capsys, input_ids):
    _put(dbs["txt"], "t1", lz4_compress(official_db._pack({"input_ids": input_ids, "img_fname": "b.npz"})))
    assert_refused(*_convert(dbs, capsys), dbs["out"], dbs["txt"], "'t1'")


def test_record_not_a_dict(dbs, capsys):
    _put(dbs["txt"], "t1", lz4_compress(official_db._pack([5, 6])))
    assert_refused(*_convert(dbs, capsys), dbs["out"], dbs["txt"], "'t1'")


# ---------------------------------------------------------------------------------------- image DB entries

DUMP_DAMAGE = {
    "1-D soft_labels": lambda d: d.update(soft_labels=d["soft_labels"][:, 0].copy()),
    "1-D features": lambda d: d.update(features=d["features"][:, 0].copy()),
    "norm_bb with 4 columns": lambda d: d.update(norm_bb=d["norm_bb"][:, :4].copy()),
    "2-D conf": lambda d: d.update(conf=d["conf"][:, None].copy()),
    "fewer conf than features": lambda d: d.update(conf=d["conf"][:5].copy()),
    "features as text": lambda d: d.update(features=np.array([["x"] * 8] * 12)),
    "a scalar field": lambda d: d.update(conf=np.float16(0.5)),
}


@pytest.mark.parametrize("damage", sorted(DUMP_DAMAGE))
@pytest.mark.parametrize("victim", ["a.npz", "b.npz"])  # the first image (read before OUT.partial) or a later one
def test_image_entry_with_bad_arrays(dbs, capsys, damage, victim):
    rng = np.random.default_rng(1)
    dump = {k: v.astype(np.float16) for k, v in _item(rng).items()}
    DUMP_DAMAGE[damage](dump)
    _put(dbs["img"] / LMDB_NAME, victim, encode_image_dump(dump, compress=False))
    code, err = _convert(dbs, capsys, "--shard-size", "1")
    assert_refused(code, err, dbs["out"], dbs["img"] / LMDB_NAME, repr(victim))


def test_image_entry_not_a_dict(dbs, capsys):
    _put(dbs["img"] / LMDB_NAME, "a.npz", official_db._pack([1, 2, 3]))
    assert_refused(*_convert(dbs, capsys), dbs["out"], dbs["img"] / LMDB_NAME, "'a.npz'")


# ----------------------------------------------------------------------------------------------- extraction

@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(folder / "a.png")
    return folder


def _extract(images, captions: Path, capsys, *extra) -> tuple[int, str]:
    return _run(extract.main, ["--images", images, "--captions", captions, "--out", images.parent / "corpus",
                               *extra], capsys)


def _coco(path: Path, captions: list[str], file_name: str = "a.png") -> Path:
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": file_name}],
                                "annotations": [{"id": 10 + i, "image_id": 1, "caption": c}
                                                for i, c in enumerate(captions)]}))
    return path


def test_coco_caption_with_a_lone_surrogate(images, capsys):
    path = _coco(images.parent / "caps.json", ["a dog", "\ud800 cat"])
    code, err = _extract(images, path, capsys)
    assert_refused(code, err, images.parent / "corpus", path, "annotations[1]")


def test_coco_file_name_with_a_lone_surrogate(images, capsys):
    path = _coco(images.parent / "caps.json", ["a dog"], file_name="\udc00a.png")
    code, err = _extract(images, path, capsys)
    assert_refused(code, err, images.parent / "corpus", path, "images[0]")


@pytest.mark.parametrize("box", [[0, 0, "10", 10], [0, 0, True, 10], [0, 0, None, 10], [0, 0, [10], 10]],
                         ids=["string", "bool", "null", "list"])
def test_boxes_that_are_not_numbers(images, capsys, box):
    captions = _coco(images.parent / "caps.json", ["a dog"])
    boxes = images.parent / "boxes.json"
    _write(boxes, {"a.png": [[0, 0, 20, 20], box]})
    code, err = _extract(images, captions, capsys, "--boxes", boxes)
    assert_refused(code, err, images.parent / "corpus", boxes, "'a.png'")


@pytest.mark.parametrize("header", ["image,caption,caption", "image,image,caption"])
def test_csv_with_a_repeated_column(images, capsys, header):
    path = images.parent / "caps.csv"
    path.write_text(f"{header}\na.png,a dog,a cat\n")
    code, err = _extract(images, path, capsys)
    assert_refused(code, err, images.parent / "corpus", path, "header")


def test_csv_row_with_extra_fields(images, capsys):
    path = images.parent / "caps.csv"
    path.write_text("image,caption\na.png,a dog\na.png,a cat, sitting on a mat\n")
    code, err = _extract(images, path, capsys)
    assert_refused(code, err, images.parent / "corpus", path, "line 3")
