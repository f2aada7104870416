"""Data pipeline: photographs -> scenes and captions -> region features -> feature store -> batches
(the whole flow, module by module: docs/ARCHITECTURE.md)."""
