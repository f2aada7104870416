"""Bring-your-own-data extraction: both caption formats, user boxes, resizing, resume, and one-sentence errors."""
import json

import numpy as np
import pytest
import skimage.data
from PIL import Image

from factories import CAPTIONS, IMAGES, write_csv
from uniter_core.data import extract
from uniter_core.data.regions import RegionFeatures, normalized_boxes
from uniter_core.data.store import FeatureStore, FeatureStoreWriter
from uniter_core.data.tokenizer import load_tokenizer
from uniter_core.io import read_jsonl

# IMAGES: name -> (photo, size (w, h), format); sizes differ on purpose and one is larger than --max-side
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for name, (photo, size, fmt) in IMAGES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(getattr(skimage.data, photo)()).resize(size).save(folder / name, format=fmt)
    return folder


def write_coco(path, captions=CAPTIONS):
    names = list(dict.fromkeys(name for name, _ in captions))
    path.write_text(json.dumps({
        "images": [{"id": 10 + i, "file_name": n, "width": 0, "height": 0} for i, n in enumerate(names)],
        "annotations": [{"id": 100 + i, "image_id": 10 + names.index(n), "caption": c}
                        for i, (n, c) in enumerate(captions)]}))
    return path


def run(argv, capsys):
    """Exit code and stderr of the CLI; argparse errors count as exits too."""
    try:
        code = extract.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_coco_captions_with_grid_boxes(tmp_path, images, capsys):
    out = tmp_path / "corpus"
    code, err = run(["--images", images, "--captions", write_coco(tmp_path / "caps.json"), "--out", out,
                     "--shard-size", "3"], capsys)
    assert code == 0, err
    store = FeatureStore(out / "img_db")
    assert sorted(store.image_ids) == sorted(IMAGES) and store.manifest["num_shards"] == 2
    for name, (_, (width, height), _) in IMAGES.items():
        regions = store[name]
        assert regions["features"].shape == (30, 1280) and regions["soft_labels"].shape == (30, 1000)
        assert np.isfinite(regions["features"]).all() and regions["features"].std() > 0
        np.testing.assert_allclose(regions["norm_bb"][0], [0, 0, 1, 1, 1, 1], atol=1e-3)  # the whole image
        meta = store.meta(name)
        assert (meta["width"], meta["height"]) == (width, height) and meta["file"] == str(images / name)
    assert store.meta("sub/coffee.jpg")["scale"] == pytest.approx(640 / 700)
    assert store.meta("cat.jpg")["scale"] == 1.0
    rows = read_jsonl(out / "txt_db" / "train.jsonl")
    tokenizer = load_tokenizer()
    assert [(r["image_id"], r["caption"]) for r in rows] == CAPTIONS
    assert [r["source_id"] for r in rows] == [100, 101, 102, 103, 104]
    for row in rows:
        assert row["input_ids"] == tokenizer(row["caption"], add_special_tokens=False)["input_ids"]
        assert row["alignment"] == [] and row["image_id"] in store
    meta = json.loads((out / "txt_db" / "meta.json").read_text())
    assert meta["special_tokens"]["[CLS]"] == tokenizer.cls_token_id
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == {"train": {"images": 4, "captions": 5}}
    assert not (tmp_path / "corpus.partial").exists()


def test_csv_captions_with_user_boxes(tmp_path, images, capsys):
    boxes = {"astronaut.png": [[10, 10, 50, 60], [-20, 40, 200, 90], [100, 100, 120, 120], [30, 30, 30, 50]],
             "cat.jpg": [[0, 0, 60, 80]]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    captions = write_csv(tmp_path / "caps.csv", CAPTIONS[:3])
    out = tmp_path / "corpus"
    code, err = run(["--images", images, "--captions", captions, "--boxes", tmp_path / "boxes.json",
                     "--out", out, "--split", "val"], capsys)
    assert code == 0, err
    store = FeatureStore(out / "img_db")
    # the box outside the image and the zero-width box are dropped; the wide one is clipped
    assert store.num_regions("astronaut.png") == 2 and store.meta("astronaut.png")["box_index"] == [0, 1]
    np.testing.assert_allclose(store["astronaut.png"]["norm_bb"][1],
                               normalized_boxes(np.array([[0, 40, 96, 90]]), 96, 96)[0], atol=1e-3)
    assert store["cat.jpg"]["features"].shape == (1, 1280)
    rows = read_jsonl(out / "txt_db" / "val.jsonl")
    assert [r["text_id"] for r in rows] == ["val_000000", "val_000001", "val_000002"]
    assert [r["source_id"] for r in rows] == [2, 3, 4]  # CSV line numbers


def _bad_coco_ref(tmp_path):
    path = write_coco(tmp_path / "caps.json", CAPTIONS[:1])
    data = json.loads(path.read_text())
    data["annotations"][0]["image_id"] = 999
    path.write_text(json.dumps(data))
    return path


def _boxes(tmp_path, value):
    (tmp_path / "boxes.json").write_text(value if isinstance(value, str) else json.dumps(value))
    return ["--boxes", tmp_path / "boxes.json"]


ERROR_CASES = {
    "unreadable image": (lambda t: write_csv(t / "caps.csv", [("bad.jpg", "noise")]), [], "bad.jpg"),
    "empty caption": (lambda t: write_csv(t / "caps.csv", [("cat.jpg", "   ")]), [], "caps.csv"),
    "missing image": (lambda t: write_csv(t / "caps.csv", [("nope.png", "a ghost")]), [], "nope.png"),
    "malformed json": (lambda t: (t / "caps.json").write_text("{not json") and t / "caps.json", [], "caps.json"),
    "not coco": (lambda t: (t / "caps.json").write_text("[1, 2]") and t / "caps.json", [], "caps.json"),
    "unknown coco image id": (_bad_coco_ref, [], "caps.json"),
    "csv header": (lambda t: write_csv(t / "caps.csv", [("cat.jpg", "a cat")], ("file", "text")), [], "caps.csv"),
    "no captions": (lambda t: write_csv(t / "caps.csv", []), [], "caps.csv"),
    "empty box list": (None, {"cat.jpg": []}, "boxes.json"),
    "boxes outside": (None, {"cat.jpg": [[200, 200, 300, 300], [5, 5, 5, 40]]}, "boxes.json"),
    "malformed boxes": (None, {"cat.jpg": [[1, 2, 3]]}, "boxes.json"),
    "boxes not json": (None, "{{", "boxes.json"),
    "image without boxes": (None, {"other.jpg": [[0, 0, 5, 5]]}, "boxes.json"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_is_one_sentence_and_nothing_written(tmp_path, images, capsys, case):
    make_captions, boxes, culprit = ERROR_CASES[case]
    (images / "bad.jpg").write_bytes(b"this is not a JPEG")
    captions = make_captions(tmp_path) if make_captions else write_csv(tmp_path / "caps.csv", [("cat.jpg", "a cat")])
    extra = _boxes(tmp_path, boxes) if make_captions is None else []
    out = tmp_path / "corpus"
    code, err = run(["--images", images, "--captions", captions, *extra, "--out", out], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and culprit in err, err
    assert not out.exists() and not (tmp_path / "corpus.partial").exists()


class _FakeExtractor:
    """Stands in for the CNN to produce features a real network should never give."""

    def __init__(self, feature_dim, value):
        self.feature_dim, self.value = feature_dim, value

    def __call__(self, pixels, boxes):
        return [RegionFeatures(np.full((len(b), self.feature_dim), self.value, np.float32),
                               normalized_boxes(b, p.shape[1], p.shape[0]), np.ones(len(b), np.float32),
                               np.full((len(b), 1000), 1e-3, np.float32)) for p, b in zip(pixels, boxes)]


@pytest.mark.parametrize("feature_dim, value, problem", [(1280, np.nan, "NaN"), (2048, 1.0, "shape")])
def test_bad_features_leave_out_untouched(tmp_path, images, capsys, monkeypatch, feature_dim, value, problem):
    monkeypatch.setattr(extract, "RegionFeatureExtractor", lambda **_: _FakeExtractor(feature_dim, value))
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "manifest.json").write_text('{"kind": "user"}')  # an older build that --force must not destroy on failure
    code, err = run(["--images", images, "--captions", write_csv(tmp_path / "caps.csv", CAPTIONS[:2]),
                     "--out", out, "--force"], capsys)
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert code == 2 and err.count("error") == 1 and "astronaut.png" in last and problem in last, err
    assert [p.name for p in out.iterdir()] == ["manifest.json"]


def test_interrupted_run_resumes_from_finished_shards(tmp_path, images, capsys, monkeypatch):
    """The CNN is faked here: this is about which shards get computed, not about features."""
    argv = ["--images", images, "--captions", write_csv(tmp_path / "caps.csv", CAPTIONS[:3]),
            "--out", tmp_path / "corpus", "--shard-size", "1"]
    seen_sizes = []

    def fake_extractor(**_):
        fake = _FakeExtractor(1280, 0.5)
        return lambda pixels, boxes: seen_sizes.extend(p.shape[:2] for p in pixels) or fake(pixels, boxes)

    monkeypatch.setattr(extract, "RegionFeatureExtractor", fake_extractor)
    write_shard = FeatureStoreWriter.write_shard

    def interrupted(self, shard, records):
        if shard == 1:
            raise KeyboardInterrupt
        write_shard(self, shard, records)

    monkeypatch.setattr(FeatureStoreWriter, "write_shard", interrupted)
    code, err = run(argv, capsys)
    assert code == 130 and "corpus.partial" in err.strip().splitlines()[-1]  # the message names what is kept
    first = tmp_path / "corpus.partial" / "img_db" / "shard_00000.features.npy"
    assert first.exists() and not (tmp_path / "corpus").exists()
    assert seen_sizes == [(96, 96), (80, 120)]
    stamp = first.stat().st_mtime_ns

    monkeypatch.setattr(FeatureStoreWriter, "write_shard", write_shard)
    seen_sizes.clear()
    assert run(argv, capsys)[0] == 0
    assert seen_sizes == [(80, 120)]  # only cat.jpg, the image of shard 1
    store = FeatureStore(tmp_path / "corpus" / "img_db")
    assert sorted(store.image_ids) == ["astronaut.png", "cat.jpg"]
    assert (tmp_path / "corpus" / "img_db" / "shard_00000.features.npy").stat().st_mtime_ns == stamp
    assert not (tmp_path / "corpus.partial").exists()


def test_resume_needs_the_same_inputs(tmp_path, images, capsys, monkeypatch):
    """A partial build of other captions is thrown away rather than mixed into the new one (it is extract's own:
    a partial folder of anything else is refused, see test_faults_commands)."""
    monkeypatch.setattr(extract, "RegionFeatureExtractor", lambda **_: _FakeExtractor(1280, 0.5))
    stale = tmp_path / "corpus.partial" / "img_db" / "shard_00000.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("[]")
    (tmp_path / "corpus.partial" / ".settings.json").write_text('{"command": "extract", "captions": "other"}')
    argv = ["--images", images, "--captions", write_csv(tmp_path / "caps.csv", CAPTIONS[:1]),
            "--out", tmp_path / "corpus"]
    assert run(argv, capsys)[0] == 0
    assert FeatureStore(tmp_path / "corpus" / "img_db").image_ids == ["astronaut.png"]
