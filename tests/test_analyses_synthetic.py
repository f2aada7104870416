"""Synthetic maps (labels, variety, determinism), the rule baseline, and the classifier's save/load round trip."""
import json

import numpy as np
import pytest

from analyses.classifier import ClassifierError, HeadClassifier, fit, metadata_path
from analyses.patterns import FEATURE_NAMES, FEATURE_VERSION, PATTERNS, SCALAR_FEATURES
from analyses.rules import rule_predict
from analyses.synthetic import REGION_RANGE, TEXT_RANGE, generate, synthetic_features, synthetic_map


def test_all_six_classes_valid_maps_and_variety():
    maps = list(generate(60, seed=3))
    assert [m.label for m in maps[:6]] == list(PATTERNS)
    for m in maps:
        n = m.n_text + m.n_regions
        assert m.map.shape == (n, n) and m.map.dtype == np.float32
        assert TEXT_RANGE[0] <= m.n_text <= TEXT_RANGE[1] and REGION_RANGE[0] <= m.n_regions <= REGION_RANGE[1]
        assert (m.map >= 0).all() and np.isfinite(m.map).all()
        np.testing.assert_allclose(m.map.sum(1), 1, atol=1e-5)
    assert len({(m.n_text, m.n_regions) for m in maps}) > 30
    assert {m.params["sharp"] for m in maps} == {True, False}
    assert any(m.params["minority"] for m in maps)
    assert not any(m.params["minority"] for m in generate(30, seed=3, sharpness="sharp"))


def test_deterministic_and_seeded():
    a, b = synthetic_map(7, seed=5), synthetic_map(7, seed=5)
    np.testing.assert_array_equal(a.map, b.map)
    assert a.params == b.params
    streamed = list(generate(3, seed=5, start=6))[1]
    np.testing.assert_array_equal(streamed.map, a.map)  # map i does not depend on what else is generated
    other = synthetic_map(7, seed=6)
    assert other.map.shape != a.map.shape or not np.array_equal(other.map, a.map)
    x1, y1 = synthetic_features(12, seed=2)
    x2, y2 = synthetic_features(12, seed=2)
    np.testing.assert_array_equal(x1, x2)
    assert list(y1) == list(y2)


def test_rules_recover_sharp_maps():
    x, y = synthetic_features(240, seed=11, sharpness="sharp")
    assert np.mean(rule_predict(x) == y) >= 0.95
    for c in PATTERNS:
        assert (rule_predict(x[y == c]) == c).mean() >= 0.9, c


@pytest.fixture(scope="module")
def small_classifier():
    x, y = synthetic_features(600, seed=0)
    return fit(x, y, trees=20, training={"description": "test"})


def test_classifier_recovers_sharp_maps(small_classifier):
    x, y = synthetic_features(120, seed=21, sharpness="sharp")
    probs = small_classifier.predict_proba(x)
    assert probs.shape == (120, 6)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert np.mean(small_classifier.predict(x) == y) >= 0.95


def test_feature_columns_the_trees_read(small_classifier, tmp_path):
    """The default trees read the scalar features; features="all" adds the thumbnails, and survives a reload."""
    assert small_classifier.metadata["features"] == "scalar"
    assert small_classifier.estimator.n_features_in_ == len(SCALAR_FEATURES)
    x, y = synthetic_features(300, seed=3)
    full = fit(x, y, trees=10, used_features="all")
    assert full.estimator.n_features_in_ == len(FEATURE_NAMES)
    full.save(tmp_path / "all.joblib")
    np.testing.assert_array_equal(HeadClassifier.load(tmp_path / "all.joblib").predict_proba(x[:12]),
                                  full.predict_proba(x[:12]))
    with pytest.raises(ValueError, match="used_features"):
        fit(x, y, trees=2, used_features="thumbnails")


def test_save_load_round_trip(small_classifier, tmp_path):
    path = tmp_path / "models" / "clf.joblib"
    small_classifier.save(path)
    meta = json.loads(metadata_path(path).read_text())
    assert meta["feature_version"] == FEATURE_VERSION and meta["classes"] == list(PATTERNS)
    assert len(meta["data_hash"]) == 64 and meta["sklearn_version"] and meta["n_train"] == 600
    loaded = HeadClassifier.load(path)
    x, _ = synthetic_features(18, seed=4)
    np.testing.assert_array_equal(loaded.predict_proba(x), small_classifier.predict_proba(x))
    assert loaded.metadata == small_classifier.metadata
    meta["feature_version"] = FEATURE_VERSION + 1
    metadata_path(path).write_text(json.dumps(meta))
    with pytest.raises(ClassifierError, match="feature version"):
        HeadClassifier.load(path)
    with pytest.raises(ClassifierError, match="no saved classifier"):
        HeadClassifier.load(tmp_path / "nothing.joblib")
    path.write_bytes(b"not a pickle")
    metadata_path(path).write_text(json.dumps(small_classifier.metadata))
    with pytest.raises(ClassifierError, match="cannot be loaded"):
        HeadClassifier.load(path)
