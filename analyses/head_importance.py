"""Which heads matter: one-head ablation, gradient importance, pruning curves, and importance by pattern.

    python -m analyses.head_importance --run runs/pretrain-mini --split test --out behaviour/pretrain-mini/importance
    python -m analyses.head_importance --checkpoint uniter-base.pt --corpus DIR --out behaviour/base/importance

All numbers are measured on one probe (analyses.probe: fixed captions, candidate images and word-piece masks), so
every variant of the model sees the same inputs:

- ablation: each head in turn is removed (its gate xi_h = 0, the output projection sees zeros in its place)
  and the probe's METRICS are measured again. effect = how much worse the metric got (positive: the head
  helps; for the MLM loss, the rise). Layers below the removed head are unchanged, so each head's forward
  starts at its own layer from the cached states: the sweep costs less than one forward per head.
- gradient importance (Michel et al. 2019): I_h = sum over examples of |dL(x)/dxi_h| at xi = 1, for the loss
  behind each metric (probe.GRADIENT_LOSSES), from one backward pass per chunk with per-example gates.
- pruning: heads removed cumulatively, least important first (by ablation effect or by gradient importance on
  one metric) or in random order (seeded), at 0, 10, ..., 100 % of the heads; every metric at every point.
- patterns: each head's dominant pattern (the classifier over the probe's true pairs' maps), with the mean
  effect and importance of the heads of each pattern.

OUT gets heads, pruning and patterns tables (CSV, Parquet, JSON), figures (PNG, PDF, SVG) and summary.json
(base metrics, Spearman correlation of gradient importance with the ablation effect per metric, the share of
heads that can go before a metric drops by more than 5 %, and the cost of each part against a bare forward).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from analyses import behaviour_figures
from analyses.attention import iter_example_attention
from analyses.export_stats import aggregate, per_map_table
from analyses.patterns import PATTERNS
from analyses.probe import (GRADIENT_LOSSES, METRIC_NAMES, METRICS, Probe, build_probe, candidate_logits,
                            match_logits, mlm_scores, probe_metrics, probe_states, retrieval_weights)
from analyses.results import Progress, read_results, write_results
from analyses.sources import (add_output_arguments, add_source_arguments, check_at_least, check_source_arguments,
                              open_analysis, source_keywords)
from analyses.train_classifier import load_classifier
from uniter_core.cli import exit_with, run_command, warn
from uniter_core.tasks import wra_pads

COMMAND = "head_importance"
TABLES = ("heads", "pruning", "patterns")
LOSSES = ("retrieval", "mlm", "wra")
ORDER_METRICS = ("margin", "mlm_loss", "wra_alignment")  # the metrics whose importance orders the pruning
NOTICEABLE = 0.05  # a drop of more than 5 % of the unpruned value counts as a noticeable loss
SHARES = tuple(round(0.1 * k, 1) for k in range(11))


# ------------------------------------------------------------------------------------------ measuring
def head_gates(config, removed=(), rows: int | None = None, device="cpu") -> torch.Tensor:
    """Gates [layers, heads] (or [rows, layers, heads]) of ones, zero at the (layer, head) pairs `removed`."""
    gates = torch.ones(config.num_hidden_layers, config.num_attention_heads, device=device)
    for layer, head in removed:
        gates[layer, head] = 0.0
    return gates if rows is None else gates.expand(rows, -1, -1).clone()


def metrics_without(model, probe: Probe, states, removed) -> dict[str, float]:
    """The probe's METRICS with the heads `removed` gated off; the forward starts at the lowest layer touched."""
    if not removed:
        return probe_metrics(model, probe, [s[-1] for s in states])
    start = min(layer for layer, _ in removed)
    gates = head_gates(model.config, removed, device=states[0][0].device)
    with torch.inference_mode():
        finals = [model.uniter.encode_from(start, s[start], c.batch["attn_masks"], gates)
                  for c, s in zip(probe.chunks, states)]
    return probe_metrics(model, probe, finals)


def ablation_table(model, probe: Probe, states, base: dict, progress=None) -> pd.DataFrame:
    """One row per (layer, head): every metric with that head removed and its effect (module docstring)."""
    config = model.config
    rows = []
    heads = [(layer, head) for layer in range(config.num_hidden_layers) for head in range(config.num_attention_heads)]
    for done, (layer, head) in enumerate(heads):
        values = metrics_without(model, probe, states, [(layer, head)])
        row = {"layer": layer, "head": head}
        for name, sign in METRICS.items():
            row[f"ablated_{name}"] = values[name]
            row[f"effect_{name}"] = sign * (base[name] - values[name])
        rows.append(row)
        if progress:
            progress(done + 1, len(heads))
    return pd.DataFrame(rows)


def gradient_importance(model, probe: Probe) -> dict[str, np.ndarray]:
    """{loss: [layers, heads]} of I_h = sum over examples |dL(x)/dxi_h| (module docstring). The retrieval loss of
    a caption spans its candidates' rows: their gate gradients are summed before the absolute value."""
    config, device = model.config, model.device
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    with torch.inference_mode():
        states = probe_states(model.uniter, probe)
        weights = retrieval_weights(candidate_logits(model, probe, [s[-1] for s in states]))
    per_query = torch.zeros(probe.queries, layers, heads, device=device)
    totals = {name: torch.zeros(layers, heads, device=device) for name in ("mlm", "wra")}
    for chunk in probe.chunks:
        gates = head_gates(config, rows=len(chunk.queries), device=device).requires_grad_(True)
        with torch.enable_grad():
            final = model.uniter.forward_batch(chunk.batch, head_mask=gates).last_hidden_state
            losses = {}
            if chunk.kind == "mlm":
                scores, labels, rows = mlm_scores(model, chunk, final)
                losses["mlm"] = torch.nn.functional.cross_entropy(scores, labels, reduction="sum")
            else:
                w = weights[chunk.queries, chunk.columns].to(device)
                losses["retrieval"] = (match_logits(model, final) * w).sum()
                if chunk.kind == "true":
                    losses["wra"] = model.wra_distance(final, *wra_pads(chunk.batch, device)).sum()
            names = list(losses)
            grads = [torch.autograd.grad(losses[n], gates, retain_graph=i < len(names) - 1)[0]
                     for i, n in enumerate(names)]
        for name, grad in zip(names, grads):
            if name == "retrieval":
                per_query.index_add_(0, torch.tensor(chunk.queries, device=device), grad)
            else:
                totals[name] += grad.abs().sum(0)
    totals["retrieval"] = per_query.abs().sum(0)
    return {name: (value / probe.queries).cpu().numpy() for name, value in totals.items()}


def pruning_orders(heads: pd.DataFrame, random_orders: int = 3) -> dict[tuple[str, str, int], list]:
    """{(kind, metric, seed): [(layer, head), ...] least important first}: by ablation effect and by gradient
    importance for each of ORDER_METRICS, and `random_orders` seeded random orders."""
    keys = list(zip(heads["layer"], heads["head"]))
    orders = {}
    for metric in ORDER_METRICS:
        for kind, column in (("ablation", f"effect_{metric}"), ("gradient", f"grad_{GRADIENT_LOSSES[metric]}")):
            ranked = np.argsort(heads[column].to_numpy(), kind="stable")  # least important first
            orders[(kind, metric, -1)] = [keys[i] for i in ranked]
    for seed in range(random_orders):
        permutation = np.random.default_rng(seed).permutation(len(keys))
        orders[("random", "", seed)] = [keys[i] for i in permutation]
    return orders


def pruning_table(model, probe: Probe, states, orders: dict, shares=SHARES, progress=None) -> pd.DataFrame:
    """Every metric after removing the first round(share x heads) heads of each order."""
    n = sum(1 for _ in next(iter(orders.values())))
    cache: dict[frozenset, dict] = {}  # 0 % and 100 % are the same for every order
    rows, total, done = [], len(orders) * len(shares), 0
    for (kind, metric, seed), order in orders.items():
        for share in shares:
            removed = order[:round(share * n)]
            key = frozenset(removed)
            if key not in cache:
                cache[key] = metrics_without(model, probe, states, removed)
            rows.append({"order": kind, "order_metric": metric, "seed": seed, "share": share,
                         "removed": len(removed), **cache[key]})
            done += 1
            if progress:
                progress(done, total)
    return pd.DataFrame(rows)


def dominant_patterns(loaded, corpus: Path, split: str, indices: list[int], classifier, device) -> pd.DataFrame:
    """(layer, head, dominant_pattern, frac_*) from the classifier over the maps of the examples `indices`."""
    examples = iter_example_attention(loaded.model, corpus, split, batch_size=16, device=device,
                                      max_text_len=loaded.max_text_len, max_regions=loaded.max_regions,
                                      progress=False, indices=indices)
    table = aggregate(per_map_table(examples, classifier), ["layer", "head"])
    return table[["layer", "head", "dominant_pattern"] + [f"frac_{c}" for c in PATTERNS]]


def pattern_table(heads: pd.DataFrame) -> pd.DataFrame:
    """Per dominant pattern: how many heads, their mean ablation effect per metric and mean importance."""
    columns = [f"effect_{m}" for m in METRICS] + [f"grad_{loss}" for loss in LOSSES]
    table = heads.groupby("dominant_pattern")[columns].mean()
    table.insert(0, "n_heads", heads.groupby("dominant_pattern").size().astype("int64"))
    order = [p for p in PATTERNS if p in table.index]
    return table.loc[order].reset_index()


def correlations(heads: pd.DataFrame) -> dict[str, float | None]:
    """Spearman correlation across heads of the gradient importance with the ablation effect, per metric."""
    out = {}
    for metric in METRICS:
        effect, grad = heads[f"effect_{metric}"], heads[f"grad_{GRADIENT_LOSSES[metric]}"]
        value = spearmanr(effect, grad).statistic if effect.nunique() > 1 and grad.nunique() > 1 else float("nan")
        out[metric] = None if np.isnan(value) else round(float(value), 4)
    return out


def prunable_share(pruning: pd.DataFrame, base: dict) -> dict[str, dict[str, float]]:
    """Per order and metric: the largest share of heads removed with the metric within NOTICEABLE of the
    unpruned value at that share and every smaller one (random orders: the mean over seeds)."""
    out: dict[str, dict[str, float]] = {}
    for (kind, metric), group in pruning.groupby(["order", "order_metric"], sort=False):
        label = f"{kind}:{metric}" if metric else kind
        out[label] = {}
        for name, sign in METRICS.items():
            shares = []
            for _, curve in group.groupby("seed"):
                curve = curve.sort_values("share")
                limit = abs(base[name]) * NOTICEABLE
                ok = (sign * (curve[name] - base[name]) >= -limit).to_numpy()
                bad = np.flatnonzero(~ok)
                kept = curve["share"].to_numpy()[:bad[0] if len(bad) else len(ok)]
                shares.append(float(kept[-1]) if len(kept) else 0.0)
            out[label][name] = round(float(np.mean(shares)), 3)
    return out


# ------------------------------------------------------------------------------------------ the command
COLUMNS = {
    "heads": {"layer": "encoder layer, from 0", "head": "attention head, from 0",
              "dominant_pattern": "most frequent pattern of the head over the probe's true pairs",
              **{f"frac_{c}": f"share of the head's probe maps classified {c}" for c in PATTERNS},
              **{f"ablated_{m}": f"{METRIC_NAMES[m]} with this head removed" for m in METRICS},
              **{f"effect_{m}": f"how much worse {METRIC_NAMES[m]} got without this head (unablated - ablated"
                                f"{', reversed for a loss' if METRICS[m] < 0 else ''}); positive: the head helps"
                 for m in METRICS},
              **{f"grad_{loss}": f"gradient importance: mean over probe captions of |d {loss} loss / d head gate|"
                 for loss in LOSSES}},
    "pruning": {"order": "ablation / gradient (least important first by that importance) or random",
                "order_metric": "the metric whose importance gives the order (empty for random)",
                "seed": "seed of a random order (-1 otherwise)", "share": "share of heads removed",
                "removed": "heads removed", **{m: METRIC_NAMES[m] for m in METRICS}},
    "patterns": {"dominant_pattern": "the heads' dominant pattern", "n_heads": "heads with that dominant pattern",
                 **{f"effect_{m}": f"mean ablation effect on {METRIC_NAMES[m]}" for m in METRICS},
                 **{f"grad_{loss}": f"mean gradient importance for the {loss} loss" for loss in LOSSES}},
}


def bare_forward_seconds(model, probe: Probe) -> float:
    """One forward pass of the encoder and heads over the whole probe (what the costs are measured against)."""
    start = time.perf_counter()
    with torch.inference_mode():
        probe_metrics(model, probe, [model.uniter.forward_batch(c.batch).last_hidden_state for c in probe.chunks])
    return time.perf_counter() - start


def head_importance(*, out: Path, run: Path | None = None, checkpoint: Path | None = None,
                    corpus: Path | None = None, preset: str = "uniter-base", overrides=(), split: str = "test",
                    queries: int = 50, candidates: int = 10, random_orders: int = 3, batch_size: int = 128,
                    classifier: Path | None = None, device: str = "cpu", progress=True, force: bool = True,
                    warn=None) -> dict:
    """Measure and write everything of the module docstring into `out`; returns the summary. `progress`: tqdm
    bars, a callback (what, done, total) or False (analyses.results.Progress)."""
    opened = open_analysis(out, COMMAND, TABLES, run=run, checkpoint=checkpoint, corpus=corpus, preset=preset,
                           overrides=overrides, split=split, device=device, force=force, warn=warn)
    model = opened.model
    patterns_from = load_classifier(classifier)
    probe = build_probe(opened.dataset, model.config, queries, candidates, batch_size, device)
    report = Progress(progress)

    torch.manual_seed(0)
    bare = min(bare_forward_seconds(model, probe) for _ in range(2))
    start = time.perf_counter()
    states = probe_states(model.uniter, probe)
    base = probe_metrics(model, probe, [s[-1] for s in states])
    heads = ablation_table(model, probe, states, base, lambda d, t: report("one head removed", d, t))
    ablation_seconds = time.perf_counter() - start
    start = time.perf_counter()
    grads = gradient_importance(model, probe)
    gradient_seconds = time.perf_counter() - start
    for loss, values in grads.items():
        heads[f"grad_{loss}"] = values[heads["layer"], heads["head"]]
    heads = dominant_patterns(opened.loaded, opened.corpus, split, probe.text_indices, patterns_from, device).merge(
        heads, on=["layer", "head"])
    start = time.perf_counter()
    pruning = pruning_table(model, probe, states, pruning_orders(heads, random_orders),
                            progress=lambda d, t: report("pruning curves", d, t))
    pruning_seconds = time.perf_counter() - start
    n_heads = len(heads)
    summary = {
        "source": {**opened.source, "classifier": str(classifier or "default"),
                   "classifier_data_hash": patterns_from.metadata.get("data_hash", "")},
        "settings": {"queries": probe.queries, "candidates": probe.candidates, "random_orders": random_orders,
                     "shares": list(SHARES), "noticeable_drop": NOTICEABLE, "batch_size": batch_size},
        "probe": {"queries": probe.queries, "candidates": probe.candidates, "rows": probe.rows,
                  "heads": n_heads},
        "base": base,
        "spearman_gradient_vs_ablation": correlations(heads),
        "prunable_share": prunable_share(pruning, base),
        "cost": {"device": str(device), "bare_forward_s": round(bare, 4),
                 "ablation_sweep_s": round(ablation_seconds, 3),
                 "ablation_sweep_over_bare": round(ablation_seconds / bare, 2),
                 "ablation_sweep_over_bare_per_head": round(ablation_seconds / bare / n_heads, 3),
                 "gradient_pass_s": round(gradient_seconds, 3),
                 "gradient_pass_over_bare": round(gradient_seconds / bare, 2),
                 "pruning_s": round(pruning_seconds, 3), "pruning_over_bare": round(pruning_seconds / bare, 2)},
    }
    tables = {"heads": heads, "pruning": pruning, "patterns": pattern_table(heads)}
    write_results(opened.folder, tables, COLUMNS, summary,
                  lambda figures: behaviour_figures.write_importance(tables, summary, figures))
    return summary


def read_importance(folder: Path) -> tuple[dict, dict[str, pd.DataFrame]]:
    """(summary, tables) of a head_importance output (for the workbench and the dynamics)."""
    return read_results(folder, TABLES)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    add_output_arguments(p)
    p.add_argument("--queries", type=int, default=50, help="captions of different images in the probe")
    p.add_argument("--candidates", type=int, default=10, help="candidate images per caption, its own included")
    p.add_argument("--random-orders", type=int, default=3, help="random pruning orders (seeds 0, 1, ...)")
    p.add_argument("--batch-size", type=int, default=128, help="rows per forward")
    args = p.parse_args(argv)
    check_source_arguments(p, args)
    check_at_least(p, args, 1, "queries", "candidates", "batch_size")
    check_at_least(p, args, 0, "random_orders")
    return args


def _cli(argv=None) -> None:
    args = parse_args(argv)
    summary = head_importance(out=args.out, **source_keywords(args), queries=args.queries,
                              candidates=args.candidates, random_orders=args.random_orders,
                              batch_size=args.batch_size, classifier=args.model, progress=not args.no_progress,
                              warn=warn)
    base = ", ".join(f"{k} {v:.3f}" for k, v in summary["base"].items())
    cost = summary["cost"]
    print(f"{args.out}: {summary['probe']['heads']} heads, {summary['probe']['queries']} captions x "
          f"{summary['probe']['candidates']} candidates; unablated {base}")
    print("spearman(gradient, ablation): " + ", ".join(
        f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in summary["spearman_gradient_vs_ablation"].items()))
    print(f"cost: bare forward {cost['bare_forward_s']:.3f} s; ablation sweep {cost['ablation_sweep_over_bare']}x "
          f"({cost['ablation_sweep_over_bare_per_head']}x per head), gradient pass "
          f"{cost['gradient_pass_over_bare']}x, pruning {cost['pruning_over_bare']}x")


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
