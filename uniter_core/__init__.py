"""UNITER Workbench core: data pipeline, model, pre-training tasks, optimal transport and trainer.

Kept import-light on purpose: submodules are imported where they are used.
"""
__version__ = "0.1.0"

from uniter_core.errors import quiet_interrupts_while_starting as _quiet

_quiet()  # only when this process is `python -m uniter_core.<command>` (see the function)
