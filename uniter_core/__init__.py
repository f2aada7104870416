"""UNITER Workbench core: data pipeline, model, pre-training tasks, optimal transport and trainer.

Kept import-light on purpose: submodules are imported where they are used. The data flow, the UNITER
semantics the code keeps and where to add a task, solver or command: docs/ARCHITECTURE.md.
"""
__version__ = "0.1.0"

from uniter_core.errors import quiet_interrupts_while_starting as _quiet

_quiet()  # only when this process is `python -m uniter_core.<command>` (see the function)
