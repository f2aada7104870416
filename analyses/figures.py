"""Paper-style figures of the pattern statistics (matplotlib, Agg), each saved as PNG, PDF and SVG atomically.

Colours are fixed per pattern so that every figure of every run reads the same way.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from analyses.patterns import PATTERNS  # noqa: E402
from uniter_core.io import atomic_path  # noqa: E402

COLORS = {"vertical": "#4477AA", "diagonal": "#66CCEE", "vertical_diagonal": "#228833", "block": "#CCBB44",
          "heterogeneous": "#BBBBBB", "reversed_block": "#EE6677"}
FORMATS = ("png", "pdf", "svg")
SHORT = {"vertical": "V", "diagonal": "D", "vertical_diagonal": "V+D", "block": "B", "heterogeneous": "H",
         "reversed_block": "RB"}
STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7, "figure.dpi": 100,
         "axes.spines.top": False, "axes.spines.right": False}


def save(fig, folder: Path, name: str) -> None:
    for fmt in FORMATS:
        with atomic_path(folder / f"{name}.{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, dpi=200, bbox_inches="tight")
    plt.close(fig)


def pattern_fractions_per_layer(layers: pd.DataFrame):
    """Stacked bars: for each layer, the share of its maps predicted as each pattern."""
    fig, ax = plt.subplots(figsize=(max(3.2, 0.35 * len(layers) + 1.5), 2.4))
    bottom = np.zeros(len(layers))
    for c in PATTERNS:
        values = layers[f"frac_{c}"].to_numpy()
        ax.bar(layers["layer"], values, bottom=bottom, color=COLORS[c], label=c.replace("_", " "), width=0.8)
        bottom += values
    ax.set_xlabel("layer")
    ax.set_ylabel("share of maps")
    ax.set_ylim(0, 1)
    ax.set_xticks(layers["layer"])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_title("Attention patterns per layer")
    return fig


def _grid(heads: pd.DataFrame, column: str) -> tuple[np.ndarray, list, list]:
    """(values [layers, heads], layer numbers, head numbers) of a per-head column; NaN where a (layer, head)
    is absent, e.g. filtered out."""
    grid = heads.pivot(index="layer", columns="head", values=column).sort_index().sort_index(axis=1)
    return grid.to_numpy(dtype=float), list(grid.index), list(grid.columns)


def _grid_axes(ax, layers: list, heads: list) -> None:
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(len(heads)), [str(h) for h in heads])
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])


def _grid_figure(n_layers: int, n_heads: int):
    return plt.subplots(figsize=(max(3.2, 0.42 * n_heads + 2.2), max(2.0, 0.36 * n_layers + 0.9)))


def dominant_pattern_grid(heads: pd.DataFrame):
    """Layer x head grid coloured by each head's most frequent pattern (blank: a head not in the table)."""
    codes, layers, head_numbers = _grid(heads.assign(code=heads["dominant_pattern"].map(PATTERNS.index)), "code")
    n_layers, n_heads = codes.shape
    fig, ax = _grid_figure(n_layers, n_heads)
    ax.imshow(np.ma.masked_invalid(codes), cmap=ListedColormap([COLORS[c] for c in PATTERNS]), vmin=-0.5,
              vmax=len(PATTERNS) - 0.5, aspect="auto", interpolation="nearest")
    if n_layers * n_heads <= 400:
        for (i, j), code in np.ndenumerate(codes):
            if code == code:  # not NaN
                ax.text(j, i, SHORT[PATTERNS[int(code)]], ha="center", va="center", fontsize=7)
    _grid_axes(ax, layers, head_numbers)
    ax.legend(handles=[Patch(color=COLORS[c], label=f"{SHORT[c]}: {c.replace('_', ' ')}") for c in PATTERNS],
              loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_title("Dominant pattern per head")
    return fig


def reversed_block_share_grid(heads: pd.DataFrame):
    """Layer x head grid of the share of maps predicted reversed block (cross-modal attention). The colour
    scale runs from 0 to the largest share shown (not to 1), and its label says so, so that small shares
    still differ."""
    share, layers, head_numbers = _grid(heads, "frac_reversed_block")
    n_layers, n_heads = share.shape
    largest = float(np.nanmax(share)) if np.isfinite(share).any() else 0.0
    top = largest if largest > 0 else 1.0
    fig, ax = _grid_figure(n_layers, n_heads)
    image = ax.imshow(np.ma.masked_invalid(share), cmap="magma", vmin=0, vmax=top, aspect="auto",
                      interpolation="nearest")
    if n_layers * n_heads <= 400:
        for (i, j), v in np.ndenumerate(share):
            if v == v:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 * top else "black")
    _grid_axes(ax, layers, head_numbers)
    fig.colorbar(image, ax=ax, label=f"reversed-block share\n(scale 0 – {top:.2f}, the largest shown)" if largest > 0
                 else "reversed-block share\n(0 in every head shown)")
    ax.set_title("Cross-modal (reversed-block) share per head")
    return fig


FIGURES = {"pattern_fractions_per_layer": ("layers", pattern_fractions_per_layer),
           "dominant_pattern_grid": ("heads", dominant_pattern_grid),
           "reversed_block_share_grid": ("heads", reversed_block_share_grid)}


def write_all(layers: pd.DataFrame, heads: pd.DataFrame, folder: Path) -> list[Path]:
    """The three figures in every FORMATS; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"layers": layers, "heads": heads}
    made = []
    with plt.rc_context(STYLE):
        for name, (table, build) in FIGURES.items():
            save(build(tables[table]), folder, name)
            made += [folder / f"{name}.{fmt}" for fmt in FORMATS]
    return made


def render(name: str, layers: pd.DataFrame, heads: pd.DataFrame, fmt: str) -> bytes:
    """One of FIGURES as file bytes, drawn exactly as write_all draws it: for a format missing on disk
    (exports made before SVG was added) or for filtered tables."""
    table, build = FIGURES[name]
    buffer = io.BytesIO()
    with plt.rc_context(STYLE):
        fig = build({"layers": layers, "heads": heads}[table])
        fig.savefig(buffer, format=fmt, dpi=200, bbox_inches="tight")
        plt.close(fig)
    return buffer.getvalue()
