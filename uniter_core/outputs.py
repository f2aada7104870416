"""Output folders that a command builds as a whole, and never at the cost of files it did not write.

A command that writes a folder (a corpus, a statistics export) goes through `OutputFolder`:
- `check()` before any work: a path under a plain file, an existing `--out` holding files the command did not
  write, or a `OUT.partial` that is not the command's own are refused with one sentence; a finished output of
  the same command is reported done (and `--force` replaces it, but only when everything in it is the
  command's own);
- `start(settings)` opens `OUT.partial`: a partial of an interrupted run with the same settings is kept and
  resumed (its finished pieces are reused), one with other settings is the command's own and is wiped;
- `building()` wraps the work: on SIGINT/SIGTERM or a full disk the partial stays and the message names it;
- `finish()` marks the folder as the command's and moves it into place (two renames).
The marker is `.written-by.json` ({"command": ...}); outputs written before it existed are recognised by
`legacy`, a test on the finished folder (e.g. the corpus manifest's `kind`).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Callable, Iterator

from uniter_core.errors import EnvironmentFailure, Interrupted, UserError
from uniter_core.io import remove_stale_temporaries, replace_dir, write_json

OWNER_FILE = ".written-by.json"
SETTINGS_FILE = ".settings.json"
LOCK_FILE = ".lock"


class OutputError(UserError):
    """An output path the command must not (or cannot) write to."""


class PartialKept(UserError):
    """A failure after OUT.partial was started: the message adds what is kept and how to resume."""

    def __init__(self, message: str, kept: str, exit_code: int = 2):
        super().__init__(f"{message}; {kept}")
        self.exit_code = exit_code


def check_writable_location(path: Path, what: str = "--out", replaced: bool = False) -> None:
    """Refuse a path whose nearest existing ancestor is not a folder (e.g. `--out /tmp/file/sub`), a dangling
    symbolic link, and (`replaced`: the folder will be swapped for a new one) any symbolic link."""
    path = Path(path)
    if path.is_symlink() and (replaced or not path.exists()):
        raise OutputError(f"{what} {path} is a symbolic link{'' if path.exists() else ' to nothing'}; give the "
                          f"real folder")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is a file, not a folder")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise EnvironmentFailure(f"{what} {path}: {parent} is not writable (permission denied)")


def lock_folder(folder: Path, busy: str):
    """An advisory lock (folder/.lock) held until the returned handle is closed or the process ends; OutputError
    `busy` when another process holds it."""
    handle = open(folder / LOCK_FILE, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise OutputError(busy) from None
    return handle


def _read_owner(folder: Path, name: str) -> dict | None:
    try:
        value = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class OutputFolder:
    def __init__(self, out: str | os.PathLike, command: str, finished: str, force: bool = False,
                 legacy: Callable[[Path], bool] | None = None, own_entries: Callable[[str], bool] | None = None):
        """`finished`: the file written last (its presence means done); `own_entries(name)`: whether a top-level
        name belongs to this command's output (what `--force` may replace)."""
        self.out = Path(out) if Path(out).name else Path(out).resolve()  # "." has no name to append to
        self.partial = self.out.with_name(self.out.name + ".partial")
        self._lock = None
        self.command, self.finished, self.force = command, finished, force
        self.legacy = legacy or (lambda folder: False)
        self.own_entries = own_entries or (lambda name: True)

    # --- ownership
    def _is_own(self, folder: Path) -> bool:
        owner = _read_owner(folder, OWNER_FILE)
        if owner is not None:
            return owner.get("command") == self.command
        return (folder / self.finished).exists() and self.legacy(folder)

    def _is_own_partial(self) -> bool:
        settings = _read_owner(self.partial, SETTINGS_FILE) or _read_owner(self.partial, OWNER_FILE)
        return settings is not None and settings.get("command", self.command) == self.command

    @property
    def done(self) -> bool:
        return (self.out / self.finished).exists() and self._is_own(self.out)

    def check(self) -> bool:
        """Refuse what must not be touched; True when a finished output is there and no --force was given."""
        check_writable_location(self.out, replaced=True)
        entries = sorted(p.name for p in self.out.iterdir()) if self.out.is_dir() else []
        if entries:
            if not self._is_own(self.out):
                raise OutputError(f"--out {self.out} already holds files that {self.command} did not write "
                                  f"(e.g. {entries[0]}); choose a new folder or empty this one")
            if not (self.out / self.finished).exists():
                raise OutputError(f"--out {self.out} is an unfinished output of {self.command} without "
                                  f"{self.finished}; remove it by hand or choose a new folder")
            if not self.force:
                return True
            foreign = [e for e in entries if e not in (OWNER_FILE, SETTINGS_FILE) and not self.own_entries(e)]
            if foreign:
                raise OutputError(f"--force would delete {self.out / foreign[0]}, which {self.command} did not "
                                  f"write; move it away first")
        if self.partial.exists():
            if not self.partial.is_dir() or not self._is_own_partial():
                raise OutputError(f"{self.partial} exists and is not a partial output of {self.command}; "
                                  f"remove it or choose another --out")
        return False

    # --- building
    def start(self, settings: dict) -> Path:
        """`OUT.partial`, resumed when its settings match, else emptied (it is this command's own)."""
        settings = json.loads(json.dumps({"command": self.command, **settings}))  # as it will read back
        if self.partial.exists():
            self._take_lock()  # before anything in it is touched: another run of the command may own it
            if _read_owner(self.partial, SETTINGS_FILE) != settings:
                self._release_lock()
                shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        remove_stale_temporaries(self.partial, recursive=True)  # a killed run's half-written files: all ours
        write_json(self.partial / SETTINGS_FILE, settings, indent=None)
        return self.partial

    def _take_lock(self) -> None:
        """An advisory lock on OUT.partial: two runs of a command never build the same output at once."""
        if self._lock is not None:
            return
        self._lock = lock_folder(self.partial, f"{self.partial} is being written by another {self.command} right "
                                               f"now; wait for it or choose another --out")

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @contextlib.contextmanager
    def building(self) -> Iterator[Path]:
        """The work on `OUT.partial`; an interruption or a machine failure says what is kept."""
        kept = f"{self.partial} keeps the finished pieces; run the same command again to resume"
        try:
            yield self.partial
        except (Interrupted, KeyboardInterrupt) as error:
            signum = getattr(error, "signum", 2)
            raise Interrupted(signum, kept) from None
        except OSError as error:
            from uniter_core.cli import describe_os_error
            raise EnvironmentFailure(f"{describe_os_error(error)}; {kept}") from None
        except PartialKept:
            raise
        except UserError as error:  # e.g. a damaged input found half-way: fix it and the rerun resumes
            raise PartialKept(str(error), kept, error.exit_code) from None

    def finish(self) -> Path:
        """Mark the partial as this command's, move it into place, then drop the build's own bookkeeping (a
        failure of the move leaves a partial that the same command still recognises and resumes)."""
        write_json(self.partial / OWNER_FILE, {"command": self.command})
        (self.partial / LOCK_FILE).unlink(missing_ok=True)
        replace_dir(self.partial, self.out)
        self._release_lock()
        (self.out / SETTINGS_FILE).unlink(missing_ok=True)
        return self.out


def check_output_file(path: str | os.PathLike, command: str, is_own: Callable[[Path], bool],
                      what: str = "--out") -> None:
    """Refuse an output file whose path is under a plain file, or that exists and `is_own` does not recognise
    as an earlier output of `command` (which may be replaced)."""
    path = Path(path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EnvironmentFailure(f"{what} {path}: {parent} is not writable (permission denied)")
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    if path.exists():
        try:
            own = bool(is_own(path))
        except Exception:  # a recogniser that trips over a foreign file's content: the file is not ours
            own = False
        if not own:
            raise OutputError(f"{what} {path} exists and was not written by {command}; choose another name "
                              f"or move it away")


def first_line(path: Path, limit: int = 4096) -> str:
    """The first line of a text file (empty when unreadable as UTF-8)."""
    with open(path, "rb") as f:
        return f.read(limit).split(b"\n", 1)[0].decode("utf-8", errors="replace")


def png_text(path: Path, limit: int = 64) -> dict[str, str]:
    """The tEXt chunks before the image data of a PNG file ({} for a file that is not a PNG)."""
    text: dict[str, str] = {}
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return text
        for _ in range(limit):
            header = f.read(8)
            if len(header) < 8:
                break
            length, kind = struct.unpack(">I4s", header)
            if kind in (b"IDAT", b"IEND") or length > 1 << 20:
                break
            data = f.read(length)
            f.seek(4, 1)  # CRC
            if kind == b"tEXt" and b"\0" in data:
                key, value = data.split(b"\0", 1)
                text[key.decode("latin-1")] = value.decode("latin-1")
    return text
