"""Failures that the analyses commands have always reported as bad input although they are not the project's typed
errors: a FileNotFoundError or ValueError from a library (numpy, torch, a reader) becomes a UserError with the
same text, so run_command prints `error: <text>` with exit 2 instead of a traceback or the OSError exit 1.
"""
from __future__ import annotations

import contextlib

from uniter_core.errors import UserError


@contextlib.contextmanager
def as_input_error():
    """A block (or, as a decorator, a function) whose FileNotFoundError / ValueError is bad input."""
    try:
        yield
    except UserError:
        raise
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from None
