"""Writers of official-format DBs, as the official scripts write them: for the tests, and for making small
official-format DBs (e.g. to try the converter or the readers on them)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import lmdb
import numpy as np
from lz4.frame import compress as lz4_compress

from uniter_core.data.store import FIELDS
from uniter_core.io import replace_dir, write_json

from .format import KEYS, OfficialDBError, _pack, compute_num_bb, encode_image_dump, image_db_name, nbb_file_name


def _write_lmdb(path: Path, items: dict[bytes, bytes]) -> None:
    """A fresh LMDB in `path`, built beside it and moved into place whole."""
    work = path.with_name(path.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    map_size = 2 * sum(len(k) + len(v) for k, v in items.items()) + (64 << 20)
    with lmdb.open(str(work), map_size=map_size) as env, env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, value)
    replace_dir(work, path)


def write_official_image_db(img_dir: str | Path, items: dict[str, dict[str, np.ndarray]], conf_th: float = 0.2,
                            max_bb: int = 100, min_bb: int = 10, compress: bool = False, num_bb: int = 36,
                            keep_all: bool = False) -> Path:
    """Write like scripts/convert_imgdir.py: fp16 rows cut to nbb, __keys__, and the nbb JSON beside the LMDB.

    keep_all writes the `all[_compressed]` LMDB (every row, no nbb JSON): readers then compute nbb from conf.
    """
    img_dir = Path(img_dir)
    values, name2nbb = {}, {}
    for fname, item in items.items():
        missing = [f for f in FIELDS if f not in item]
        if missing:
            raise OfficialDBError(f"image {fname!r} for {img_dir} lacks the fields {missing}")
        nbb = None if keep_all else compute_num_bb(item["conf"], conf_th, min_bb, max_bb)
        dump = {}
        for key, array in item.items():
            array = np.asarray(array)
            if np.issubdtype(array.dtype, np.floating):
                array = array.astype(np.float16)
            dump[key] = np.ascontiguousarray(array[:nbb])
        values[fname.encode("utf-8")] = encode_image_dump(dump, compress)
        name2nbb[fname] = nbb
    values[KEYS] = json.dumps(list(name2nbb)).encode("utf-8")
    db_path = img_dir / image_db_name(conf_th, max_bb, min_bb, num_bb, compress, keep_all)
    _write_lmdb(db_path, values)
    if conf_th != -1 and not keep_all:
        write_json(img_dir / nbb_file_name(conf_th, max_bb, min_bb), name2nbb, indent=None)
    return db_path


def official_text_meta(tokenizer, name: str) -> dict:
    """meta.json fields of prepro.py for a BERT tokenizer (v_range = ids MLM may draw random tokens from)."""
    ids = {k: tokenizer.convert_tokens_to_ids(f"[{k}]") for k in ("UNK", "CLS", "SEP", "MASK")}
    return {"tokenizer": name, "toker": name, **ids, "v_range": [tokenizer.convert_tokens_to_ids("!"),
                                                                 len(tokenizer.get_vocab())]}


def write_official_text_db(db_dir: str | Path, records: dict[str, dict], meta: dict) -> Path:
    """Write like prepro.py: lz4(msgpack(record)) per text id, then id2len/txt2img/img2txts/meta JSON."""
    db_dir = Path(db_dir)
    missing = [k for k in ("CLS", "SEP", "MASK", "v_range") if k not in meta]
    if missing:
        raise OfficialDBError(f"the meta.json for {db_dir} lacks the keys {missing}")
    values, id2len, txt2img, img2txts = {}, {}, {}, {}
    for text_id, record in records.items():
        if "input_ids" not in record or "img_fname" not in record:
            raise OfficialDBError(f"text {text_id!r} for {db_dir} lacks input_ids or img_fname")
        values[str(text_id).encode("utf-8")] = lz4_compress(_pack(record))
        id2len[text_id] = len(record["input_ids"])
        txt2img[text_id] = record["img_fname"]
        fnames = record["img_fname"] if isinstance(record["img_fname"], (list, tuple)) else [record["img_fname"]]
        for fname in fnames:
            img2txts.setdefault(fname, []).append(text_id)
    _write_lmdb(db_dir, values)
    for name, obj in (("id2len", id2len), ("txt2img", txt2img), ("img2txts", img2txts)):
        write_json(db_dir / f"{name}.json", obj, indent=None)
    write_json(db_dir / "meta.json", meta, indent=4)
    return db_dir
