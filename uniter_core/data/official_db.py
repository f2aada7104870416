"""The official UNITER LMDB databases (ChenRocks/UNITER data/data.py): read them, write them, convert them.

Users who own the official feature and text DBs should be able to train on them unchanged, so the readers follow
the official on-disk format byte for byte:

Image DB folder (one per image split, e.g. img_db/coco_train2014/):
    feat_th{conf_th}_max{max_bb}_min{min_bb}[_compressed]/  LMDB whose rows are already cut to nbb, with
    nbb_th{conf_th}_max{max_bb}_min{min_bb}.json           {img_fname: nbb} beside it;
    all[_compressed]/                                      LMDB with every box, used when that JSON is absent
                                                           (nbb = clip(#(conf > conf_th), min_bb, max_bb));
    feat_numbb{num_bb}[_compressed]/                       fixed number of boxes (conf_th = -1).
  Key: image file name (utf-8); value: msgpack + msgpack_numpy dict, or np.savez_compressed bytes when
  compressed; fields features [n, 2048], norm_bb [n, 6], conf [n], soft_labels [n, 1601], fp16.
  Key b"__keys__": JSON list of all image file names.
Text DB folder: LMDB in the folder itself, key = text id, value = lz4.frame(msgpack(record)); records carry
  input_ids (no [CLS]/[SEP]) and img_fname; id2len.json, txt2img.json, img2txts.json and meta.json (CLS, SEP,
  MASK, UNK, v_range, tokenizer) beside it.

Convert a pair into the corpus-folder layout of build_corpus (img_db feature store + txt_db/<name>.jsonl):
    python -m uniter_core.data.official_db --img-db DIR [DIR ...] --txt-db DIR [DIR ...] --out DIR
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import os
import shutil
import threading
from pathlib import Path

import lmdb
import msgpack
import msgpack_numpy
import numpy as np
from lz4.frame import compress as lz4_compress
from lz4.frame import decompress as lz4_decompress
from tqdm import tqdm

from uniter_core.cli import exit_with, output_path, run_command
from uniter_core.data.corpus_writer import CorpusWriter
from uniter_core.data.regions import RegionFeatures
from uniter_core.data.store import FIELDS, StoreError
from uniter_core.io import replace_dir, write_json

KEYS = b"__keys__"
CAPTION_FIELDS = ("raw", "caption", "sentence", "sent", "text", "question")


class OfficialDBError(StoreError):
    """An official UNITER DB folder is missing, incomplete or malformed."""


class MissingLmdbError(OfficialDBError):
    """An image DB folder lacks the LMDB variant asked for (open_image_db then tries the other one)."""


# --- encoding (msgpack_numpy's hooks passed explicitly instead of patching msgpack for the whole process) ---

def _pack(obj) -> bytes:
    return msgpack.packb(obj, default=msgpack_numpy.encode, use_bin_type=True)


def _unpack(data: bytes):
    return msgpack.unpackb(data, object_hook=msgpack_numpy.decode, raw=False)


def encode_image_dump(dump: dict[str, np.ndarray], compress: bool) -> bytes:
    if not compress:
        return _pack(dump)
    with io.BytesIO() as buffer:
        np.savez_compressed(buffer, **dump)
        return buffer.getvalue()


def decode_image_dump(data: bytes, compress: bool) -> dict[str, np.ndarray]:
    if not compress:
        return _unpack(data)
    # old numpy also stored a stray `allow_pickle` entry in the official dumps; only named fields are read.
    # Unlike the official reader, pickled objects are refused: a feature DB holds numbers only.
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def compute_num_bb(conf: np.ndarray, conf_th: float, min_bb: int, max_bb: int) -> int:
    """The official dynamic box count: boxes above the confidence threshold, clipped to [min_bb, max_bb]."""
    return int(min(max_bb, max(min_bb, int((np.asarray(conf) > conf_th).sum()))))


def nbb_file_name(conf_th: float, max_bb: int, min_bb: int) -> str:
    return f"nbb_th{float(conf_th)}_max{max_bb}_min{min_bb}.json"


def image_db_name(conf_th: float, max_bb: int, min_bb: int, num_bb: int, compress: bool,
                  keep_all: bool = False) -> str:
    """LMDB folder name, as scripts/convert_imgdir.py writes it."""
    if keep_all:
        name = "all"
    elif conf_th == -1:
        name = f"feat_numbb{num_bb}"
    else:
        name = f"feat_th{float(conf_th)}_max{max_bb}_min{min_bb}"
    return name + "_compressed" if compress else name


_ENVS: dict[tuple[str, int], tuple[int, lmdb.Environment]] = {}
_ENVS_LOCK = threading.Lock()
os.register_at_fork(after_in_child=lambda: globals().update(_ENVS_LOCK=threading.Lock()))


def _environment(path: Path) -> lmdb.Environment:
    """One read-only environment per LMDB file and process.

    py-lmdb refuses to open the same files twice in one process, and an environment inherited through fork
    (DataLoader workers) must not be used by the child, so the child closes its copy and opens its own.
    """
    data = path / "data.mdb"
    try:
        key = (str(path.resolve()), os.stat(data).st_ino)
    except OSError as e:
        raise OfficialDBError(f"{data} cannot be opened ({e.strerror or e})") from None
    with _ENVS_LOCK:
        pid, env = _ENVS.get(key, (None, None))
        if pid != os.getpid():
            if env is not None:
                env.close()  # the parent's handle: closing the child's copy leaves the parent's intact
            try:
                env = lmdb.open(str(path), readonly=True, create=False, lock=False, readahead=False)
            except lmdb.Error as e:
                raise OfficialDBError(f"{data} is not a readable LMDB file ({_lmdb_reason(e, path)})") from None
            _check_complete(env, data)
            _ENVS[key] = (os.getpid(), env)
        return env


def _lmdb_reason(error: lmdb.Error, path: Path) -> str:
    """py-lmdb's message without the folder name it starts with."""
    return str(error).removeprefix(f"{path}: ").strip() or type(error).__name__


def _check_complete(env: lmdb.Environment, data: Path) -> None:
    """Refuse (and close) an LMDB whose file is shorter than its last page: reading there would be a SIGBUS."""
    try:
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        size = os.path.getsize(data)
    except (lmdb.Error, OSError) as e:
        env.close()
        raise OfficialDBError(f"{data} is not a readable LMDB file ({e})") from None
    if size < needed:
        env.close()
        raise OfficialDBError(f"{data} is truncated: it has {size} bytes but its pages need {needed} (copy it "
                              f"again from the source)")


class _Lmdb:
    """Read-only LMDB, opened on first use in each process; one short read transaction per lookup."""

    def __init__(self, path: Path):
        self.path = path

    def check(self) -> None:
        """Open the LMDB now (OfficialDBError if it is not one, or truncated) rather than at the first read."""
        _environment(self.path)

    def get(self, key: bytes) -> bytes | None:
        try:
            with _environment(self.path).begin(buffers=False) as txn:
                return txn.get(key)
        except lmdb.Error as e:
            raise OfficialDBError(f"{self.path / 'data.mdb'} is damaged ({_lmdb_reason(e, self.path)})") from None

    def keys(self) -> list[str]:
        stored = self.get(KEYS)
        if stored is not None:
            try:
                keys = json.loads(stored.decode("utf-8"))
            except ValueError:
                keys = None
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise OfficialDBError(f"{self.path / 'data.mdb'}: the __keys__ entry is not a JSON list of names")
            return keys
        try:
            with _environment(self.path).begin() as txn:
                return [k.decode("utf-8") for k in txn.cursor().iternext(keys=True, values=False) if k != KEYS]
        except (lmdb.Error, UnicodeDecodeError) as e:
            raise OfficialDBError(f"{self.path / 'data.mdb'} is damaged ({e})") from None


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise OfficialDBError(f"{path.parent} is not a complete official UNITER {what}: {path.name} is missing")
    return path


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise OfficialDBError(f"{path} is not readable JSON ({e})") from None


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


# --- writers ---

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


# --- converter to the corpus-folder layout ---

def open_image_db(img_dir: str | Path, conf_th: float, max_bb: int, min_bb: int, num_bb: int,
                  compress: bool | None) -> OfficialImageDB:
    """compress=None picks whichever variant exists, the compressed one first."""
    if compress is not None:
        return OfficialImageDB(img_dir, conf_th, max_bb, min_bb, num_bb, compress)
    try:
        return OfficialImageDB(img_dir, conf_th, max_bb, min_bb, num_bb, True)
    except MissingLmdbError:  # only an absent variant: a damaged one is reported as it is
        return OfficialImageDB(img_dir, conf_th, max_bb, min_bb, num_bb, False)


def _text_name(db_dir: Path) -> str:
    return db_dir.name[:-3] if db_dir.name.endswith(".db") else db_dir.name


def _text_rows(db: OfficialTextDB) -> list[dict]:
    rows = []
    vocab_size = db.v_range[1]
    for text_id in db.ids:
        try:
            record = db[text_id]
        except KeyError:
            raise OfficialDBError(f"{db.db_dir}: id2len.json lists the text {text_id!r} but the LMDB has no record "
                                  f"of it") from None
        fname = record.get("img_fname")
        input_ids = record.get("input_ids")
        if not isinstance(input_ids, list):
            raise OfficialDBError(f"{db.db_dir}: record {text_id!r} has no input_ids list")
        bad = next((i for i in input_ids if not isinstance(i, (int, np.integer)) or isinstance(i, bool)
                    or not 0 <= i < vocab_size), None)
        if bad is not None:
            raise OfficialDBError(f"{db.db_dir}: record {text_id!r} has the input id {bad!r}, not a token id "
                                  f"below the vocabulary size {vocab_size} of meta.json")
        if not isinstance(fname, str):
            raise OfficialDBError(f"{db.db_dir}: record {text_id!r} has img_fname {fname!r}; only single-image "
                                  f"text DBs (pre-training, retrieval, VQA, VE) can be converted")
        caption = next((record[k] for k in CAPTION_FIELDS if isinstance(record.get(k), str)), "")
        rows.append({"text_id": str(text_id), "image_id": fname, "caption": caption,
                     "input_ids": [int(i) for i in record["input_ids"]], "alignment": []})
    return rows


def _text_meta(dbs: list[OfficialTextDB]) -> dict:
    first = dbs[0].meta
    for db in dbs[1:]:
        if any(db.meta.get(k) != first.get(k) for k in ("CLS", "SEP", "MASK", "v_range")):
            raise OfficialDBError(f"{db.db_dir} uses other special token ids than {dbs[0].db_dir}")
    return {"tokenizer": first.get("tokenizer", first.get("toker")), "vocab_size": first["v_range"][1],
            "special_tokens": {"[CLS]": first["CLS"], "[SEP]": first["SEP"], "[MASK]": first["MASK"],
                               "[UNK]": first.get("UNK", 100), "[PAD]": 0},
            "alignment": "none: official text DBs carry no word-region alignment",
            "official_meta": {_text_name(db.db_dir): db.meta for db in dbs}}


def convert(args: argparse.Namespace) -> Path:
    out: Path = args.out
    corpus = CorpusWriter(out, "official_db", kind="official", force=args.force)
    if corpus.check():
        return out
    compress = {"auto": None, "yes": True, "no": False}[args.compress]
    txt_dbs = [OfficialTextDB(d, args.max_txt_len) for d in args.txt_db]
    names = [_text_name(db.db_dir) for db in txt_dbs]
    if len(set(names)) != len(names):
        raise OfficialDBError(f"the text DBs {[str(d) for d in args.txt_db]} would share a split name")
    rows = {name: _text_rows(db) for name, db in zip(names, txt_dbs)}
    img_dbs = [open_image_db(d, args.conf_th, args.max_bb, args.min_bb, args.num_bb, compress) for d in args.img_db]
    source: dict[str, OfficialImageDB] = {}
    for name, db in zip(names, txt_dbs):
        for row in rows[name]:
            fname = row["image_id"]
            if fname not in source:
                holder = next((i for i in img_dbs if fname in i), None)
                if holder is None:
                    raise OfficialDBError(f"{db.db_dir} refers to image {fname!r}, which is in none of the image "
                                          f"DBs {[str(d) for d in args.img_db]}")
                source[fname] = holder
    fnames = sorted(source)
    if not fnames:
        raise OfficialDBError(f"the text DBs {[str(d) for d in args.txt_db]} contain no texts")

    run_args = {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v)
                for k, v in vars(args).items() if k not in ("out", "force")}
    first = source[fnames[0]][fnames[0]]
    num_classes = first["soft_labels"].shape[1]
    class_names = ["__background__"] + [f"class_{i}" for i in range(1, num_classes)]
    with corpus.building(run_args, first["features"].shape[1], class_names, background_class=True):
        for shard, chunk, done in corpus.shards(fnames, args.shard_size, "converting images"):
            if done:
                continue
            records = []
            for fname in chunk:
                dump = source[fname][fname]
                meta = {"image_id": fname, "width": None, "height": None, "source": str(source[fname].db_path)}
                records.append((meta, RegionFeatures(**dump)))
            try:
                corpus.write_shard(shard, records)
            except StoreError as e:  # e.g. NaN features: name the official DB they came from
                bad = next((f for f in chunk if repr(f) in str(e)), chunk[0])
                raise OfficialDBError(f"{source[bad].db_path}: {e}") from None
        corpus.finish(
            {"source": f"official UNITER image DBs {[str(d) for d in args.img_db]}",
             "extractor": "the official DB's detector (Faster R-CNN, 1600 Visual Genome classes + background)",
             "nbb": {"conf_th": args.conf_th, "max_bb": args.max_bb, "min_bb": args.min_bb, "num_bb": args.num_bb}},
            rows, _text_meta(txt_dbs),
            {"image_dbs": run_args["img_db"], "text_dbs": run_args["txt_db"],
             "splits": {n: {"images": len({r["image_id"] for r in rows[n]}), "captions": len(rows[n])}
                        for n in names},
             "build_args": run_args})
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-db", required=True, nargs="+", type=Path, help="official image DB folder(s)")
    p.add_argument("--txt-db", required=True, nargs="+", type=Path, help="official text DB folder(s)")
    p.add_argument("--out", required=True, type=output_path, help="output corpus folder")
    p.add_argument("--conf-th", type=float, default=0.2, help="box confidence threshold (-1: fixed --num-bb)")
    p.add_argument("--max-bb", type=int, default=100, help="most boxes per image (default 100)")
    p.add_argument("--min-bb", type=int, default=10, help="fewest boxes per image (default 10)")
    p.add_argument("--num-bb", type=int, default=36, help="boxes per image when --conf-th is -1 (default 36)")
    p.add_argument("--compress", choices=("auto", "yes", "no"), default="auto",
                   help="read the *_compressed LMDB (default: whichever exists, compressed first)")
    p.add_argument("--max-txt-len", type=int, default=-1, help="drop longer texts (default -1: keep all)")
    p.add_argument("--shard-size", type=int, default=500, help="images per feature shard (the resume unit)")
    p.add_argument("--force", action="store_true", help="convert again even if OUT is complete")
    args = p.parse_args(argv)
    if args.shard_size < 1 or args.min_bb < 1 or args.max_bb < args.min_bb:
        p.error("--shard-size and --min-bb must be >= 1 and --max-bb >= --min-bb")
    return args


def convert_command(args: argparse.Namespace) -> int:
    print(f"corpus ready: {convert(args)}")
    return 0


def main(argv=None) -> int:
    return run_command(lambda: convert_command(parse_args(argv)))


if __name__ == "__main__":
    exit_with(main())
