"""Readers of the official image and text DBs, so that training can use the official files unchanged."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from lz4.frame import decompress as lz4_decompress
from tqdm import tqdm

from uniter_core.data.store import FIELDS

from .access import _Lmdb, _read_json, _require
from .format import (MissingLmdbError, OfficialDBError, _unpack, compute_num_bb, decode_image_dump, image_db_name,
                     nbb_file_name)


class OfficialImageDB:
    """Region features of one official image DB folder, as float32 dicts like FeatureStore.__getitem__.

    The LMDB is opened on first read in each process and shared by all readers of it there (py-lmdb allows one
    handle per file and process, so other code should not open the same LMDB in a process that reads it here).
    """

    def __init__(self, img_dir: str | Path, conf_th: float = 0.2, max_bb: int = 100, min_bb: int = 10,
                 num_bb: int = 36, compress: bool = True):
        self.img_dir = Path(img_dir)
        if not self.img_dir.is_dir():
            raise OfficialDBError(f"official image DB folder {self.img_dir} does not exist")
        self.conf_th, self.max_bb, self.min_bb, self.num_bb, self.compress = conf_th, max_bb, min_bb, num_bb, compress
        nbb_path = self.img_dir / nbb_file_name(conf_th, max_bb, min_bb)
        keep_all = conf_th != -1 and not nbb_path.exists()
        name = image_db_name(conf_th, max_bb, min_bb, num_bb, compress, keep_all)
        self.db_path = self.img_dir / name
        if not (self.db_path / "data.mdb").exists():
            found = sorted(p.name for p in self.img_dir.iterdir() if (p / "data.mdb").exists())
            raise MissingLmdbError(f"{self.img_dir} has no LMDB {name}/ for conf_th={conf_th}, max_bb={max_bb}, "
                                   f"min_bb={min_bb}, compress={compress} (LMDBs found: {found or 'none'})")
        self._db = _Lmdb(self.db_path)
        self._db.check()
        if conf_th == -1:
            self.name2nbb = {fname: num_bb for fname in self._db.keys()}
        elif not keep_all:
            self.name2nbb = self._read_nbb(nbb_path)
        else:
            self.name2nbb = self._compute_nbb()

    @staticmethod
    def _read_nbb(path: Path) -> dict[str, int]:
        """{img_fname: nbb} of the nbb JSON; OfficialDBError naming the file and entry unless every nbb is an int."""
        name2nbb = _read_json(path)
        if not isinstance(name2nbb, dict):
            raise OfficialDBError(f"{path} must map image file names to box counts, not a "
                                  f"{type(name2nbb).__name__}")
        for fname, nbb in name2nbb.items():
            if type(nbb) is not int or nbb < 0:
                raise OfficialDBError(f"{path}: the box count of {fname!r} is {nbb!r}, not a non-negative integer")
        return name2nbb

    def _compute_nbb(self) -> dict[str, int]:
        fnames = self._db.keys()
        return {fname: compute_num_bb(self._dump(fname)["conf"], self.conf_th, self.min_bb, self.max_bb)
                for fname in tqdm(fnames, desc=f"nbb of {self.img_dir.name}", disable=len(fnames) < 1000)}

    def _dump(self, fname: str) -> dict[str, np.ndarray]:
        data = self._db.get(fname.encode("utf-8"))
        if data is None:  # only listed names are read (name2nbb or __keys__): the DB contradicts itself
            listed_in = "__keys__" if self.conf_th == -1 or not hasattr(self, "name2nbb") else \
                nbb_file_name(self.conf_th, self.max_bb, self.min_bb)
            raise OfficialDBError(f"{self.db_path}: {listed_in} lists the image {fname!r} but the LMDB has no "
                                  f"entry for it")
        try:
            dump = decode_image_dump(data, self.compress)
        except Exception as e:  # noqa: BLE001 - any decoding failure means the same thing to the user
            raise OfficialDBError(f"{self.db_path}: the entry of {fname!r} cannot be decoded ({e})") from None
        if not isinstance(dump, dict):
            raise OfficialDBError(f"{self.db_path}: the entry of {fname!r} is a {type(dump).__name__}, not a dict "
                                  f"of arrays")
        missing = [f for f in FIELDS if f not in dump]
        if missing:
            raise OfficialDBError(f"{self.db_path}: the entry of {fname!r} lacks the fields {missing}")
        return self._check_dump(fname, dump)

    def _check_dump(self, fname: str, dump: dict) -> dict[str, np.ndarray]:
        """The fields as numeric arrays of the official shapes: features [n, d], norm_bb [n, 6], conf [n],
        soft_labels [n, c]; OfficialDBError naming the LMDB and the image otherwise."""
        arrays = {}
        for field in FIELDS:
            value = dump[field]
            array = value if isinstance(value, np.ndarray) else None
            if array is None or array.dtype.kind not in "fiu":
                what = f"{array.dtype} array" if array is not None else type(value).__name__
                raise OfficialDBError(f"{self.db_path}: the field {field} of {fname!r} is a {what}, not an "
                                      f"array of numbers")
            arrays[field] = array
        n = arrays["features"].shape[0] if arrays["features"].ndim == 2 else None
        expected = {"features": "[n, feature_dim]", "norm_bb": "[n, 6]", "conf": "[n]",
                    "soft_labels": "[n, num_classes]"}
        shapes_ok = {"features": n is not None,
                     "norm_bb": arrays["norm_bb"].ndim == 2 and arrays["norm_bb"].shape[1] == 6,
                     "conf": arrays["conf"].ndim == 1, "soft_labels": arrays["soft_labels"].ndim == 2}
        for field in FIELDS:
            if not shapes_ok[field] or (n is not None and arrays[field].shape[0] != n):
                raise OfficialDBError(f"{self.db_path}: the field {field} of {fname!r} has shape "
                                      f"{list(arrays[field].shape)}, expected {expected[field]}"
                                      + (f" with n = {n} (the rows of features)" if n is not None else ""))
        return {**dump, **arrays}

    @property
    def image_ids(self) -> list[str]:
        return list(self.name2nbb)

    def __len__(self) -> int:
        return len(self.name2nbb)

    def __contains__(self, fname: str) -> bool:
        return fname in self.name2nbb

    def num_regions(self, fname: str) -> int:
        try:
            return self.name2nbb[fname]
        except KeyError:
            raise KeyError(f"image {fname!r} is not in the official image DB {self.db_path}") from None

    def __getitem__(self, fname: str) -> dict[str, np.ndarray]:
        """features, norm_bb, conf, soft_labels of the first nbb boxes, as float32 copies."""
        nbb = self.num_regions(fname)
        dump = self._dump(fname)
        return {f: np.array(dump[f][:nbb], dtype=np.float32) for f in FIELDS}


class OfficialTextDB:
    """Records of one official text DB folder (TxtTokLmdb); max_txt_len=-1 keeps every text, as the default here."""

    def __init__(self, db_dir: str | Path, max_txt_len: int = -1):
        self.db_dir = Path(db_dir)
        if not self.db_dir.is_dir():
            raise OfficialDBError(f"official text DB folder {self.db_dir} does not exist")
        _require(self.db_dir / "data.mdb", "text DB (LMDB)")
        id2len = self._read_id2len(_require(self.db_dir / "id2len.json", "text DB"))
        self.id2len = {k: v for k, v in id2len.items() if max_txt_len == -1 or v <= max_txt_len}
        self.meta = self._read_meta(_require(self.db_dir / "meta.json", "text DB"))
        self.cls_, self.sep, self.mask, self.v_range = (self.meta[k] for k in ("CLS", "SEP", "MASK", "v_range"))
        self._db = _Lmdb(self.db_dir)
        self._db.check()

    @staticmethod
    def _read_id2len(path: Path) -> dict[str, int]:
        id2len = _read_json(path)
        if not isinstance(id2len, dict):
            raise OfficialDBError(f"{path} must map text ids to token counts, not a {type(id2len).__name__}")
        for text_id, length in id2len.items():
            if type(length) is not int or length < 0:
                raise OfficialDBError(f"{path}: the length of text {text_id!r} is {length!r}, not a non-negative "
                                      f"integer")
        return id2len

    @staticmethod
    def _read_meta(path: Path) -> dict:
        """meta.json with integer CLS, SEP, MASK (and UNK) ids below v_range = [first random-token id, vocab size]."""
        meta = _read_json(path)
        if not isinstance(meta, dict):
            raise OfficialDBError(f"{path} must be a JSON object with the keys CLS, SEP, MASK and v_range, not a "
                                  f"{type(meta).__name__}")
        missing = [k for k in ("CLS", "SEP", "MASK", "v_range") if k not in meta]
        if missing:
            raise OfficialDBError(f"{path} lacks the keys {missing}")
        v_range = meta["v_range"]
        if not (isinstance(v_range, list) and len(v_range) == 2 and all(type(v) is int for v in v_range)
                and 0 <= v_range[0] <= v_range[1]):
            raise OfficialDBError(f"{path}: v_range is {v_range!r}, expected [first id, vocabulary size] (two "
                                  f"integers, the first not above the second)")
        for key in ("CLS", "SEP", "MASK", "UNK"):
            if key in meta and (type(meta[key]) is not int or not 0 <= meta[key] < v_range[1]):
                raise OfficialDBError(f"{path}: {key} is {meta[key]!r}, not a token id below the vocabulary size "
                                      f"{v_range[1]}")
        for key in ("tokenizer", "toker"):
            if key in meta and not isinstance(meta[key], (str, type(None))):
                raise OfficialDBError(f"{path}: {key} is {meta[key]!r}, not a tokenizer name")
        return meta

    @property
    def ids(self) -> list[str]:
        return list(self.id2len)

    def __len__(self) -> int:
        return len(self.id2len)

    def __getitem__(self, text_id: str) -> dict:
        data = self._db.get(text_id.encode("utf-8"))
        if data is None:
            raise KeyError(f"text {text_id!r} is not in the official text DB {self.db_dir}")
        try:
            record = _unpack(lz4_decompress(data))
        except Exception as e:  # noqa: BLE001
            raise OfficialDBError(f"{self.db_dir}: the record {text_id!r} cannot be decoded ({e})") from None
        if not isinstance(record, dict):
            raise OfficialDBError(f"{self.db_dir}: the record {text_id!r} is a {type(record).__name__}, not a dict")
        return record

    @functools.cached_property
    def txt2img(self) -> dict:
        """{text id: image file name (or a list of them, NLVR2)}."""
        path = _require(self.db_dir / "txt2img.json", "text DB")
        txt2img = _read_json(path)
        if not isinstance(txt2img, dict):
            raise OfficialDBError(f"{path} must map text ids to image file names, not a {type(txt2img).__name__}")
        for text_id, fname in txt2img.items():
            if not (isinstance(fname, str) or isinstance(fname, list) and all(isinstance(f, str) for f in fname)):
                raise OfficialDBError(f"{path}: the image of text {text_id!r} is {fname!r}, not a file name (or a "
                                      f"list of them)")
        return txt2img

    @functools.cached_property
    def img2txts(self) -> dict:
        """{image file name: [text ids]}."""
        path = _require(self.db_dir / "img2txts.json", "text DB")
        img2txts = _read_json(path)
        if not isinstance(img2txts, dict):
            raise OfficialDBError(f"{path} must map image file names to lists of text ids, not a "
                                  f"{type(img2txts).__name__}")
        for fname, text_ids in img2txts.items():
            if not isinstance(text_ids, list) or not all(isinstance(t, str) for t in text_ids):
                raise OfficialDBError(f"{path}: the texts of image {fname!r} are {text_ids!r}, not a list of text "
                                      f"ids")
        return img2txts


def open_image_db(img_dir: str | Path, conf_th: float, max_bb: int, min_bb: int, num_bb: int,
                  compress: bool | None) -> OfficialImageDB:
    """compress=None picks whichever variant exists, the compressed one first."""
    if compress is not None:
        return OfficialImageDB(img_dir, conf_th, max_bb, min_bb, num_bb, compress)
    try:
        return OfficialImageDB(img_dir, conf_th, max_bb, min_bb, num_bb, True)
    except MissingLmdbError:  # only an absent variant: a damaged one is reported as it is
        return OfficialImageDB(img_dir, conf_th, max_bb, min_bb, num_bb, False)
