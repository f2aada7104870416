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


@pytest.fixture(scope="session")
def workbench_env(tiny_corpus, tmp_path_factory) -> dict[str, str]:
    """The WORKBENCH_* variables of a tiny but real setting for the app: a run trained for a few steps with
    uniter_core.train (the tiny model of test_train), its baseline evaluation, a small classifier, and empty
    folders for the gold set and the statistics exports."""
    from analyses.classifier import fit
    from analyses.synthetic import synthetic_features
    from factories import tiny_overrides
    from uniter_core import evaluate, train

    root = tmp_path_factory.mktemp("workbench")
    run = root / "runs" / "tiny"
    assert train.main(["--out", str(run), *tiny_overrides(tiny_corpus, steps=6, save_every=6, keep_last=1)]) == 0
    assert evaluate.main(["--run", str(run), "--which", "baseline"]) == 0
    x, y = synthetic_features(300, seed=0)
    fit(x, y, trees=20).save(root / "classifier" / "clf.joblib")
    return {"WORKBENCH_RUN": str(run), "WORKBENCH_CLASSIFIER": str(root / "classifier" / "clf.joblib"),
            "WORKBENCH_GOLD_DIR": str(root / "gold"), "WORKBENCH_STATS_ROOT": str(root / "stats")}


def pytest_configure(config):
    config.addinivalue_line("markers", "disk_size(size): size of the small tmpfs of the small_disk fixture, e.g. 400k")
