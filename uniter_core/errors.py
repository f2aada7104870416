"""The project's error types: what went wrong outside the code (input, files, environment, a signal).

Every command turns these into one line on stderr and an exit code (uniter_core.cli.run_command); anything else
that escapes a command is a bug and keeps its traceback. Subclasses carry the message as their only argument,
one sentence that names the file or argument and the problem.
"""
from __future__ import annotations

import os
import signal


class UserError(Exception):
    """Bad input or a bad file: exit code 2."""

    exit_code = 2


class EnvironmentFailure(UserError):
    """The machine refused (disk full, permissions): exit code 1."""

    exit_code = 1


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; `message` says what was kept and how to continue. Exit 130 / 143.

    A BaseException, like KeyboardInterrupt, so that `except Exception` blocks never swallow it.
    """

    def __init__(self, signum: int = signal.SIGINT, message: str = ""):
        super().__init__(message)
        self.signum, self.message = signum, message

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


def _quiet_exit(signum, frame):
    import os
    import sys
    print(f"interrupted ({signal.Signals(signum).name}) while starting; nothing was written", file=sys.stderr)
    os._exit(128 + signum)


CONSOLE_SCRIPT_PREFIX = "uniter-"  # every console script of the project is named uniter-<command>


def quiet_interrupts_while_starting() -> None:
    """When this process runs one of the project's commands (`python -m uniter_core.X` / `analyses.X`), a signal
    during the seconds of imports before the command's own handling starts exits with one line, not with a
    KeyboardInterrupt traceback. Library use (imports from other programs, the app) is left alone."""
    import sys
    argv = getattr(sys, "orig_argv", [])
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    script = os.path.basename(sys.argv[0]) if sys.argv else ""  # a console script of pyproject.toml
    if module.startswith(("uniter_core.", "analyses.")) or script.startswith(CONSOLE_SCRIPT_PREFIX):
        import threading
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(s) in (signal.default_int_handler, signal.SIG_DFL):
                    signal.signal(s, _quiet_exit)
