"""The embedded corpus: deterministic, resumable, atomic, and its alignment points at the right words."""
import json

import numpy as np
import pytest

from uniter_core.data import build_corpus
from uniter_core.data.captions import align_word_pieces, describe_scene, relation
from uniter_core.data.photos import CATEGORIES, CATEGORY_BY_NAME, category_pixels
from uniter_core.data.scenes import make_scene, region_proposals
from uniter_core.data.store import FeatureStore, FeatureStoreWriter, StoreError
from uniter_core.data.tokenizer import load_tokenizer
from uniter_core.io import read_jsonl

ARGS = ["--n-train", "3", "--n-val", "1", "--n-test", "1", "--shard-size", "2", "--captions", "2"]


def test_every_category_loads_offline():
    assert len(CATEGORIES) >= 15
    for category in CATEGORIES:
        pixels = category_pixels(category.name)
        assert pixels.ndim == 3 and pixels.shape[2] == 4 and min(pixels.shape[:2]) >= 24, category.name


def test_scenes_are_deterministic_and_varied():
    a, b = make_scene(3, 5), make_scene(3, 5)
    assert np.array_equal(a.image, b.image) and a.objects == b.objects
    assert not np.array_equal(make_scene(3, 6).image, a.image)
    counts = [len(make_scene(0, i).objects) for i in range(30)]
    assert set(counts) == {2, 3, 4}


def test_region_proposals_start_with_ground_truth():
    scene = make_scene(1, 2)
    boxes, owner = region_proposals(scene, np.random.default_rng(0))
    assert 10 <= len(boxes) <= 30
    n = len(scene.objects)
    np.testing.assert_allclose(boxes[:n], [o.box for o in scene.objects])
    assert list(owner[:n]) == list(range(n))
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= scene.width and boxes[:, [1, 3]].max() <= scene.height


def test_alignment_points_at_the_words_of_each_object():
    tokenizer = load_tokenizer()
    for index in range(25):
        scene = make_scene(0, index)
        for caption in describe_scene(scene, np.random.default_rng(index), 2):
            input_ids, alignment = align_word_pieces(caption, tokenizer)
            assert alignment, caption.text
            for piece, obj in alignment:
                # the aligned word-piece is part of the object's phrase (noun, plural, size or tint)
                category = CATEGORY_BY_NAME[scene.objects[obj].category]
                allowed = " ".join([category.noun, category.plural, str(scene.objects[obj].size),
                                    str(scene.objects[obj].tint)])
                token = tokenizer.convert_ids_to_tokens(input_ids[piece]).lstrip("#")
                assert token in allowed, (caption.text, token, category.name)


def test_relations_follow_box_centres():
    scene = make_scene(0, 0)
    a, b = scene.objects[0], scene.objects[1]
    forward, backward = relation(a, b), relation(b, a)
    opposite = {"to the left of": "to the right of", "to the right of": "to the left of",
                "above": "below", "below": "above"}
    assert opposite[forward] == backward


@pytest.mark.slow
def test_build_is_deterministic_and_complete(tmp_path):
    build_corpus.main(["--out", str(tmp_path / "a"), *ARGS])
    build_corpus.main(["--out", str(tmp_path / "b"), *ARGS])
    build_corpus.main(["--out", str(tmp_path / "c"), *ARGS, "--seed", "1"])
    assert not (tmp_path / "a.partial").exists()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["splits"]["train"] == {"images": 3, "captions": 6}
    for split in ("train", "val", "test"):
        assert read_jsonl(tmp_path / "a" / "txt_db" / f"{split}.jsonl") == \
            read_jsonl(tmp_path / "b" / "txt_db" / f"{split}.jsonl")
    store_a, store_b = FeatureStore(tmp_path / "a" / "img_db"), FeatureStore(tmp_path / "b" / "img_db")
    store_c = FeatureStore(tmp_path / "c" / "img_db")
    assert store_a.image_ids == store_b.image_ids and len(store_a) == 5
    for image_id in store_a.image_ids:
        regions = store_a[image_id]
        for field, value in regions.items():
            np.testing.assert_array_equal(value, store_b[image_id][field])
        assert regions["features"].shape[1] == 1280 and regions["soft_labels"].shape[1] == 1000
        meta = store_a.meta(image_id)
        assert (tmp_path / "a" / meta["file"]).exists()
        assert len(meta["region_object"]) == len(regions["features"])
    assert not np.array_equal(store_a[store_a.image_ids[0]]["features"], store_c[store_c.image_ids[0]]["features"])


@pytest.mark.slow
def test_interrupted_build_resumes_from_finished_shards(tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    real_write = FeatureStoreWriter.write_shard
    written = []

    def failing_write(self, shard, records):
        if shard == 1 and "failed" not in written:
            written.append("failed")
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the second shard
        written.append(shard)
        return real_write(self, shard, records)

    monkeypatch.setattr(FeatureStoreWriter, "write_shard", failing_write)
    assert build_corpus.main(["--out", str(out), *ARGS]) == 130  # reported as an interruption, not a traceback
    assert not out.exists() and (tmp_path / "corpus.partial" / "img_db" / "shard_00000.json").exists()
    killed_write = tmp_path / "corpus.partial" / "img_db" / ".shard_00001.features.npy.k1ll3d_x.tmp"
    killed_write.write_bytes(b"half")  # what a SIGKILL in the middle of an atomic write leaves
    build_corpus.main(["--out", str(out), *ARGS])
    assert written == [0, "failed", 1, 2]  # shard 0 was not extracted again
    assert not list(out.rglob("*.tmp"))  # the killed write's temporary did not end up in the corpus
    assert len(FeatureStore(out / "img_db")) == 5


def test_store_refuses_bad_regions(tmp_path):
    from uniter_core.data.regions import RegionFeatures

    writer = FeatureStoreWriter(tmp_path / "store", 4, ["a", "b"])
    good = RegionFeatures(np.zeros((2, 4)), np.zeros((2, 6)), np.zeros(2), np.full((2, 2), 0.5))
    bad_nan = RegionFeatures(np.full((2, 4), np.nan), np.zeros((2, 6)), np.zeros(2), np.full((2, 2), 0.5))
    bad_dim = RegionFeatures(np.zeros((2, 5)), np.zeros((2, 6)), np.zeros(2), np.full((2, 2), 0.5))
    empty = RegionFeatures(np.zeros((0, 4)), np.zeros((0, 6)), np.zeros(0), np.zeros((0, 2)))
    for bad, message in ((bad_nan, "NaN"), (bad_dim, "shape"), (empty, "no regions")):
        with pytest.raises(StoreError, match=message):
            writer.write_shard(0, [({"image_id": "x", "width": 1, "height": 1}, good), ({"image_id": "y"}, bad)])
    assert not writer.has_shard(0)
    with pytest.raises(StoreError, match="no manifest"):
        FeatureStore(tmp_path / "store")
