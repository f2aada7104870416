"""Figures of the behaviour analyses (head importance, grounding, relevance, dynamics), in the style of
analyses.figures (same pattern colours and letters, PNG + PDF + SVG, written atomically).

Each `*_figure(tables)` returns a matplotlib figure; `write_<analysis>(tables, summary, folder)` saves them all.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm

from analyses.figures import COLORS, SHORT, STYLE, _grid, _grid_axes, save
from analyses.patterns import PATTERNS
from analyses.probe import METRIC_NAMES

# the pruning order shown with each metric's curve: the metric itself, or the one whose importance stands for it
ORDER_FOR = {"r1": "margin", "margin": "margin", "mlm_accuracy": "mlm_loss", "mlm_loss": "mlm_loss",
             "wra_alignment": "wra_alignment"}
ORDER_STYLE = {"ablation": ("#CC3311", "-"), "gradient": ("#0077BB", "--"), "random": ("#777777", ":")}


def _annotated_grid(ax, values: np.ndarray, layers, heads, labels: np.ndarray | None, cmap, norm, fmt="{:.2f}"):
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    if values.size <= 400:
        for (i, j), v in np.ndenumerate(values):
            if v == v:
                r, g, b, _ = image.cmap(image.norm(v))
                text = fmt.format(v) + (f"\n{labels[i, j]}" if labels is not None else "")
                ax.text(j, i, text, ha="center", va="center", fontsize=5.5,
                        color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
    _grid_axes(ax, layers, heads)
    return image


def _diverging_norm(values: np.ndarray) -> TwoSlopeNorm:
    largest = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0
    largest = largest or 1e-6
    return TwoSlopeNorm(vcenter=0.0, vmin=-largest, vmax=largest)


def importance_grid_figure(heads: pd.DataFrame, metrics=("margin", "mlm_loss", "wra_alignment")):
    """Layer x head grids of the ablation effect on each metric (red: removing the head hurts), with the head's
    dominant pattern letter."""
    letters, _, _ = _grid(heads.assign(code=heads["dominant_pattern"].map(PATTERNS.index)), "code")
    labels = np.vectorize(lambda c: SHORT[PATTERNS[int(c)]] if c == c else "")(letters)
    n_layers, n_heads = letters.shape
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(3.6, 0.45 * n_heads + 2.4),
                                                       len(metrics) * max(1.6, 0.42 * n_layers + 0.8)),
                             squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        values, layers, head_numbers = _grid(heads, f"effect_{metric}")
        image = _annotated_grid(ax, values, layers, head_numbers, labels, "RdBu_r", _diverging_norm(values),
                                "{:.3f}")
        fig.colorbar(image, ax=ax, label="effect")
        ax.set_title(f"Removing one head: {METRIC_NAMES[metric]} gets worse by")
    fig.tight_layout()
    return fig


def pruning_figure(pruning: pd.DataFrame, base: dict, metrics=("r1", "margin", "mlm_accuracy", "wra_alignment")):
    """Each metric against the share of heads removed: least important first (by ablation, by gradient) and in
    random order (mean of the seeds, their range shaded)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 2.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for kind in ("ablation", "gradient"):
            curve = pruning[(pruning["order"] == kind) & (pruning["order_metric"] == ORDER_FOR[metric])]
            if len(curve):
                color, style = ORDER_STYLE[kind]
                ax.plot(curve["share"], curve[metric], style, color=color, marker="o", markersize=2.5,
                        label=f"{kind} order")
        random = pruning[pruning["order"] == "random"]
        if len(random):
            stats = random.groupby("share")[metric].agg(["mean", "min", "max"])
            color, style = ORDER_STYLE["random"]
            ax.plot(stats.index, stats["mean"], style, color=color, label="random order")
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2, linewidth=0)
        ax.axhline(base[metric], color="black", linewidth=0.6, alpha=0.5)
        ax.set_xlabel("share of heads removed")
        ax.set_title(METRIC_NAMES[metric], fontsize=8)
    axes[0, 0].legend(loc="lower left", frameon=False, fontsize=6)
    fig.suptitle(f"Pruning curves (least important first by {', '.join(sorted(set(ORDER_FOR[m] for m in metrics)))})",
                 fontsize=8)
    fig.tight_layout()
    return fig


def effect_by_pattern_figure(heads: pd.DataFrame, metrics=("margin", "mlm_loss", "wra_alignment")):
    """Ablation effect of every head, grouped by its dominant pattern (dots) with the group mean (bar)."""
    present = [p for p in PATTERNS if (heads["dominant_pattern"] == p).any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.8 * len(metrics), 2.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for x, pattern in enumerate(present):
            values = heads.loc[heads["dominant_pattern"] == pattern, f"effect_{metric}"].to_numpy()
            ax.bar(x, values.mean(), color=COLORS[pattern], width=0.7, alpha=0.6)
            jitter = np.linspace(-0.2, 0.2, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(x + jitter, values, s=5, color="black", zorder=3)
        ax.axhline(0, color="black", linewidth=0.6)
        counts = [int((heads["dominant_pattern"] == p).sum()) for p in present]
        ax.set_xticks(range(len(present)), [f"{SHORT[p]}\n{n}" for p, n in zip(present, counts)])
        ax.set_title(f"effect on {METRIC_NAMES[metric]}", fontsize=8)
    fig.suptitle("Do the heads of a pattern matter? (one dot per head, bar: mean; under each letter: heads)", fontsize=8)
    fig.tight_layout()
    return fig


def write_importance(tables: dict[str, pd.DataFrame], summary: dict, folder: Path) -> None:
    with plt.rc_context(STYLE):
        save(importance_grid_figure(tables["heads"]), folder, "importance_grid")
        save(pruning_figure(tables["pruning"], summary["base"]), folder, "pruning_curves")
        save(effect_by_pattern_figure(tables["heads"]), folder, "effect_by_pattern")


def grounding_grid_figure(heads: pd.DataFrame):
    """Layer x head grids of word -> region and region -> word grounding (as a multiple of chance) and of the
    cross-modal attention share, with the dominant pattern letter."""
    letters, _, _ = _grid(heads.assign(code=heads["dominant_pattern"].map(PATTERNS.index)), "code")
    labels = np.vectorize(lambda c: SHORT[PATTERNS[int(c)]] if c == c else "")(letters)
    n_layers, n_heads = letters.shape
    panels = [("word_to_region_over_chance", "word → region: hits / chance", "viridis"),
              ("region_to_word_over_chance", "region → word: hits / chance", "viridis"),
              ("cross_modal", "attention to the other modality", "magma")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(3.6, 0.45 * n_heads + 2.4),
                                                      len(panels) * max(1.6, 0.42 * n_layers + 0.8)), squeeze=False)
    for ax, (column, title, cmap) in zip(axes[:, 0], panels):
        values, layers, head_numbers = _grid(heads, column)
        finite = values[np.isfinite(values)]
        top = float(finite.max()) if finite.size else 1.0
        norm = plt.Normalize(0, 1 if column == "cross_modal" else max(top, 1e-6))
        image = _annotated_grid(ax, values, layers, head_numbers, labels, cmap, norm)
        fig.colorbar(image, ax=ax, label="share" if column == "cross_modal" else "× chance")
        ax.set_title(title)
    fig.tight_layout()
    return fig


def grounding_layers_figure(layers: pd.DataFrame):
    """Per layer: WRA's plan on that layer's states and the head-averaged attention's pointing game, with chance."""
    fig, ax = plt.subplots(figsize=(4.2, 2.5))
    rule = "covering" if layers["plan_covering"].notna().any() else "box"
    for where, color, label in (("plan", "#0077BB", "WRA plan on the layer's states"),
                                ("attention", "#CC3311", "attention pointing game")):
        data = layers.dropna(subset=[f"{where}_{rule}"])
        ax.plot(data["layer"], data[f"{where}_{rule}"], "-o", color=color, markersize=3, label=label)
        ax.plot(data["layer"], data[f"{where}_{rule}_chance"], ":", color=color, linewidth=0.8)
    ax.set_xlabel("layer (0: embeddings)")
    ax.set_ylabel(f"hit rate ({'covering' if rule == 'covering' else 'own box'} rule)")
    ax.set_xticks(layers["layer"])
    ax.legend(frameon=False, fontsize=6, loc="best")
    ax.set_title("Grounding per layer (dotted: chance)")
    return fig


def write_grounding(tables: dict[str, pd.DataFrame], folder: Path) -> None:
    with plt.rc_context(STYLE):
        save(grounding_grid_figure(tables["heads"]), folder, "grounding_grid")
        save(grounding_layers_figure(tables["layers"]), folder, "grounding_layers")


RELEVANCE_STYLE = {"attention": ("#CC3311", "-"), "rollout": ("#EE7733", "-."), "gradient": ("#0077BB", "--"),
                   "random": ("#777777", ":")}


def perturbation_figure(curves: pd.DataFrame, auc: pd.DataFrame | None = None):
    """Match probability against the share of regions (top) or word-pieces (bottom) removed, most relevant first
    (left) and least relevant first (right), one line per method; the legend gives each curve's area."""
    fig, axes = plt.subplots(2, 2, figsize=(6.4, 4.6), sharex=True, sharey=True)
    for i, modality in enumerate(("regions", "words")):
        for j, direction in enumerate(("positive", "negative")):
            ax = axes[i, j]
            for order, (color, style) in RELEVANCE_STYLE.items():
                curve = curves[(curves["order"] == order) & (curves["modality"] == modality)
                               & (curves["direction"] == direction)].sort_values("share")
                if not len(curve):
                    continue
                label = order
                if auc is not None:
                    row = auc[(auc["order"] == order) & (auc["modality"] == modality) & (auc["direction"] == direction)]
                    if len(row):
                        label += f" (area {float(row['auc'].iloc[0]):.3f})"
                ax.plot(curve["share"], curve["probability"], style, color=color, marker="o", markersize=2,
                        label=label)
            ax.set_title(f"{modality}, {'most' if direction == 'positive' else 'least'} relevant first "
                         f"({'lower' if direction == 'positive' else 'higher'} is better)", fontsize=7)
            ax.legend(frameon=False, fontsize=5.5, loc="best")
            if i == 1:
                ax.set_xlabel("share removed")
            if j == 0:
                ax.set_ylabel("match probability")
    fig.tight_layout()
    return fig


def pointing_figure(pointing: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(3.4, 2.3))
    colors = [RELEVANCE_STYLE[m][0] for m in pointing["method"]]
    ax.bar(range(len(pointing)), pointing["hits"].fillna(0), color=colors, width=0.6)
    if len(pointing) and pointing["word_pieces"].iloc[0] > 0:
        ax.axhline(float(pointing["chance"].iloc[0]), color="black", linestyle=":", linewidth=0.8, label="chance")
        ax.legend(frameon=False, fontsize=6)
    else:
        ax.text(0.5, 0.5, "no grounded word-pieces in this corpus", transform=ax.transAxes, ha="center")
    ax.set_xticks(range(len(pointing)), list(pointing["method"]))
    ax.set_ylabel("pointing game hit rate")
    ax.set_title("Does a word's most relevant region show its object?", fontsize=8)
    return fig


def write_relevance(tables: dict[str, pd.DataFrame], folder: Path) -> None:
    with plt.rc_context(STYLE):
        save(perturbation_figure(tables["curves"], tables["auc"]), folder, "perturbation_curves")
        save(pointing_figure(tables["pointing"]), folder, "pointing_game")


RUN_STYLES = ("-", "--", ":", "-.")
RUN_COLORS = ("#000000", "#CC3311", "#0077BB", "#009988")
LAYER_COLORS = ("#0077BB", "#EE7733", "#009988", "#CC3311", "#33BBEE", "#EE3377", "#BBBBBB", "#000000")


def _runs(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["run"]))


def metrics_over_steps_figure(steps: pd.DataFrame, metrics=("r1", "margin", "mlm_accuracy", "wra_alignment")):
    """Each probe metric against the training step, one line per run."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 2.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for style, color, run in zip(RUN_STYLES, RUN_COLORS, _runs(steps)):
            data = steps[steps["run"] == run].sort_values("step")
            ax.plot(data["step"], data[metric], style, marker="o", markersize=2.5, color=color, label=run)
        ax.set_xlabel("step")
        ax.set_title(METRIC_NAMES[metric], fontsize=8)
    axes[0, 0].legend(frameon=False, fontsize=6)
    fig.tight_layout()
    return fig


def patterns_over_steps_figure(layers: pd.DataFrame):
    """Pattern fractions of every layer against the step: one row of panels per run, one panel per layer."""
    runs, layer_numbers = _runs(layers), sorted(layers["layer"].unique())
    fig, axes = plt.subplots(len(runs), len(layer_numbers), figsize=(2.3 * len(layer_numbers) + 1.6,
                                                                      1.9 * len(runs) + 0.4), squeeze=False,
                             sharex=True, sharey=True)
    for i, run in enumerate(runs):
        for j, layer in enumerate(layer_numbers):
            ax = axes[i, j]
            data = layers[(layers["run"] == run) & (layers["layer"] == layer)].sort_values("step")
            ax.stackplot(data["step"], *[data[f"frac_{c}"] for c in PATTERNS], colors=[COLORS[c] for c in PATTERNS],
                         labels=[c.replace("_", " ") for c in PATTERNS])
            ax.set_ylim(0, 1)
            ax.set_title(f"{run}, layer {layer}", fontsize=7)
            if i == len(runs) - 1:
                ax.set_xlabel("step")
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize=6)
    fig.suptitle("Attention patterns during training (share of maps)", fontsize=8)
    fig.tight_layout()
    return fig


def grounding_over_steps_figure(steps: pd.DataFrame, layers: pd.DataFrame):
    """The best head's word -> region hit rate (with chance), the share of cross-modal heads, and each layer's
    attention pointing game against the step."""
    fig, axes = plt.subplots(1, 3, figsize=(8.4, 2.5))
    for style, color, run in zip(RUN_STYLES, RUN_COLORS, _runs(steps)):
        data = steps[steps["run"] == run].sort_values("step")
        axes[0].plot(data["step"], data["best_word_to_region"], style, color=color, marker="o", markersize=2.5,
                     label=run)
        axes[0].plot(data["step"], data["word_to_region_chance"], style, color="grey", linewidth=0.7)
        axes[1].plot(data["step"], data["cross_modal_heads"], style, color=color, marker="o", markersize=2.5)
        per_layer = layers[layers["run"] == run]
        for layer, color in zip(sorted(per_layer["layer"].unique()), LAYER_COLORS):
            line = per_layer[per_layer["layer"] == layer].sort_values("step")
            axes[2].plot(line["step"], line["attention_covering"], style, color=color, marker="o", markersize=2,
                         label=f"layer {layer}" if style == "-" else None)
    axes[0].set_title("best head, word → region (grey: chance)", fontsize=7)
    axes[1].set_title("share of heads with cross-modal attention > 0.5", fontsize=7)
    axes[2].set_title("pointing game per layer (heads averaged)", fontsize=7)
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(frameon=False, fontsize=6)
    axes[2].legend(frameon=False, fontsize=6)
    fig.tight_layout()
    return fig


def importance_over_steps_figure(heads: pd.DataFrame, metrics=("margin", "mlm_loss", "wra_alignment")):
    """Per layer, the summed ablation effect of its heads on each metric against the step."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.8 * len(metrics), 2.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for style, run in zip(RUN_STYLES, _runs(heads)):
            data = heads[heads["run"] == run].groupby(["layer", "step"])[f"effect_{metric}"].sum().reset_index()
            for layer, color in zip(sorted(data["layer"].unique()), LAYER_COLORS):
                line = data[data["layer"] == layer]
                ax.plot(line["step"], line[f"effect_{metric}"], style, color=color, marker="o", markersize=2,
                        label=f"{run}, layer {layer}")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xlabel("step")
        ax.set_title(f"summed effect on {METRIC_NAMES[metric]}", fontsize=7)
    axes[0, 0].legend(frameon=False, fontsize=5)
    fig.tight_layout()
    return fig


def write_dynamics(tables: dict[str, pd.DataFrame], folder: Path) -> None:
    with plt.rc_context(STYLE):
        save(metrics_over_steps_figure(tables["steps"]), folder, "metrics_over_steps")
        save(patterns_over_steps_figure(tables["layers"]), folder, "patterns_over_steps")
        save(grounding_over_steps_figure(tables["steps"], tables["layers"]), folder, "grounding_over_steps")
        save(importance_over_steps_figure(tables["heads"]), folder, "importance_over_steps")
