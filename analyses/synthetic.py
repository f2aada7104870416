"""Labelled synthetic attention maps for the six patterns, to train and sanity-check the classifier.

No public labelled set of attention maps exists, so the classifier first learns from
maps drawn here. Each map is built in steps, each step adding the variety real heads show:

1. a template of its class (row-stochastic [n, n], layout [CLS] words [SEP] regions):
   vertical            every row on [CLS] and/or [SEP] (a per-map split, jittered per row);
   diagonal            every row on i-1, i, i+1 (a per-map preference among the three, jittered per row);
   vertical_diagonal   a per-map blend (35-65 %) of the two above;
   block               text rows on text keys, region rows on region keys, with random key preferences;
   reversed_block      text rows on region keys, region rows on text keys, likewise;
   heterogeneous       every row over all keys with row-specific preferences (peaky or spread), sometimes
                       with most mass on one to three content keys (words or regions: input-dependent stripes);
   block-like templates give [CLS]/[SEP] reduced weight, so that they do not turn into vertical maps;
2. optionally (not for "sharp" maps) a minority template of another class, 10-30 % of the mass;
3. a diffuse background: mass b spread near-uniformly (b <= 0.1 sharp, 0.1-0.4 diffuse);
4. a temperature (A^(1/tau), renormalised) and multiplicative log-normal noise, then row normalisation.

Sizes: 5-60 text positions including [CLS]/[SEP], 5-100 regions. Map i of a (seed, sharpness) is always the
same, whatever else is generated, because it has its own random generator.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from analyses.patterns import PATTERNS, map_features

TEXT_RANGE = (5, 60)
REGION_RANGE = (5, 100)
SHARPNESS = ("sharp", "diffuse", "mixed")
SPECIAL_DAMPING = (0.05, 0.4)  # weight factor of [CLS]/[SEP] in block-like templates


@dataclass
class SyntheticMap:
    map: np.ndarray  # [n, n] float32, rows sum to 1
    n_text: int
    n_regions: int
    label: str
    params: dict = field(default_factory=dict)


def _normalise(a: np.ndarray) -> np.ndarray:
    return a / a.sum(-1, keepdims=True)


def _vertical(rng, t: int, r: int) -> np.ndarray:
    n = t + r
    split = rng.choice([1.0, 0.0, rng.uniform(0.2, 0.8)])  # all [CLS], all [SEP], or both
    w = np.clip(split + rng.normal(0, 0.1, n), 0, 1)
    p = np.zeros((n, n))
    p[:, 0] = w
    p[:, t - 1] += 1 - w
    return p


def _diagonal(rng, t: int, r: int) -> np.ndarray:
    n = t + r
    preference = rng.dirichlet(np.full(3, 0.8))  # previous, self, next
    w = rng.dirichlet(preference * 20 + 0.05, size=n)
    p = np.zeros((n, n + 2))  # padded by one column each side, cropped below
    rows = np.arange(n)
    for offset in range(3):
        p[rows, rows + offset] = w[:, offset]
    p = p[:, 1:-1]
    empty = p.sum(1) == 0
    p[empty, rows[empty]] = 1.0
    return _normalise(p)


def _vertical_diagonal(rng, t: int, r: int) -> np.ndarray:
    blend = rng.uniform(0.35, 0.65)
    return blend * _vertical(rng, t, r) + (1 - blend) * _diagonal(rng, t, r)


def _profile(rng, size: int, rows: int, specials: list[int]) -> np.ndarray:
    """Rows over `size` keys: a shared key preference blended with row-specific ones."""
    alpha = np.exp(rng.uniform(np.log(0.2), np.log(5.0)))
    shared = rng.dirichlet(np.full(size, alpha))
    own = rng.dirichlet(np.full(size, alpha), size=rows)
    mix = rng.uniform(0.2, 0.8)
    p = mix * shared + (1 - mix) * own
    if specials:
        p[:, specials] *= rng.uniform(*SPECIAL_DAMPING)
    return _normalise(p)


def _block(rng, t: int, r: int, reversed_: bool = False) -> np.ndarray:
    n = t + r
    p = np.zeros((n, n))
    if reversed_:
        p[:t, t:] = _profile(rng, r, t, [])
        p[t:, :t] = _profile(rng, t, r, [0, t - 1])
    else:
        p[:t, :t] = _profile(rng, t, t, [0, t - 1])
        p[t:, t:] = _profile(rng, r, r, [])
    return p


def _heterogeneous(rng, t: int, r: int) -> np.ndarray:
    n = t + r
    scale = rng.uniform(0.5, 3.0)  # small: spread rows, large: a few input-dependent peaks per row
    logits = scale * (rng.normal(size=(1, n)) * rng.uniform(0, 1) + rng.normal(size=(n, n)))
    p = _normalise(np.exp(logits - logits.max(1, keepdims=True)))
    if rng.random() < 0.4:  # stripes on a few content keys (words or regions), not on [CLS]/[SEP]
        keys = rng.choice([j for j in range(n) if j not in (0, t - 1)], size=int(rng.integers(1, 4)), replace=False)
        stripes = np.zeros(n)
        stripes[keys] = rng.dirichlet(np.ones(len(keys)))
        share = rng.uniform(0.3, 0.8)
        p = (1 - share) * p + share * stripes
    p[:, [0, t - 1]] *= rng.uniform(*SPECIAL_DAMPING)
    return _normalise(p)


TEMPLATES = {
    "vertical": _vertical,
    "diagonal": _diagonal,
    "vertical_diagonal": _vertical_diagonal,
    "block": _block,
    "heterogeneous": _heterogeneous,
    "reversed_block": lambda rng, t, r: _block(rng, t, r, reversed_=True),
}


def synthetic_map(index: int, seed: int = 0, sharpness: str = "mixed", label: str | None = None) -> SyntheticMap:
    """Map `index` of the stream (seed, sharpness); its label is PATTERNS[index % 6] unless given."""
    if sharpness not in SHARPNESS:
        raise ValueError(f"sharpness {sharpness!r} is not one of {SHARPNESS}")
    label = label or PATTERNS[index % len(PATTERNS)]
    rng = np.random.default_rng([seed, index, SHARPNESS.index(sharpness)])
    t = int(rng.integers(TEXT_RANGE[0], TEXT_RANGE[1] + 1))
    r = int(rng.integers(REGION_RANGE[0], REGION_RANGE[1] + 1))
    n = t + r
    sharp = sharpness == "sharp" or (sharpness == "mixed" and rng.random() < 0.5)
    p = TEMPLATES[label](rng, t, r)
    minority, share = None, 0.0
    if not sharp and rng.random() < 0.5:
        minority = str(rng.choice([c for c in PATTERNS if c != label]))
        share = rng.uniform(0.1, 0.3)
        p = (1 - share) * p + share * TEMPLATES[minority](rng, t, r)
    background = rng.uniform(0.0, 0.1) if sharp else rng.uniform(0.1, 0.4)
    p = (1 - background) * p + background * rng.dirichlet(np.full(n, 4.0), size=n) + 1e-7
    tau = rng.uniform(0.8, 1.1) if sharp else rng.uniform(0.9, 1.3)
    sigma = rng.uniform(0.0, 0.2) if sharp else rng.uniform(0.1, 0.5)
    a = _normalise(p ** (1 / tau) * np.exp(sigma * rng.normal(size=(n, n))))
    params = {"sharp": bool(sharp), "minority": minority, "minority_share": float(share),
              "background": float(background), "temperature": float(tau), "noise": float(sigma)}
    return SyntheticMap(a.astype(np.float32), t, r, label, params)


def generate(n: int, seed: int = 0, sharpness: str = "mixed", start: int = 0) -> Iterator[SyntheticMap]:
    """Maps start .. start+n-1 of the stream: classes in turn, so every run of six holds all of them."""
    for index in range(start, start + n):
        yield synthetic_map(index, seed, sharpness)


def synthetic_features(n: int, seed: int = 0, sharpness: str = "mixed") -> tuple[np.ndarray, np.ndarray]:
    """(features [n, F], labels [n]) of the first n maps, computed one map at a time (no maps are kept)."""
    xs, ys = [], []
    for m in generate(n, seed, sharpness):
        xs.append(map_features(m.map, m.n_text, m.n_regions)[0])
        ys.append(m.label)
    return np.stack(xs), np.array(ys)
