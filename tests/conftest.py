"""Shared fixtures. The tiny corpus is built once per test session, even with pytest-xdist workers."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_CORPUS_ARGS = ["--n-train", "10", "--n-val", "3", "--n-test", "3", "--shard-size", "6", "--seed", "7"]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A 16-image collage corpus (real photos, real CNN features) shared by all workers of the session."""
    from uniter_core.data import build_corpus

    shared = tmp_path_factory.getbasetemp().parent  # common to all xdist workers of this run
    out = shared / "tiny_corpus"
    with open(shared / "tiny_corpus.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "manifest.json").exists():
            build_corpus.main(["--out", str(out), *TINY_CORPUS_ARGS])
    return out
