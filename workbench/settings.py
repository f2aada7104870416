"""Where the app looks for things by default.

Every default can be overridden by an environment variable, read at call time, so that tests, benchmarks and
screenshot scripts point the app at temporary folders without touching the real ones:

    WORKBENCH_RUN          run folder shown first              (default runs/pretrain-mini)
    WORKBENCH_CLASSIFIER   head-pattern classifier (.joblib)   (default analyses/models/head_classifier.joblib)
    WORKBENCH_GOLD_DIR     gold-set folder written by labelling (default analyses/gold)
    WORKBENCH_STATS_ROOT   folder holding stats/NAME exports   (default stats)
    WORKBENCH_BEHAVIOUR_ROOT  folder holding behaviour/NAME/{importance,grounding,relevance,dynamics}
                              (default behaviour)
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # relative defaults are looked up here too (the app may run elsewhere)

DEMO_RUN = "runs/pretrain-mini"
SPLITS_PREFERRED = ("test", "val", "train")


def resolve(path: str | os.PathLike) -> Path:
    """A user-typed path: absolute as is; relative to the working directory, else to the repository."""
    path = Path(os.path.expanduser(str(path)))
    if path.is_absolute() or path.exists() or not (REPO / path).exists():
        return path
    return REPO / path


def default_run() -> str:
    return os.environ.get("WORKBENCH_RUN", DEMO_RUN)


def classifier_path() -> Path | None:
    """None means the project's default classifier (analyses.classifier.load_classifier trains it if missing)."""
    value = os.environ.get("WORKBENCH_CLASSIFIER")
    return resolve(value) if value else None


def gold_dir() -> Path:
    value = os.environ.get("WORKBENCH_GOLD_DIR")
    if value:
        return resolve(value)
    from analyses.goldset import PROJECT_GOLD  # the committed gold set, named in one place

    return PROJECT_GOLD


def stats_root() -> Path:
    return resolve(os.environ.get("WORKBENCH_STATS_ROOT", "stats"))


def behaviour_root() -> Path:
    return resolve(os.environ.get("WORKBENCH_BEHAVIOUR_ROOT", "behaviour"))


def find_runs() -> list[str]:
    """Run folders (with a train_config.json) under runs/, as the sidebar offers them."""
    root = resolve("runs")
    found = sorted(p.parent for p in root.glob("*/train_config.json")) if root.is_dir() else []
    return [str(Path("runs") / p.name) for p in found]
