"""One entry wrapper for every command: the project's errors become one line and an exit code, never a traceback.

    def main(argv=None) -> int:
        return run_command(_main, argv)

- UserError (and its subclasses ConfigError, StoreError, InputError, ...): `error: <message>`, exit 2.
- OSError and EnvironmentFailure (disk full, permission denied): `error: <file>: <reason>`, exit 1. An output
  path under a plain file is the user's mistake: exit 2.
- SIGINT / SIGTERM: `interrupted (SIGINT): <what was kept>`, exit 130 / 143. SIGTERM is turned into the same
  exception as SIGINT so that `finally` blocks and partial-output cleanup run for both.
Anything else keeps its traceback: it is a bug.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Callable

from uniter_core.errors import EnvironmentFailure, Interrupted, UserError


def _in_finalizer(frame) -> bool:
    """Whether the signal interrupted an object's __del__: an exception raised there is printed as 'Exception
    ignored' and lost, so the interruption would vanish."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _raise_interrupted(signum, frame):
    if _in_finalizer(frame):  # deliver it again a moment later, outside the finalizer
        import threading
        threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
        return
    raise Interrupted(signum)


def describe_os_error(error: OSError) -> str:
    """`<file>: <reason>` for an OSError, e.g. `/tmp/f/sub: Not a directory`."""
    reason = error.strerror or str(error)
    names = [n for n in (error.filename, error.filename2) if n]
    return f"{' -> '.join(map(str, names))}: {reason}" if names else reason


def report(error: BaseException, stream=None) -> int:
    """Print one line for `error` and return its exit code."""
    stream = stream or sys.stderr
    if isinstance(error, Interrupted):
        print(f"interrupted ({error.signal_name})" + (f": {error.message}" if error.message else ""), file=stream)
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        print("interrupted (SIGINT)", file=stream)
        return 130
    if isinstance(error, UserError):
        print(f"error: {error}", file=stream)
        return error.exit_code
    if isinstance(error, OSError):
        print(f"error: {describe_os_error(error)}", file=stream)
        return EnvironmentFailure.exit_code
    raise error


@contextlib.contextmanager
def signals_raise():
    """SIGINT and SIGTERM raise Interrupted inside the block (main thread only); the old handlers come back after."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


class StopRequest:
    """Signals become a request that a loop checks between units of work (training steps): the first SIGINT or
    SIGTERM sets `signum`; a second one raises Interrupted at once."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after the current step (send it again to stop now)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequest":
        import threading
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}


def warn(message: str) -> None:
    """A command's warning (a damaged checkpoint skipped, a log repaired): one line on stderr, at once."""
    print(message, file=sys.stderr, flush=True)


def run_command(function: Callable, *args, **kwargs) -> int:
    """function(*args, **kwargs) as a command: its int result (None: 0) or the exit code of its failure. The
    same whether the command runs as `python -m ...` or as its console script (`uniter-train`, ...)."""
    try:
        with signals_raise():
            result = function(*args, **kwargs)
        code = 0 if result is None else int(result)
    except (Interrupted, KeyboardInterrupt) as error:
        _quiet_finalizers()
        code = report(error)
    except (UserError, OSError) as error:
        code = report(error)
    finally:
        pipe_closed = _flush_stdout()
    return code or 1 if pipe_closed else code


def _quiet_finalizers() -> None:
    """After an interrupt, objects the signal caught half-built (imageio's image plugins, for one) fail in
    their __del__ when collected; Python prints such failures as "Exception ignored ... Traceback". They are
    an effect of the interrupt the command reports in its one line, so they are not printed."""
    sys.unraisablehook = lambda unraisable: None


def _flush_stdout() -> bool:
    """Flush stdout; True when its reader went away (`| head`). stdout then points at /dev/null, so that the
    interpreter's own flush at exit does not print a BrokenPipeError."""
    try:
        if sys.stdout is not None:  # None when the shell closed it (`>&-`)
            sys.stdout.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return True
    except (OSError, ValueError):
        pass
    return False


def settings_from_args(parser, args, settings_class):
    """A settings dataclass from the parsed arguments of the same names; its own check (a ValueError in
    __post_init__) becomes the parser's usage error, as a bad flag would."""
    from dataclasses import fields
    try:
        return settings_class(**{f.name: getattr(args, f.name) for f in fields(settings_class)})
    except ValueError as error:
        parser.error(str(error))


def device_arg(text: str) -> str:
    """argparse type of --device: cpu, cuda or cuda:N, and a GPU only where torch sees one."""
    import argparse
    import torch
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: torch sees no CUDA device")
    return text


def at_least(low: int):
    """argparse type of an integer option that must be >= low."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def output_path(text: str):
    """argparse type of --out: a path, never the empty string (which would mean the working directory)."""
    import argparse
    from pathlib import Path
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path is not an output folder")
    return Path(text)


def exit_with(code: int) -> None:
    """sys.exit for `if __name__ == "__main__"` (run_command has already flushed stdout)."""
    if _flush_stdout():
        code = code or 1
    sys.exit(code)
