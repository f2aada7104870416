"""UNITER Workbench core: data pipeline, model, pre-training tasks, optimal transport and trainer.

Kept import-light on purpose: submodules are imported where they are used.
"""
__version__ = "0.1.0"
