"""The head-pattern classifier: extremely randomised trees on the features of analyses.patterns.

Kovaleva et al. trained a small CNN on ~400 hand-labelled maps; with no labelled set available, ours learns
from synthetic maps (analyses.synthetic) plus, once it exists, part of a hand-labelled gold set. Trees on
size-invariant features need no GPU, train in seconds and give calibrated-enough class probabilities.

By default the trees read the scalar features only (`USED_FEATURES["scalar"]`): in cross-validation on the gold
set the 256 thumbnail cells made them worse (macro-F1 0.81 with them, 0.84 without), because with a few hundred
real maps the trees split on noisy cells; `features="all"` uses them too. Extra-trees beat gradient boosting
(0.81) and an RBF SVM (0.82) on the same features.

A saved classifier is two files: PATH (joblib pickle of the estimator) and PATH with suffix .json (metadata:
feature version and names, classes, training-data hash and description, library versions). Loading refuses a
classifier made for another FEATURE_VERSION, since its inputs would silently mean something else. The default
classifier (DEFAULT_MODEL), trained on first use, comes from analyses.train_classifier.load_classifier: training
needs the gold set and the synthetic maps, which this module does not.
"""
from __future__ import annotations

import hashlib
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import joblib
import numpy as np
import sklearn
from sklearn.ensemble import ExtraTreesClassifier

from analyses.patterns import FEATURE_NAMES, FEATURE_VERSION, PATTERNS, SCALAR_FEATURES, map_features
from uniter_core.errors import UserError
from uniter_core.io import JsonlError, atomic_path, read_json, write_json

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "head_classifier.joblib"
# Which columns of the feature matrix (FEATURE_NAMES order) the trees read.
USED_FEATURES = {"scalar": [FEATURE_NAMES.index(name) for name in SCALAR_FEATURES],
                 "all": list(range(len(FEATURE_NAMES)))}


class ClassifierError(UserError, ValueError):
    """A saved classifier that is missing, unreadable or made for other features."""


def metadata_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def data_hash(features: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the training matrix and labels: two classifiers with equal hashes saw the same data."""
    h = hashlib.sha256(np.ascontiguousarray(features, np.float32).tobytes())
    h.update("\n".join(map(str, labels)).encode())
    return h.hexdigest()


@dataclass
class HeadClassifier:
    estimator: ExtraTreesClassifier
    metadata: dict

    @property
    def columns(self) -> list[int]:
        return USED_FEATURES[self.metadata.get("features", "all")]

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """[N, len(classes)] probabilities, columns in `classes` order (PATTERNS order)."""
        x = np.atleast_2d(np.asarray(features, np.float32))
        if x.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"expected {len(FEATURE_NAMES)} features per row, got {x.shape[1]}")
        raw = self.estimator.predict_proba(x[:, self.columns])
        out = np.zeros((len(x), len(self.classes)), np.float32)
        for j, name in enumerate(self.estimator.classes_):
            out[:, self.classes.index(str(name))] = raw[:, j]
        return out

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.array(self.classes)[self.predict_proba(features).argmax(1)]

    def classify_maps(self, maps: np.ndarray, n_text: int, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels [K], probabilities [K, C]) of a stack [K, n, n] of maps sharing one layout."""
        probs = self.predict_proba(map_features(maps, n_text, n_regions))
        return np.array(self.classes)[probs.argmax(1)], probs

    def save(self, path: str | Path) -> None:
        """Write the estimator and its metadata, each atomically (estimator first: metadata marks completion)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            joblib.dump(self.estimator, tmp, compress=3)
        write_json(metadata_path(path), self.metadata)

    @classmethod
    def load(cls, path: str | Path) -> "HeadClassifier":
        path = Path(path)
        meta_file = metadata_path(path)
        if not path.is_file() or not meta_file.is_file():
            raise ClassifierError(f"{path}: no saved classifier here (needs {path.name} and {meta_file.name}); "
                                  f"train one with `python -m analyses.train_classifier --out {path}`")
        try:
            metadata = read_json(meta_file, "classifier metadata")
        except JsonlError as error:
            raise ClassifierError(f"{path}: {error}; retrain with "
                                  f"`python -m analyses.train_classifier --out {path}`") from None
        if not isinstance(metadata, dict):
            raise ClassifierError(f"{path}: its metadata {meta_file} holds a JSON {type(metadata).__name__}, not "
                                  f"an object; retrain with `python -m analyses.train_classifier --out {path}`")
        if metadata.get("feature_version") != FEATURE_VERSION or metadata.get("feature_names") != FEATURE_NAMES:
            raise ClassifierError(f"{path}: trained on feature version {metadata.get('feature_version')}, but "
                                  f"this code computes version {FEATURE_VERSION}; retrain with "
                                  f"`python -m analyses.train_classifier --out {path}`")
        if metadata.get("sklearn_version") != sklearn.__version__:
            warnings.warn(f"{path} was saved with scikit-learn {metadata.get('sklearn_version')}, this is "
                          f"{sklearn.__version__}; retrain if predictions look wrong")
        try:
            estimator = joblib.load(path)
        except Exception as error:  # unpickling can fail in many ways; all mean "retrain"
            raise ClassifierError(f"{path}: cannot be loaded ({type(error).__name__}: {error}); retrain with "
                                  f"`python -m analyses.train_classifier --out {path}`") from None
        problem = _classifier_problem(estimator, metadata)
        if problem:
            raise ClassifierError(f"{path}: {problem}; retrain with "
                                  f"`python -m analyses.train_classifier --out {path}`")
        return cls(estimator, metadata)


def _classifier_problem(estimator, metadata: dict) -> str | None:
    """Why a loaded estimator and its metadata (PATH.json) cannot classify: None when they fit together."""
    features = metadata.get("features", "all")
    if not isinstance(features, str) or features not in USED_FEATURES:
        return (f"its metadata names features {features!r}, which is not one of "
                f"{', '.join(map(repr, USED_FEATURES))}")
    classes = metadata.get("classes")
    if (not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes)
            or len(set(classes)) != len(classes)):
        return f"its metadata has classes {classes!r}, not a list of distinct pattern names"
    unknown = sorted(set(classes) - set(PATTERNS))
    if unknown:
        return f"its metadata names classes {unknown} that are not patterns ({', '.join(PATTERNS)})"
    if not callable(getattr(estimator, "predict_proba", None)) or not hasattr(estimator, "classes_"):
        return f"it holds a {type(estimator).__name__}, not a trained classifier"
    missing = sorted({str(c) for c in estimator.classes_} - set(classes))
    if missing:
        return f"the estimator predicts classes {missing} that its metadata does not list ({classes})"
    n_in = getattr(estimator, "n_features_in_", None)
    if n_in is not None and n_in != len(USED_FEATURES[features]):
        return (f"the estimator reads {n_in} features but its metadata says {features!r} "
                f"({len(USED_FEATURES[features])} features)")
    return None


def fit(features: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None, seed: int = 0,
        trees: int = 300, used_features: str = "scalar", training: dict | None = None) -> HeadClassifier:
    """Train on a feature matrix in FEATURE_NAMES order; `training` describes the data for the metadata.

    Each split considers half of the features (max_features=0.5): with the default sqrt the trees often miss the
    few features that separate diagonal from vertical+diagonal heads."""
    labels = np.asarray(labels).astype(str)
    unknown = sorted(set(labels) - set(PATTERNS))
    if unknown:
        raise ValueError(f"unknown pattern labels {unknown} (known: {', '.join(PATTERNS)})")
    if used_features not in USED_FEATURES:
        raise ValueError(f"used_features must be one of {', '.join(USED_FEATURES)}, not {used_features!r}")
    estimator = ExtraTreesClassifier(n_estimators=trees, max_features=0.5, random_state=seed, n_jobs=1)
    columns = USED_FEATURES[used_features]
    estimator.fit(np.asarray(features, np.float32)[:, columns], labels, sample_weight=sample_weight)
    metadata = {
        "feature_version": FEATURE_VERSION, "feature_names": FEATURE_NAMES, "classes": list(PATTERNS),
        "features": used_features,
        "estimator": f"ExtraTreesClassifier(n_estimators={trees}, max_features=0.5, random_state={seed})",
        "data_hash": data_hash(features, labels), "n_train": int(len(labels)),
        "train_class_counts": {c: int((labels == c).sum()) for c in PATTERNS},
        "training": training or {}, "sklearn_version": sklearn.__version__, "numpy_version": np.__version__,
        "python_version": sys.version.split()[0], "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return HeadClassifier(estimator, metadata)
