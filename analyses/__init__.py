"""Attention analysis: extraction, pattern features and classifier, statistics exports (see analyses/README.md)."""
