"""Data pipeline: photographs -> scenes and captions -> region features -> feature store -> batches."""
