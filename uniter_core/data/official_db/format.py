"""The on-disk format of the official UNITER DBs, shared by the readers and the writers: how a row is encoded,
how the LMDB folders and nbb files are named, how many boxes an image keeps, and the errors of this package.

The layout itself is described in the package docstring (uniter_core/data/official_db/__init__.py).
"""
from __future__ import annotations

import io

import msgpack
import msgpack_numpy
import numpy as np

from uniter_core.data.store import StoreError

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
