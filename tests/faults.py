"""Helpers of the fault-injection tests: run a command as a user would (a subprocess) and check the contract.

The contract (README, "Errors and recovery"): a failure is one line naming the file or argument, a non-zero exit
code, no Python traceback, user files intact and nothing half-written.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def call(main, argv, capsys) -> Result:
    """main(argv) in this process, as the shell would see it: exit code (argparse's too), stdout and stderr."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def command_env(extra: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    return {**env, **(extra or {})}


def run(module: str, *args, env: dict | None = None, timeout: float = 600, cwd: Path | None = None) -> Result:
    """`python -m module args...` to completion."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=command_env(env), timeout=timeout, cwd=cwd or ROOT, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _signals_as_in_a_terminal() -> None:
    """In the child: SIGINT and SIGTERM at their defaults, as a command started from a shell has them (a pytest-xdist
    worker ignores SIGINT, and a child would inherit that and never see the signal while it starts)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_and_signal(module: str, *args, when, sig=signal.SIGINT, env: dict | None = None, timeout: float = 600,
                   poll: float = 0.05) -> Result:
    """Start the command, send `sig` as soon as `when(process)` is true (polled), and wait for it to end."""
    proc = subprocess.Popen([sys.executable, "-m", module, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=command_env(env), cwd=ROOT,
                            stdin=subprocess.DEVNULL, preexec_fn=_signals_as_in_a_terminal)
    deadline = time.monotonic() + timeout
    try:
        while not when(proc):
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"{module} ended (exit {proc.returncode}) before the signal point:\n{err[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{module}: the signal point was never reached")
            time.sleep(poll)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return Result(proc.returncode, out, err)


def assert_failed_cleanly(result: Result, code: int | tuple[int, ...], *names: str) -> None:
    """Exit code as expected, no traceback, and the message (last stderr line) names every one of `names`."""
    codes = (code,) if isinstance(code, int) else code
    assert result.code in codes, f"exit {result.code}, expected {codes}\nstderr:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stdout, result.stdout[-3000:]
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert lines, "no message on stderr"
    message = lines[-1]
    for name in names:
        assert str(name) in message, f"{name!r} not named in: {message}"


def tree_digest(folder: Path) -> dict[str, str]:
    """{relative path: sha1} of every file under `folder` (to show user files are intact)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes and partial folders under `folder` (nothing half-written may remain)."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".partial")) or ".partial" in p.name)
