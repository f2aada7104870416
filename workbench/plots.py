"""Plotly figure builders: pure functions of arrays and tables, so they are tested without a browser.

Pattern colours and short names come from analyses.figures, so the app and the exported figures read alike.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from analyses.figures import COLORS, SHORT
from analyses.patterns import PATTERNS

HEAT = "Blues"
MASS = "YlOrRd"
MARGIN = dict(l=10, r=10, t=40, b=10)
FONT = 10  # the smallest text on any chart, in px
TICK_SPACING = 13  # px a tick label needs beside its neighbour at FONT px


def subtitle(text: str) -> str:
    """A second title line in a readable size (plotly's <sup> shrinks it below FONT)."""
    return f"<br><span style='font-size:{FONT + 2}px'>{text}</span>"


def _ticks(labels: list[str], length_px: float) -> dict:
    """Axis ticks that stay readable however many positions there are: every label while they fit `length_px`
    at TICK_SPACING px each, else every k-th (position 0 and the rest by step); the hover still names all."""
    step = max(1, int(np.ceil(len(labels) * TICK_SPACING / max(length_px, 1))))
    shown = list(range(0, len(labels), step))
    return dict(tickvals=shown, ticktext=[labels[i] for i in shown], tickfont=dict(size=FONT), automargin=True)


def _discrete_scale() -> list:
    n = len(PATTERNS)
    scale = []
    for i, c in enumerate(PATTERNS):
        scale += [[i / n, COLORS[c]], [(i + 1) / n, COLORS[c]]]
    return scale


def pattern_grid(heads: pd.DataFrame, title: str = "Dominant pattern per head") -> go.Figure:
    """Layer x head grid coloured by each head's most frequent pattern; hover shows fractions and stats."""
    heads = heads.sort_values(["layer", "head"])
    layers, n_heads = sorted(heads["layer"].unique()), sorted(heads["head"].unique())
    grid = heads.pivot(index="layer", columns="head", values="dominant_pattern").loc[layers, n_heads]
    codes = grid.map(PATTERNS.index).to_numpy()
    hover = np.empty(codes.shape, dtype=object)
    for row in heads.itertuples(index=False):
        r = row._asdict()
        fracs = "<br>".join(f"{c.replace('_', ' ')}: {r[f'frac_{c}']:.0%}" for c in PATTERNS if r[f"frac_{c}"] > 0)
        hover[layers.index(r["layer"]), n_heads.index(r["head"])] = (
            f"<b>layer {r['layer']}, head {r['head']}</b>: {r['dominant_pattern'].replace('_', ' ')}<br>{fracs}<br>"
            f"entropy {r['mean_entropy']:.2f} · [CLS] {r['mean_cls_mass']:.2f} · [SEP] {r['mean_sep_mass']:.2f}"
            f"<br>text→region {r['mean_tr']:.2f} · region→text {r['mean_rt']:.2f} · maps {r['n_maps']}")
    fig = go.Figure(go.Heatmap(
        z=codes, x=n_heads, y=layers, zmin=-0.5, zmax=len(PATTERNS) - 0.5, colorscale=_discrete_scale(),
        text=[[SHORT[PATTERNS[c]] for c in row] for row in codes], texttemplate="%{text}", customdata=hover,
        hovertemplate="%{customdata}<extra></extra>", xgap=2, ygap=2, showscale=False,
        textfont=dict(size=13 if len(n_heads) <= 16 else FONT)))
    for c in PATTERNS:  # a legend instead of a colour bar: six discrete colours read better as named swatches
        fig.add_scatter(x=[None], y=[None], mode="markers", name=c.replace("_", " "),
                        marker=dict(symbol="square", size=12, color=COLORS[c]))
    fig.update_layout(title=title, xaxis=dict(title="head", dtick=1), margin=MARGIN, plot_bgcolor="white",
                      yaxis=dict(title="layer", dtick=1, autorange="reversed"), height=max(340, 180 + 40 * len(layers)),
                      legend=dict(orientation="h", y=-0.3, yanchor="top", font=dict(size=FONT + 1)))
    return fig


def pattern_bars(layers: pd.DataFrame, title: str = "Pattern fractions per layer") -> go.Figure:
    """Stacked bars: the share of each layer's maps predicted as each pattern."""
    fig = go.Figure()
    for c in PATTERNS:
        fig.add_bar(x=layers["layer"], y=layers[f"frac_{c}"], name=c.replace("_", " "), marker_color=COLORS[c],
                    hovertemplate=f"layer %{{x}}: %{{y:.1%}} {c.replace('_', ' ')}<extra></extra>")
    fig.update_layout(barmode="stack", title=title, xaxis=dict(title="layer", dtick=1), margin=MARGIN,
                      yaxis=dict(title="share of maps", range=[0, 1], tickformat=".0%"), height=400,
                      legend=dict(orientation="h", y=-0.22, yanchor="top", font=dict(size=FONT + 1)))
    return fig


def heatmap_height(n: int) -> int:
    """Figure height of an n x n map: grows with the sequence so that rows keep their room (520-1100 px)."""
    return int(min(1100, max(520, 200 + 17 * n)))


HEATMAP_WIDTH_PX = 380  # the plot width a full-width map gets at a 1100 px window (for thinning key labels)


def attention_heatmap(attention: np.ndarray, labels: list[str], n_text: int, title: str = "",
                      height: int | None = None, hover_labels: list[str] | None = None,
                      width_px: int = HEATMAP_WIDTH_PX) -> go.Figure:
    """One attention map, rows = queries, columns = keys, lines after [SEP] between text and regions. Cells
    are not forced square, so the map fills its column; tick labels are thinned where they would not fit
    (`_ticks`, for a plot about `width_px` wide), and `hover_labels` (default: labels) name every cell on hover."""
    n = len(labels)
    height = height or heatmap_height(n)
    ticks = list(range(n))
    names = hover_labels or labels
    hover = np.array([[f"{names[i]} → {names[j]}" for j in range(n)] for i in range(n)], dtype=object)
    fig = go.Figure(go.Heatmap(z=attention, x=ticks, y=ticks, colorscale=HEAT, zmin=0,
                               zmax=float(attention.max()) or 1.0, customdata=hover,
                               hovertemplate="%{customdata}<br>attention %{z:.3f}<extra></extra>",
                               colorbar=dict(title=dict(text="attention", side="right"), thickness=12)))
    edge = n_text - 0.5
    for kw in (dict(x0=edge, x1=edge, y0=-0.5, y1=n - 0.5), dict(y0=edge, y1=edge, x0=-0.5, x1=n - 0.5)):
        fig.add_shape(type="line", line=dict(color="#d62728", width=1.5, dash="dot"), **kw)
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=height, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis=dict(**_ticks(labels, width_px), tickangle=-90, title="key", side="bottom"),
                      yaxis=dict(**_ticks(labels, height - 180), autorange="reversed", title="query"))
    return fig


def probability_bars(probabilities: dict[str, float], title: str = "Pattern probability") -> go.Figure:
    """The classifier's probability per pattern; names on two lines where long, so a narrow column keeps them."""
    names = list(probabilities)
    fig = go.Figure(go.Bar(x=[probabilities[c] for c in names], y=[c.replace("_", "<br>") for c in names],
                           orientation="h", marker_color=[COLORS.get(c, "#888") for c in names],
                           customdata=[c.replace("_", " ") for c in names],
                           hovertemplate="%{customdata}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title=dict(text=title, font=dict(size=13)), height=300, margin=dict(l=10, r=20, t=36, b=10),
                      xaxis=dict(range=[0, 1], tickfont=dict(size=FONT)),
                      yaxis=dict(autorange="reversed", automargin=True, tickfont=dict(size=FONT + 1)))
    return fig


def _legend_line(fig: go.Figure, name: str, color: str, width: float, dash: str = "solid") -> None:
    """A legend entry for outlines drawn as shapes (shapes have no legend of their own)."""
    fig.add_scatter(x=[None], y=[None], mode="lines", name=name, hoverinfo="skip",
                    line=dict(color=color, width=width, dash=dash))


def image_boxes(uri: str | None, width: int, height: int, boxes: np.ndarray, labels: list[str],
                weights: np.ndarray | None = None, highlight: list[int] = (), truth: list[int] = (),
                title: str = "", weight_name: str = "attention", figure_height: int = 560,
                highlight_name: str = "largest") -> go.Figure:
    """The picture with its region boxes (pixels x1, y1, x2, y2); boxes shaded by `weights` (scaled to the
    largest), `highlight` boxes drawn thick black, ground-truth boxes dashed green, one dot per region centre
    (hover: its name and weight). A legend under the picture says which is which."""
    fig = go.Figure()
    if uri:
        fig.add_trace(go.Image(source=uri, hoverinfo="skip"))
    k = len(boxes)
    w = np.zeros(k) if weights is None else np.asarray(weights, float)
    scaled = w / w.max() if w.max() > 0 else w
    colors = sample_colorscale(MASS, list(np.clip(scaled, 0, 1))) if k else []
    order = np.argsort(scaled)  # strongest drawn last, on top
    for j in order:
        x1, y1, x2, y2 = boxes[j]
        shaded = weights is not None and scaled[j] > 0.02
        line = colors[j] if weights is not None else "rgba(31, 119, 180, 0.8)"
        fill = colors[j].replace("rgb(", "rgba(").replace(")", f", {0.3 * scaled[j]:.3f})") if shaded else None
        fig.add_shape(type="rect", x0=x1, y0=y1, x1=x2, y1=y2, fillcolor=fill,
                      line=dict(color="#000" if j in highlight else line, width=3 if j in highlight else 1.5))
    for j in truth:
        x1, y1, x2, y2 = boxes[j]
        fig.add_shape(type="rect", x0=x1, y0=y1, x1=x2, y1=y2, line=dict(color="#2ca02c", width=3, dash="dash"))
    if k:
        centres = np.column_stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2])
        text = [f"{labels[j]}<br>{weight_name} {w[j]:.3f}" if weights is not None else labels[j] for j in range(k)]
        fig.add_trace(go.Scatter(x=centres[:, 0], y=centres[:, 1], mode="markers", text=text,
                                 showlegend=False, hovertemplate="%{text}<extra></extra>",
                                 marker=dict(size=9, color=w, colorscale=MASS, showscale=weights is not None,
                                             cmin=0, cmax=float(w.max()) if w.max() > 0 else 1,
                                             line=dict(color="white", width=1),
                                             colorbar=dict(title=dict(text=weight_name, side="right"), len=0.75,
                                                           thickness=14))))
    if k:  # the dots are coloured by weight; the legend shows one in a colour that reads on white
        fig.add_scatter(x=[None], y=[None], mode="markers", hoverinfo="skip",
                        name="region centre" + (f" (colour: {weight_name})" if weights is not None else ""),
                        marker=dict(size=9, color="#e6550d" if weights is not None else "#1f77b4",
                                    line=dict(color="white", width=1)))
    if highlight:
        _legend_line(fig, highlight_name, "#000", 3)
    if truth:
        _legend_line(fig, "ground truth", "#2ca02c", 3, "dash")
    if weights is not None:
        _legend_line(fig, f"box shading: {weight_name}", colors[int(order[-1])] if k else "#f00", 6)
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=figure_height, margin=MARGIN,
                      showlegend=True, legend=dict(orientation="h", x=0, y=-0.02, yanchor="top",
                                                   font=dict(size=FONT + 1)),
                      xaxis=dict(range=[0, width], showgrid=False, zeroline=False, visible=False),
                      yaxis=dict(range=[height, 0], showgrid=False, zeroline=False, visible=False,
                                 scaleanchor="x"))
    return fig


def token_bars(tokens: list[str], weights: np.ndarray, title: str = "", highlight: list[int] = ()) -> go.Figure:
    """Horizontal bars of one weight per text position, in sentence order."""
    names = [f"{i}: {t}" for i, t in enumerate(tokens)]
    colors = ["#2ca02c" if i in highlight else "#1f77b4" for i in range(len(tokens))]
    fig = go.Figure(go.Bar(x=weights, y=names, orientation="h", marker_color=colors,
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=max(260, 20 * len(tokens) + 90),
                      margin=MARGIN, yaxis=dict(autorange="reversed", automargin=True, tickfont=dict(size=FONT + 1)))
    return fig


def transport_heatmap(plan: np.ndarray, rows: list[str], columns: list[str], truth: dict[int, set[int]],
                      title: str = "", hover_columns: list[str] | None = None) -> go.Figure:
    """Word x region transport plan; ground-truth (word, region) pairs marked with green squares on a white
    halo, so that they stay visible on the darkest cells."""
    r, c = list(range(len(rows))), list(range(len(columns)))
    names = hover_columns or columns
    hover = np.array([[f"{rows[i]} → {names[j]}" for j in c] for i in r], dtype=object)
    # The scale runs from 0 (plotly ignores zmin without zmax): a near-uniform plan reads as one colour, as it is
    fig = go.Figure(go.Heatmap(z=plan, x=c, y=r, colorscale=MASS, zmin=0, zmax=float(plan.max()) or 1.0,
                               customdata=hover,
                               hovertemplate="%{customdata}<br>mass %{z:.3g}<extra></extra>",
                               colorbar=dict(title="mass", thickness=14, exponentformat="e")))
    pairs = [(i, j) for i, js in truth.items() for j in js if i < len(rows) and j < len(columns)]
    if pairs:
        xs, ys = [j for _, j in pairs], [i for i, _ in pairs]
        fig.add_scatter(x=xs, y=ys, mode="markers", hoverinfo="skip", showlegend=False,
                        marker=dict(symbol="square-open", size=15, color="white", line=dict(width=4)))
        fig.add_scatter(x=xs, y=ys, mode="markers", name="ground truth", hovertemplate="ground truth<extra></extra>",
                        marker=dict(symbol="square-open", size=15, color="#2ca02c", line=dict(width=2)))
    height = int(min(1000, max(460, 26 * len(rows) + 220)))
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=height, margin=MARGIN, showlegend=False,
                      xaxis=dict(**_ticks(columns, HEATMAP_WIDTH_PX), tickangle=-90, title="region"),
                      yaxis=dict(**_ticks(rows, height - 220), autorange="reversed", title="text"))
    return fig


def lines(table: pd.DataFrame, x: str, y: str, group: str | None = None, title: str = "", smooth: int = 1,
          log_y: bool = False, y_title: str | None = None) -> go.Figure:
    """Line chart per group, optionally smoothed by a centred rolling mean of `smooth` points."""
    fig = go.Figure()
    groups = table.groupby(group, sort=True) if group else [(y, table)]
    for name, part in groups:
        part = part.sort_values(x)
        values = part[y].rolling(smooth, min_periods=1, center=True).mean() if smooth > 1 else part[y]
        fig.add_scatter(x=part[x], y=values, mode="lines", name=str(name),
                        hovertemplate=f"{name} · {x} %{{x}}: %{{y:.4g}}<extra></extra>")
    yaxis = dict(title=y_title or y, type="log", dtick=1) if log_y else dict(title=y_title or y)  # log: powers of 10
    fig.update_layout(title=title, height=380, margin=MARGIN, xaxis_title=x, yaxis=yaxis, showlegend=bool(group),
                      legend=dict(orientation="h", x=0, y=-0.28, yanchor="top", font=dict(size=FONT + 1)))
    return fig


def head_grid(heads: pd.DataFrame, column: str, title: str, hover: dict[str, str], diverging: bool = False,
              scale_title: str = "", zmax: float | None = None) -> go.Figure:
    """Layer x head grid of one per-head value with each head's dominant pattern letter; `diverging` centres a
    red-blue scale on 0 (an effect), else it runs from 0 (a share or a ratio). Hover: the `hover` columns
    ({column: label})."""
    heads = heads.sort_values(["layer", "head"])
    layers, numbers = sorted(heads["layer"].unique()), sorted(heads["head"].unique())
    values = heads.pivot(index="layer", columns="head", values=column).loc[layers, numbers].to_numpy(float)
    letters = heads.pivot(index="layer", columns="head", values="dominant_pattern").loc[layers, numbers]
    text = [[f"{SHORT.get(p, '')}" for p in row] for row in letters.to_numpy()]
    tips = np.empty(values.shape, dtype=object)
    for row in heads.to_dict("records"):
        parts = [f"{label}: {row[c]:.3f}" if isinstance(row[c], float) else f"{label}: {row[c]}"
                 for c, label in hover.items()]
        tips[layers.index(row["layer"]), numbers.index(row["head"])] = (
            f"<b>layer {row['layer']}, head {row['head']}</b> · {str(row['dominant_pattern']).replace('_', ' ')}"
            "<br>" + "<br>".join(parts))
    finite = values[np.isfinite(values)]
    largest = float(np.abs(finite).max()) if finite.size else 1.0
    largest = zmax if zmax is not None else (largest or 1.0)
    scale = dict(colorscale="RdBu", reversescale=True, zmid=0, zmin=-largest, zmax=largest) if diverging else \
        dict(colorscale="Viridis", zmin=0, zmax=largest)
    fig = go.Figure(go.Heatmap(z=values, x=numbers, y=layers, text=text, texttemplate="%{text}", customdata=tips,
                               hovertemplate="%{customdata}<extra></extra>", xgap=2, ygap=2,
                               textfont=dict(size=12 if len(numbers) <= 16 else FONT),
                               colorbar=dict(title=dict(text=scale_title, side="right"), thickness=12), **scale))
    fig.update_layout(title=dict(text=title, font=dict(size=14)), margin=MARGIN, plot_bgcolor="white",
                      xaxis=dict(title="head", dtick=1), yaxis=dict(title="layer", dtick=1, autorange="reversed"),
                      height=max(300, 170 + 40 * len(layers)))
    return fig


def curve_lines(table: pd.DataFrame, x: str, y: str, group: str, title: str, y_title: str,
                styles: dict[str, str] | None = None, band: tuple[str, str] | None = None) -> go.Figure:
    """Lines of y against x per group (e.g. a pruning or perturbation curve per order), markers on the points;
    `band` = (low, high) columns shaded around each line."""
    fig = go.Figure()
    for name, part in table.groupby(group, sort=False):
        part = part.sort_values(x)
        dash = (styles or {}).get(str(name), "solid")
        if band:
            fig.add_scatter(x=list(part[x]) + list(part[x])[::-1], y=list(part[band[1]]) + list(part[band[0]])[::-1],
                            fill="toself", mode="lines", line=dict(width=0), opacity=0.2, hoverinfo="skip",
                            showlegend=False, name=f"{name} range")
        fig.add_scatter(x=part[x], y=part[y], mode="lines+markers", name=str(name), line=dict(dash=dash),
                        hovertemplate=f"{name} · {x} %{{x}}: %{{y:.4g}}<extra></extra>")
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=360, margin=MARGIN, xaxis_title=x,
                      yaxis_title=y_title, legend=dict(orientation="h", x=0, y=-0.25, yanchor="top",
                                                       font=dict(size=FONT + 1)))
    return fig
