"""Atomic file writing: every file the project writes appears whole or not at all.

A reader (the app, a resumed job, another rank) must never see a half-written file, so everything is written
to a temporary name in the same folder and moved into place with `os.replace`, which is atomic on POSIX.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move a finished folder into place, replacing an older one (the swap itself is two renames)."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


def resumable_work_dir(out: str | os.PathLike, settings: dict) -> Path:
    """The folder `OUT.partial` in which a long job builds `out`.

    A partial folder left by an interrupted run is kept (its finished pieces are reused) only if it was made
    with the same `settings`; otherwise it is wiped. Call `finish_work_dir` when everything is written.
    """
    out = Path(out)
    work = out.with_name(out.name + ".partial")
    settings_file = work / ".settings.json"
    settings = json.loads(json.dumps(settings))  # normalise tuples/paths as they will read back
    if work.exists() and (not settings_file.exists() or json.loads(settings_file.read_text()) != settings):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json(settings_file, settings, indent=None)
    return work


def finish_work_dir(work: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move a completed `OUT.partial` into place as `out`."""
    (Path(work) / ".settings.json").unlink(missing_ok=True)
    replace_dir(work, out)
