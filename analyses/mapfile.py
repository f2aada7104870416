"""The .npz exchange format for attention maps (classify_maps input, the gold set, app downloads).

One archive holds maps i = 0, 1, ... (any non-negative integers) as three arrays each:
    map_<i>        [n, n] float, rows = queries, columns = keys, layout [CLS] words [SEP] regions
    n_text_<i>     integer scalar, text positions including [CLS] and [SEP]
    n_regions_<i>  integer scalar, region positions; n_text + n_regions = n
Rows are attention distributions: finite, non-negative and summing to 1 (within ROW_SUM_TOL). Reading
validates everything and raises one MapFileError sentence naming the file and the first problem found.
"""
from __future__ import annotations

import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uniter_core.errors import UserError
from uniter_core.io import atomic_path

ROW_SUM_TOL = 0.02  # tolerant of float16 storage
_KEY = re.compile(r"^(map|n_text|n_regions)_(\d+)$")


class MapFileError(UserError, ValueError):
    """A maps file that cannot be used; the message names the file and the problem."""


@dataclass
class MapRecord:
    index: int
    map: np.ndarray  # [n, n] float32
    n_text: int
    n_regions: int


def write_maps(path: str | Path, records: list[MapRecord], dtype=np.float32) -> None:
    """Write records atomically as a compressed .npz (under their own indices); float16 halves the size of
    files kept in the repository (rows still sum to 1 within ROW_SUM_TOL)."""
    arrays = {}
    for r in records:
        arrays[f"map_{r.index}"] = np.asarray(r.map, dtype)
        arrays[f"n_text_{r.index}"] = np.int64(r.n_text)
        arrays[f"n_regions_{r.index}"] = np.int64(r.n_regions)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the temporary name
            np.savez_compressed(f, **arrays)


def _array(archive, key: str, where: str) -> np.ndarray:
    """archive[key] as an array; a member that is not a valid .npy (numpy hands back its raw bytes) is refused."""
    value = archive[key]
    if not isinstance(value, np.ndarray):
        raise MapFileError(f"{where}: {key}.npy is not a valid .npy array (the archive member is damaged or of "
                           f"another kind)")
    return value


def _scalar(archive, key: str, where: str) -> int:
    value = _array(archive, key, where)
    if value.shape != () or not np.issubdtype(value.dtype, np.integer):
        raise MapFileError(f"{where}: {key} must be an integer scalar, got {value.dtype} array of shape "
                           f"{value.shape}")
    return int(value)


def _check_map(a: np.ndarray, key: str, n_text: int, n_regions: int, where: str) -> np.ndarray:
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise MapFileError(f"{where}: {key} has shape {a.shape}, not a square [n, n] map")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise MapFileError(f"{where}: {key} has dtype {a.dtype}, not a number type")
    if n_text < 2:
        raise MapFileError(f"{where}: n_text of {key} is {n_text}, but it counts [CLS] and [SEP] (at least 2)")
    if n_regions < 1:
        raise MapFileError(f"{where}: n_regions of {key} is {n_regions}, but a map needs at least one region")
    if n_text + n_regions != a.shape[0]:
        raise MapFileError(f"{where}: {key} is {a.shape[0]}x{a.shape[1]} but n_text {n_text} + n_regions "
                           f"{n_regions} = {n_text + n_regions}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise MapFileError(f"{where}: {key} contains NaN or infinite values")
    if (a < 0).any():
        raise MapFileError(f"{where}: {key} contains negative values ({a.min():.3g}); attention is non-negative")
    sums = a.sum(1)
    bad = np.flatnonzero(np.abs(sums - 1) > ROW_SUM_TOL)
    if len(bad):
        raise MapFileError(f"{where}: row {bad[0]} of {key} sums to {sums[bad[0]]:.4g}, not 1 (attention rows "
                           f"are probability distributions)")
    return a


# What numpy and zipfile raise for a damaged archive or member (truncated, bad CRC, unknown compression)
_DAMAGED_ARCHIVE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)


def read_maps(path: str | Path) -> list[MapRecord]:
    """All maps of a file, sorted by index, validated (see the module docstring)."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise MapFileError(f"{where}: no such file")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as error:
        raise MapFileError(f"{where}: cannot be read ({error.strerror or error})") from None
    if magic.startswith(b"\x93NUMPY"):
        raise MapFileError(f"{where}: is a single .npy array, not an .npz archive of map_<i> arrays")
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise MapFileError(f"{where}: not a readable .npz archive: it is not a zip file, so not an .npz archive "
                           f"of map_<i>, n_text_<i> and n_regions_<i> arrays")
    try:
        archive = np.load(path, allow_pickle=False)
    except _DAMAGED_ARCHIVE as error:
        raise MapFileError(f"{where}: not a readable .npz archive ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise MapFileError(f"{where}: is a single .npy array, not an .npz archive of map_<i> arrays")
    with archive:
        keys = archive.files
        unknown = [k for k in keys if not _KEY.match(k)]
        if unknown:
            raise MapFileError(f"{where}: unexpected array {unknown[0]!r} (expected map_<i>, n_text_<i>, "
                               f"n_regions_<i>)")
        indices = sorted({int(_KEY.match(k).group(2)) for k in keys})
        if not indices:
            raise MapFileError(f"{where}: holds no map_<i> arrays")
        records = []
        for i in indices:
            for prefix in ("map", "n_text", "n_regions"):
                if f"{prefix}_{i}" not in keys:
                    raise MapFileError(f"{where}: {prefix}_{i} is missing (every map_<i> needs n_text_<i> and "
                                       f"n_regions_<i>)")
            try:
                n_text = _scalar(archive, f"n_text_{i}", where)
                n_regions = _scalar(archive, f"n_regions_{i}", where)
                a = _check_map(_array(archive, f"map_{i}", where), f"map_{i}", n_text, n_regions, where)
            except _DAMAGED_ARCHIVE as error:  # a damaged member: bad CRC, compression data or method
                if isinstance(error, MapFileError):
                    raise
                raise MapFileError(f"{where}: entry {i} cannot be read ({error})") from None
            records.append(MapRecord(i, a, n_text, n_regions))
    return records
