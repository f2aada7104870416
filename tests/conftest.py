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


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A small head-pattern classifier trained on synthetic maps."""
    from analyses.classifier import fit
    from analyses.synthetic import synthetic_features

    x, y = synthetic_features(600, seed=0)
    path = tmp_path_factory.mktemp("clf") / "clf.joblib"
    fit(x, y, trees=20).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_run(tiny_corpus, tmp_path_factory) -> Path:
    """A run folder as uniter_core.train leaves it, holding a tiny random model."""
    import torch
    from uniter_core.config import UniterConfig
    from uniter_core.io import write_json
    from uniter_core.pretrain import UniterForPretraining
    from uniter_core.train_config import TrainConfig
    from uniter_core.train_state import CheckpointManager

    torch.manual_seed(0)
    overrides = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    model = UniterForPretraining(UniterConfig.from_preset("uniter-mini", **overrides))
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    CheckpointManager(run_dir).save(1, model, optimizer, scheduler, extra={})
    config = TrainConfig()
    config.data.corpus = str(tiny_corpus)
    config.model.overrides = overrides
    write_json(run_dir / "train_config.json", config.to_dict())
    return run_dir


@pytest.fixture(scope="module")
def trained_run(tiny_corpus, tmp_path_factory) -> Path:
    """A run trained for 4 steps by uniter_core.train (checkpoints at steps 2 and 4, its evaluation); tests that
    change it work on run_copy."""
    from factories import tiny_overrides
    from uniter_core import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert train.main(["--out", str(run_dir), *tiny_overrides(tiny_corpus, steps=4, save_every=2, keep_last=2)]) == 0
    return run_dir


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A copy of trained_run that a test may damage."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


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




# Tests that need the tiny corpus (real CNN features, about a minute to build) or a trained run are slow by
# what they use; the rest of the slow ones carry @pytest.mark.slow. `pytest -m "not slow"` is the quick part.
SLOW_FIXTURES = {"tiny_corpus", "tiny_run", "trained_run", "workbench_env"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
