"""A transparent rule baseline: fixed thresholds on the scalar features, checked in order.

It is what a reader would write by hand from the pattern definitions (analyses/patterns.py), and it is
reported beside the classifier so that the classifier has to earn its place. With V = cls + sep mass and
D = diagonal-band mass (see analyses.patterns.SCALAR_FEATURES):

1. vertical_diagonal  V >= 0.25 and D >= 0.25   both structures hold a real share of every row
2. vertical           V >= 0.5                  most mass on the [CLS]/[SEP] columns
3. diagonal           D >= 0.5                  most mass on the token itself or its neighbours
4. reversed_block     tr >= 0.6 and rt >= 0.6   both modalities look mostly at the other one
5. block              tt >= 0.6 and rr >= 0.6   both modalities look mostly at themselves
6. heterogeneous      anything else

The thresholds were set from the pattern definitions and checked on sharp synthetic maps; they are not fitted,
so diffuse heads (whose structured share sits below the thresholds) fall to "heterogeneous".
"""
from __future__ import annotations

import numpy as np

from analyses.patterns import FEATURE_NAMES

THRESHOLDS = {"vd_vertical": 0.25, "vd_diagonal": 0.25, "vertical": 0.5, "diagonal": 0.5,
              "reversed_block": 0.6, "block": 0.6}


def rule_predict(features: np.ndarray) -> np.ndarray:
    """Labels [N] (str) for a feature matrix [N, F] in FEATURE_NAMES order (one vector [F] also works)."""
    x = np.atleast_2d(np.asarray(features))
    col = {name: x[:, FEATURE_NAMES.index(name)] for name in ("cls", "sep", "diag", "tt", "tr", "rt", "rr")}
    v, d = col["cls"] + col["sep"], col["diag"]
    th = THRESHOLDS
    conditions = [(v >= th["vd_vertical"]) & (d >= th["vd_diagonal"]),
                  v >= th["vertical"],
                  d >= th["diagonal"],
                  (col["tr"] >= th["reversed_block"]) & (col["rt"] >= th["reversed_block"]),
                  (col["tt"] >= th["block"]) & (col["rr"] >= th["block"])]
    choices = ["vertical_diagonal", "vertical", "diagonal", "reversed_block", "block"]
    return np.select(conditions, choices, default="heterogeneous").astype(str)
