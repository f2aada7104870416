"""Size-invariant features of attention maps, and the per-head statistics of the exports.

A map A [n, n] is one head on one example cropped to its real positions: rows are queries, columns keys,
laid out `[CLS] w1 .. wk [SEP] r1 .. rm` with n_text = k + 2 (it counts [CLS] and [SEP]) and n_regions = m.
Rows sum to 1. Every feature is either a mean over query rows of some mass, a normalised entropy, a size
ratio, or an area-averaged thumbnail, so that one classifier serves texts of 5 to 60 tokens and 5 to 100
regions alike. Bump FEATURE_VERSION whenever a feature's definition changes: saved classifiers record it and
refuse features of another version.

`map_features` works on a stack [K, n, n] of maps sharing one layout (all heads of all layers of one
example), which is how extraction delivers them and what makes thousands of maps per second cheap.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy.special import entr

FEATURE_VERSION = 3

# The six classes of the UNITER paper (after Kovaleva et al. 2019), in a fixed order.
PATTERNS = ("vertical", "diagonal", "vertical_diagonal", "block", "heterogeneous", "reversed_block")

THUMB = 8  # thumbnail side per quadrant
QUADRANTS = ("tt", "tr", "rt", "rr")  # (query block, key block): t = text incl. [CLS]/[SEP], r = regions

SCALAR_FEATURES = {
    "tt": "text->text: mean over text query rows of the row mass on text keys ([CLS], word-pieces, [SEP])",
    "tr": "text->region: mean over text query rows of the row mass on region keys",
    "rt": "region->text: mean over region query rows of the row mass on text keys",
    "rr": "region->region: mean over region query rows of the row mass on region keys",
    "cls": "mean over all query rows of the mass on the [CLS] column",
    "sep": "mean over all query rows of the mass on the [SEP] column",
    "diag": "mean over all query rows of the mass on the band |i - j| <= 1 (the token and its neighbours)",
    "diag_text": "as diag, over text query rows only",
    "diag_region": "as diag, over region query rows only (a region, or its neighbours in the detector's order)",
    "entropy": "mean row entropy divided by log(n): 0 = every row on one key, 1 = every row uniform",
    "max_col": "mean attention received by the most-attended key: max over keys of the column's row mean",
    "text_share": "n_text / n, the share of positions that are text (what a uniform map's tt/rt would be)",
    "special_text": "mean over text query rows of the mass on [CLS] + [SEP]",
    "special_region": "mean over region query rows of the mass on [CLS] + [SEP]",
    "max_col_text": "as max_col, over text query rows only (a stripe that text rows share)",
    "max_col_region": "as max_col, over region query rows only (a stripe that region rows share)",
    "top3_cols": "share of all mass on the three most-attended keys (a few vertical stripes -> near 1)",
    "top3_cols_text": "as top3_cols, over text query rows only",
    "top3_cols_region": "as top3_cols, over region query rows only (region rows on a few columns vs spread)",
    "row_max": "mean over query rows of the row's largest weight (sharp rows -> 1, diffuse rows -> 1/n)",
    "entropy_text": "as entropy, over text query rows only",
    "entropy_region": "as entropy, over region query rows only",
    # word-piece rows and keys without [CLS] and [SEP]: a diagonal is told apart from special-token stripes
    "self_words": "mean over word-piece rows of the mass on the word-piece itself",
    "band_words": "mean over word-piece rows of the mass on word-piece keys within |i - j| <= 1",
    "argmax_band_words": "share of word-piece rows whose largest weight is on the word-piece itself or a "
                         "neighbouring word-piece",
    "cls_words": "mean over word-piece rows of the mass on [CLS]",
    "sep_words": "mean over word-piece rows of the mass on [SEP]",
    "cls_region": "mean over region rows of the mass on [CLS]",
    "sep_region": "mean over region rows of the mass on [SEP]",
    "word_col_text": "the most-attended word-piece key over word-piece rows (a stripe on one word, not [CLS]/[SEP])",
    "word_col_region": "the most-attended word-piece key over region rows (a word stripe through the regions)",
    "self_regions": "mean over region rows of the mass on the region itself",
    # how alike the rows are: stripes make every row the same, diagonals and heterogeneous maps do not
    "consistency": "mean overlap sum_j min(A_ij, m_j) of each row with the mean row m (1 = identical rows)",
    "consistency_text": "as consistency, over text rows and their own mean row",
    "consistency_region": "as consistency, over region rows and their own mean row",
    "argmax_agree_text": "share of text rows whose largest weight is on the text rows' most common argmax key",
    "argmax_agree_region": "share of region rows whose largest weight is on the region rows' most common argmax",
    "cross_rows_text": "share of text rows with more than half of their mass on regions",
    "cross_rows_region": "share of region rows with more than half of their mass on text",
}
THUMB_FEATURES = [f"{q}_{a}{b}" for q in QUADRANTS for a in range(THUMB) for b in range(THUMB)]
FEATURE_NAMES = list(SCALAR_FEATURES) + THUMB_FEATURES
FEATURE_DOC = ("Thumbnails {q}_{a}{b}: quadrant q resampled to 8x8 by area: cell (a, b) is the mean over the "
               "query rows falling in row bin a of the mass on the keys falling in column bin b (fractional "
               "overlaps weighted), so a thumbnail row sums to the quadrant's row mass whatever its size.")

HEAD_STATS = {
    "entropy": SCALAR_FEATURES["entropy"],
    "cls_mass": SCALAR_FEATURES["cls"],
    "sep_mass": SCALAR_FEATURES["sep"],
    "diag_mass": SCALAR_FEATURES["diag"],
    "tt": SCALAR_FEATURES["tt"], "tr": SCALAR_FEATURES["tr"],
    "rt": SCALAR_FEATURES["rt"], "rr": SCALAR_FEATURES["rr"],
    "max_col": SCALAR_FEATURES["max_col"],
    "mi_text": "modality importance (Cao et al. 2020): share of [CLS]'s attention row on text keys",
    "mi_region": "modality importance (Cao et al. 2020): share of [CLS]'s attention row on region keys",
}


def check_layout(n: int, n_text: int, n_regions: int) -> None:
    """The layout every feature assumes: [CLS] and [SEP] present, at least one region, nothing else."""
    if n_text < 2:
        raise ValueError(f"n_text {n_text} < 2: the text part counts [CLS] and [SEP]")
    if n_regions < 1:
        raise ValueError(f"n_regions {n_regions} < 1: a map needs at least one region")
    if n_text + n_regions != n:
        raise ValueError(f"n_text {n_text} + n_regions {n_regions} != map size {n}")


@functools.lru_cache(maxsize=512)
def _bins(m: int, k: int = THUMB) -> tuple[np.ndarray, np.ndarray]:
    """(average, share) matrices [k, m] mapping m cells onto k equal bins by overlap.

    average rows sum to 1 (mean of the cells in a bin); share columns sum to 1 (a cell's mass split
    among the bins it overlaps), so rows are averaged and keys summed.
    """
    edges = np.arange(m + 1) * (k / m)
    start = np.arange(k)[:, None]
    overlap = np.clip(np.minimum(edges[1:][None, :], start + 1) - np.maximum(edges[:-1][None, :], start), 0, None)
    average = overlap / overlap.sum(1, keepdims=True)
    share = overlap / overlap.sum(0, keepdims=True)
    return average.astype(np.float32), share.astype(np.float32)


def thumbnail(block: np.ndarray) -> np.ndarray:
    """[K, r, c] quadrant -> [K, THUMB, THUMB]: rows averaged, keys summed into bins."""
    rows, _ = _bins(block.shape[1])
    _, cols = _bins(block.shape[2])
    return np.einsum("ar,krc,bc->kab", rows, block, cols, optimize=True)


@functools.lru_cache(maxsize=256)
def _band(n: int) -> np.ndarray:
    idx = np.arange(n)
    return (np.abs(idx[:, None] - idx[None, :]) <= 1).astype(np.float32)


def _consistency(rows: np.ndarray) -> np.ndarray:
    """[K, q, n] rows -> [K]: mean overlap of each row with the mean row (1 when all rows are the same)."""
    return np.minimum(rows, rows.mean(1, keepdims=True)).sum(-1).mean(1)


def _argmax_agreement(rows: np.ndarray) -> np.ndarray:
    """[K, q, n] rows -> [K]: share of rows whose argmax is the most common argmax among them."""
    top = rows.argmax(-1)  # [K, q]
    counts = np.zeros((rows.shape[0], rows.shape[2]), np.int64)
    np.add.at(counts, (np.arange(rows.shape[0])[:, None], top), 1)
    return counts.max(-1) / rows.shape[1]


def _word_features(maps: np.ndarray, t: int) -> dict[str, np.ndarray]:
    """The word-piece features; zeros when the text is only [CLS] [SEP]."""
    k = maps.shape[0]
    names = ("self_words", "band_words", "argmax_band_words", "cls_words", "sep_words", "word_col_text",
             "word_col_region")
    if t <= 2:
        return {name: np.zeros(k, np.float32) for name in names}
    words = maps[:, 1:t - 1]  # [K, w, n] word-piece rows
    w = t - 2
    idx = np.arange(w)
    on_words = words[:, :, 1:t - 1]  # [K, w, w]
    top = words.argmax(-1)  # [K, w]
    near = (np.abs(top - (idx + 1)) <= 1) & (top >= 1) & (top <= t - 2)  # on a word-piece, not [CLS]/[SEP]
    return {"self_words": on_words[:, idx, idx].mean(1), "band_words": (on_words * _band(w)).sum(-1).mean(1),
            "argmax_band_words": near.mean(1), "cls_words": words[:, :, 0].mean(1),
            "sep_words": words[:, :, t - 1].mean(1), "word_col_text": on_words.mean(1).max(-1),
            "word_col_region": maps[:, t:, 1:t - 1].mean(1).max(-1)}


def scalar_features(maps: np.ndarray, n_text: int, n_regions: int) -> dict[str, np.ndarray]:
    """The SCALAR_FEATURES (plus mi_text / mi_region) of a stack [K, n, n] of maps, each as a [K] array."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 2:
        maps = maps[None]
    k, n, _ = maps.shape
    check_layout(n, n_text, n_regions)
    t = n_text
    text_mass = maps[:, :, :t].sum(-1)  # [K, n] per query row
    region_mass = maps[:, :, t:].sum(-1)
    band = (maps * _band(n)).sum(-1)
    special = maps[:, :, 0] + maps[:, :, t - 1]  # [K, n] mass on [CLS] + [SEP] per query row
    row_entropy = entr(maps).sum(-1) / np.log(n)  # [K, n]
    column_mass = maps.mean(1)  # [K, n] attention received per key
    return {
        "tt": text_mass[:, :t].mean(1), "tr": region_mass[:, :t].mean(1),
        "rt": text_mass[:, t:].mean(1), "rr": region_mass[:, t:].mean(1),
        "cls": maps[:, :, 0].mean(1), "sep": maps[:, :, t - 1].mean(1),
        "diag": band.mean(1), "diag_text": band[:, :t].mean(1), "diag_region": band[:, t:].mean(1),
        "entropy": row_entropy.mean(1),
        "max_col": column_mass.max(-1),
        "text_share": np.full(k, t / n, dtype=np.float32),
        "special_text": special[:, :t].mean(1), "special_region": special[:, t:].mean(1),
        "max_col_text": maps[:, :t].mean(1).max(-1), "max_col_region": maps[:, t:].mean(1).max(-1),
        "top3_cols": np.sort(column_mass, axis=-1)[:, -3:].sum(-1),
        "top3_cols_text": np.sort(maps[:, :t].mean(1), axis=-1)[:, -3:].sum(-1),
        "top3_cols_region": np.sort(maps[:, t:].mean(1), axis=-1)[:, -3:].sum(-1),
        "row_max": maps.max(-1).mean(1),
        "entropy_text": row_entropy[:, :t].mean(1), "entropy_region": row_entropy[:, t:].mean(1),
        **_word_features(maps, t),
        "cls_region": maps[:, t:, 0].mean(1), "sep_region": maps[:, t:, t - 1].mean(1),
        "self_regions": np.diagonal(maps[:, t:, t:], axis1=1, axis2=2).mean(1),
        "consistency": _consistency(maps), "consistency_text": _consistency(maps[:, :t]),
        "consistency_region": _consistency(maps[:, t:]),
        "argmax_agree_text": _argmax_agreement(maps[:, :t]), "argmax_agree_region": _argmax_agreement(maps[:, t:]),
        "cross_rows_text": (region_mass[:, :t] > 0.5).mean(1), "cross_rows_region": (text_mass[:, t:] > 0.5).mean(1),
        "mi_text": maps[:, 0, :t].sum(-1), "mi_region": maps[:, 0, t:].sum(-1),
    }


def map_features(maps: np.ndarray, n_text: int, n_regions: int) -> np.ndarray:
    """Feature matrix [K, len(FEATURE_NAMES)] (float32) of a stack [K, n, n] (or one [n, n]) of maps."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 2:
        maps = maps[None]
    scalars = scalar_features(maps, n_text, n_regions)
    t = n_text
    thumbs = [thumbnail(maps[:, :t, :t]), thumbnail(maps[:, :t, t:]),
              thumbnail(maps[:, t:, :t]), thumbnail(maps[:, t:, t:])]
    columns = [scalars[name][:, None] for name in SCALAR_FEATURES] + [q.reshape(len(maps), -1) for q in thumbs]
    return np.concatenate(columns, axis=1).astype(np.float32)


def features(attention_map: np.ndarray, n_text: int, n_regions: int) -> np.ndarray:
    """Feature vector [len(FEATURE_NAMES)] of one map."""
    return map_features(attention_map, n_text, n_regions)[0]


def head_stats(maps: np.ndarray, n_text: int, n_regions: int) -> dict[str, np.ndarray]:
    """The HEAD_STATS of a stack [K, n, n] of maps (one [K] array each), for the statistics exports."""
    s = scalar_features(maps, n_text, n_regions)
    return {"entropy": s["entropy"], "cls_mass": s["cls"], "sep_mass": s["sep"], "diag_mass": s["diag"],
            "tt": s["tt"], "tr": s["tr"], "rt": s["rt"], "rr": s["rr"], "max_col": s["max_col"],
            "mi_text": s["mi_text"], "mi_region": s["mi_region"]}
