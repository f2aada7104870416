"""Low-level read access to the files of an official DB folder, shared by the image and text readers.

py-lmdb allows one handle per LMDB file and process, and a handle inherited through fork must not be used, so
the environments are cached here per process; a truncated LMDB is refused before a read could hit a SIGBUS.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import lmdb

from .format import KEYS, OfficialDBError

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
