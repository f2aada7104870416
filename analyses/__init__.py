"""Attention analysis: extraction, pattern features and classifier, statistics exports (see analyses/README.md;
the pattern definitions and where to add an analysis: docs/ARCHITECTURE.md)."""

from uniter_core.errors import quiet_interrupts_while_starting as _quiet

_quiet()  # only when this process is `python -m analyses.<command>` (see the function)
