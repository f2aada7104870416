"""Atomic file writing: every file the project writes appears whole or not at all.

A reader (the app, a resumed job, another rank) must never see a half-written file, so everything is written
to a temporary name in the same folder and moved into place with `os.replace`, which is atomic on POSIX.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from uniter_core.errors import UserError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # e.g. --out /tmp/file/sub: say which part is a file
        parent = next(p for p in [path.parent, *path.parent.parents] if p.exists())
        raise NotADirectoryError(errno.ENOTDIR, f"cannot be written: {parent} is a file, not a folder",
                                 str(path)) from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file owner-only; give it the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str] | None = None,
                             recursive: bool = False) -> list[Path]:
    """Remove the temporary files that `atomic_path` leaves when its process is killed (SIGKILL gives it no
    chance to clean up). Only the caller knows the folder is its own and locked, so only it may call this;
    `names` limits the sweep to temporaries of those file names. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for candidate in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        match = _TEMPORARY.fullmatch(candidate.name)
        if match and candidate.is_file() and not candidate.is_symlink() and (names is None or match[1] in names):
            candidate.unlink()
            removed.append(candidate)
    return removed


_TEMPORARY = re.compile(r"\.(.+)\.[A-Za-z0-9_]{8}\.tmp")  # what mkstemp makes in atomic_path


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class JsonlError(UserError, ValueError):
    """A JSON or JSON-lines file that cannot be read; the message names the file (and line)."""


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) per non-blank line; a line that is not UTF-8 JSON of an object raises JsonlError
    naming the file and the line. A missing file raises the usual OSError."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise JsonlError(f"{path}, line {number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                 f"{e.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise JsonlError(f"{path}, line {number}: not valid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(row, dict):
                raise JsonlError(f"{path}, line {number}: expected a JSON object, found {type(row).__name__}")
            yield number, row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def read_text(path: str | os.PathLike, what: str = "file", error: type[UserError] = JsonlError) -> str:
    """A UTF-8 text file; missing, unreadable (a folder, permissions) or not UTF-8: `error` naming `<what> <path>`."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except OSError as e:
        raise error(f"{what} {path} cannot be read ({e.strerror or e})") from None


def read_json(path: str | os.PathLike, what: str = "JSON file"):
    """The parsed content of a JSON file; missing, unreadable or malformed: JsonlError `<what> <path> ...`."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JsonlError(f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    buffer = io.BytesIO()  # np.save's own writes report a full disk without errno; a plain write says ENOSPC
    np.save(buffer, array)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move a finished folder into place, replacing an older one (the swap itself is two renames)."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}-{time.time_ns()}")  # a fresh name: never a user's
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
