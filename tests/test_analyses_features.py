"""Map features on hand-made maps, and extraction that does not depend on how examples are batched."""
import numpy as np
import pytest
import torch

from analyses.attention import batch_maps, iter_attention_maps, iter_example_attention
from analyses.patterns import (FEATURE_NAMES, SCALAR_FEATURES, THUMB, check_layout, features, head_stats,
                               map_features, scalar_features)
from uniter_core.config import UniterConfig
from uniter_core.data.dataset import ImageTextDataset, collate
from uniter_core.pretrain import UniterForPretraining

T, R = 16, 24
N = T + R


def named(vector):
    return dict(zip(FEATURE_NAMES, vector))


def column_map(col):
    a = np.zeros((N, N), np.float32)
    a[:, col] = 1
    return a


def block_map(t=T, r=R, reversed_=False):
    n = t + r
    a = np.zeros((n, n), np.float32)
    if reversed_:
        a[:t, t:], a[t:, :t] = 1 / r, 1 / t
    else:
        a[:t, :t], a[t:, t:] = 1 / t, 1 / r
    return a


def test_cls_and_sep_columns():
    f = named(features(column_map(0), T, R))
    assert f["cls"] == pytest.approx(1) and f["sep"] == pytest.approx(0)
    assert (f["tt"], f["rt"], f["tr"], f["rr"]) == pytest.approx((1, 1, 0, 0))
    assert f["max_col"] == pytest.approx(1) and f["entropy"] == pytest.approx(0, abs=1e-6)
    s = named(features(column_map(T - 1), T, R))
    assert s["sep"] == pytest.approx(1) and s["cls"] == pytest.approx(0)
    # every row's mass sits in the first key bin of the text quadrants' thumbnails
    assert f["tt_00"] == pytest.approx(1) and f["rt_70"] == pytest.approx(1) and f["tt_01"] == pytest.approx(0)


def test_identity_is_all_diagonal():
    f = named(features(np.eye(N, dtype=np.float32), T, R))
    assert (f["diag"], f["diag_text"], f["diag_region"]) == pytest.approx((1, 1, 1))
    assert (f["tt"], f["rr"], f["tr"], f["rt"]) == pytest.approx((1, 1, 0, 0))
    assert f["max_col"] == pytest.approx(1 / N) and f["cls"] == pytest.approx(1 / N)


def test_block_and_reversed_block_quadrants():
    f = named(features(block_map(), T, R))
    assert (f["tt"], f["tr"], f["rt"], f["rr"]) == pytest.approx((1, 0, 0, 1))
    assert f["entropy"] == pytest.approx((T * np.log(T) + R * np.log(R)) / N / np.log(N), rel=1e-5)
    g = named(features(block_map(reversed_=True), T, R))
    assert (g["tt"], g["tr"], g["rt"], g["rr"]) == pytest.approx((0, 1, 1, 0))


def test_uniform_map():
    f = named(features(np.full((N, N), 1 / N, np.float32), T, R))
    assert f["entropy"] == pytest.approx(1, rel=1e-5)
    assert f["tt"] == pytest.approx(T / N) and f["text_share"] == pytest.approx(T / N)
    assert f["max_col"] == pytest.approx(1 / N)


def test_thumbnails_are_size_invariant_and_keep_row_mass():
    small, large = features(block_map(16, 24), 16, 24), features(block_map(48, 88), 48, 88)
    thumbs = [i for i, n in enumerate(FEATURE_NAMES) if n not in SCALAR_FEATURES]
    assert len(thumbs) == 4 * THUMB * THUMB
    np.testing.assert_allclose(small[thumbs], large[thumbs], atol=1e-6)
    rng = np.random.default_rng(0)
    a = rng.random((37, 37)).astype(np.float32)
    a /= a.sum(1, keepdims=True)
    f = named(features(a, 11, 26))
    for q in ("tt", "tr", "rt", "rr"):  # mean thumbnail row sum = mean quadrant row mass
        total = sum(f[f"{q}_{i}{j}"] for i in range(THUMB) for j in range(THUMB))
        assert total / THUMB == pytest.approx(f[q], rel=1e-4)


def test_word_piece_features_separate_diagonal_from_special_stripes():
    f = named(features(np.eye(N, dtype=np.float32), T, R))
    assert (f["self_words"], f["band_words"], f["argmax_band_words"]) == pytest.approx((1, 1, 1))
    assert (f["cls_words"], f["sep_words"], f["self_regions"]) == pytest.approx((0, 0, 1))
    assert f["consistency"] == pytest.approx(1 / N) and f["argmax_agree_text"] == pytest.approx(1 / T)
    # every row on [SEP]: a stripe, not a diagonal, and all rows alike
    g = named(features(column_map(T - 1), T, R))
    assert (g["self_words"], g["band_words"], g["argmax_band_words"]) == pytest.approx((0, 0, 0))
    assert (g["sep_words"], g["sep_region"], g["cls_region"]) == pytest.approx((1, 1, 0))
    assert (g["consistency"], g["consistency_text"], g["argmax_agree_region"]) == pytest.approx((1, 1, 1))
    # every row on word-piece 3: the word stripe features see it, the [CLS]/[SEP] ones do not
    h = named(features(column_map(3), T, R))
    assert (h["word_col_text"], h["word_col_region"], h["special_text"]) == pytest.approx((1, 1, 0))
    # a text of [CLS] [SEP] only has no word-piece rows: those features are 0, the others still defined
    e = named(features(np.eye(2 + R, dtype=np.float32), 2, R))
    assert (e["self_words"], e["word_col_region"], e["self_regions"]) == pytest.approx((0, 0, 1))


def test_cross_rows_count_rows_that_leave_their_modality():
    f = named(features(block_map(reversed_=True), T, R))
    assert (f["cross_rows_text"], f["cross_rows_region"]) == pytest.approx((1, 1))
    a = block_map()
    a[:4] = 0
    a[:4, T:] = 1 / R  # four text rows look at the regions
    g = named(features(a, T, R))
    assert (g["cross_rows_text"], g["cross_rows_region"]) == pytest.approx((4 / T, 0))


def test_stack_equals_single_maps_and_head_stats():
    rng = np.random.default_rng(1)
    maps = rng.random((5, N, N)).astype(np.float32)
    maps /= maps.sum(-1, keepdims=True)
    stacked = map_features(maps, T, R)
    assert stacked.shape == (5, len(FEATURE_NAMES)) and stacked.dtype == np.float32
    for k in range(5):
        np.testing.assert_allclose(stacked[k], features(maps[k], T, R), rtol=1e-5, atol=1e-7)
    a = np.full((N, N), 1 / N, np.float32)
    a[0] = 0
    a[0, :T], a[0, T:] = 0.3 / T, 0.7 / R  # [CLS] gives 30 % to text, 70 % to regions
    stats = head_stats(a, T, R)
    assert stats["mi_text"][0] == pytest.approx(0.3) and stats["mi_region"][0] == pytest.approx(0.7)
    assert stats["cls_mass"][0] == pytest.approx(scalar_features(a, T, R)["cls"][0])


def test_layout_checks():
    with pytest.raises(ValueError, match="n_text"):
        check_layout(10, 1, 9)
    with pytest.raises(ValueError, match="n_regions"):
        check_layout(10, 10, 0)
    with pytest.raises(ValueError, match="map size"):
        features(np.eye(10), 4, 5)


# ------------------------------------------------------------------------------------------- extraction
@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = UniterConfig.from_preset("uniter-mini", num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                      intermediate_size=64)
    return UniterForPretraining(config).eval()


def test_padding_changes_nothing(tiny_corpus, tiny_model):
    dataset = ImageTextDataset(tiny_corpus, "train")
    items = [dataset[i] for i in range(6)]
    lengths = {(len(it["input_ids"]), len(it["img_feat"])) for it in items}
    assert len(lengths) > 1  # the batch really is padded for some of them
    together = batch_maps(tiny_model.uniter, collate(items))
    for item, maps in zip(items, together):
        alone = batch_maps(tiny_model.uniter, collate([item]))[0]
        t, r = len(item["input_ids"]), len(item["img_feat"])
        assert maps.shape == alone.shape == (2, 4, t + r, t + r) and maps.dtype == np.float32
        np.testing.assert_allclose(maps, alone, atol=2e-6)
        np.testing.assert_allclose(maps.sum(-1), 1, atol=1e-5)  # padding took no mass
        np.testing.assert_allclose(map_features(maps.reshape(8, t + r, t + r), t, r),
                                   map_features(alone.reshape(8, t + r, t + r), t, r), atol=1e-5)


def test_streamed_maps_carry_their_layout(tiny_corpus, tiny_model):
    examples = list(iter_example_attention(tiny_model, tiny_corpus, "val", batch_size=2, max_examples=3,
                                           progress=False))
    assert [e.layout.example for e in examples] == [0, 1, 2]
    dataset = ImageTextDataset(tiny_corpus, "val")
    for e in examples:
        lay = e.layout
        assert lay.tokens[0] == "[CLS]" and lay.tokens[-1] == "[SEP]"
        assert lay.n_regions == len(dataset[lay.example]["img_feat"]) == len(lay.region_boxes)
        assert set(lay.region_classes) <= set(dataset.store.class_names)
        assert lay.kinds().count("region") == lay.n_regions and len(lay.labels()) == lay.n
        assert e.maps.shape == (2, 4, lay.n, lay.n)
    heads = list(iter_attention_maps(tiny_model, tiny_corpus, "val", batch_size=2, max_examples=3, progress=False))
    assert [(h.layout.example, h.layer, h.head) for h in heads[:5]] == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 0, 3),
                                                                         (0, 1, 0)]
    assert len(heads) == 3 * 2 * 4
    np.testing.assert_array_equal(heads[5].map, examples[0].maps[1, 1])
