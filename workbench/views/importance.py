"""Head importance: which heads matter (one-head ablation, gradient importance), pruning curves, and importance by
pattern, read from the analyses.head_importance output of the model shown (or computed here)."""
import pandas as pd
import streamlit as st

from analyses.probe import METRIC_NAMES, METRICS
from workbench import behaviour, plots, state, ui

st.title("Head importance")
st.caption("Each head in turn is removed (its output replaced by zeros) and the model is measured again on a fixed "
           "probe: captions with their own and other candidate images, fixed word-piece masks, grounded words. "
           "Gradient importance (Michel et al. 2019) is |∂ loss / ∂ head gate| from one backward pass.")
loaded = ui.need_model()
split = state.read_text("split", "test")
summary, tables = behaviour.read_or_offer(
    loaded, "importance", split, "about 10 minutes for the demo run on 2 CPU cores",
    lambda: {"queries": int(st.number_input("Captions in the probe", 5, 500, 20, key="imp_queries",
                                            help="The command's --queries (default 50); fewer is faster and "
                                                 "coarser"))})

heads, pruning, patterns = tables["heads"], tables["pruning"], tables["patterns"]
base, cost = summary["base"], summary["cost"]
st.markdown(f"**Probe**: {summary['probe']['queries']} captions × {summary['probe']['candidates']} candidate "
            f"images ({summary['source']['split']} split), {summary['probe']['heads']} heads. Unablated: "
            + ", ".join(f"{METRIC_NAMES[m]} {base[m]:.3f}" for m in METRICS) + ".")

names = {m: METRIC_NAMES[m] for m in METRICS}
state.choice("imp_metric", list(names), "margin")
metric = st.radio("Metric", list(names), key="imp_metric", format_func=names.get, horizontal=True,
                  persist_state="session")
st.plotly_chart(plots.head_grid(
    heads, f"effect_{metric}", f"Removing one head: how much worse {names[metric]} gets"
    + plots.subtitle("red: the head helps; blue: the model does better without it; letters: dominant pattern"),
    {f"effect_{metric}": "effect", f"ablated_{metric}": f"{names[metric]} without it",
     "grad_retrieval": "gradient importance (retrieval)", "grad_mlm": "gradient importance (MLM)",
     "grad_wra": "gradient importance (WRA)"}, diverging=True, scale_title="effect"),
    key="imp_grid", config=ui.CHART)
rho = summary["spearman_gradient_vs_ablation"].get(metric)
st.caption(f"Spearman correlation across heads of gradient importance with this ablation effect: "
           f"{'n/a' if rho is None else f'{rho:.2f}'}.")

order_metric = {"r1": "margin", "mlm_accuracy": "mlm_loss"}.get(metric, metric)
shown = pruning[(pruning["order_metric"] == order_metric) | (pruning["order"] == "random")].copy()
random = shown[shown["order"] == "random"].groupby("share")[metric].agg(["mean", "min", "max"]).reset_index()
curves = pd.concat([shown[shown["order"] != "random"][["order", "share", metric]].assign(low=None, high=None),
                    random.rename(columns={"mean": metric, "min": "low", "max": "high"}).assign(order="random")])
curves["order"] = curves["order"].map({"ablation": "least important first (ablation)",
                                       "gradient": "least important first (gradient)",
                                       "random": "random order (mean, range shaded)"})
left, right = st.columns([3, 2])
left.plotly_chart(plots.curve_lines(curves.fillna({"low": curves[metric], "high": curves[metric]}), "share", metric,
                                    "order", f"Pruning: {names[metric]} as heads go"
                                    + plots.subtitle(f"order by importance for {names[order_metric]}"),
                                    names[metric], styles={"random order (mean, range shaded)": "dot"},
                                    band=("low", "high")), key="imp_pruning", config=ui.CHART)
with right:
    shares = summary["prunable_share"]
    st.markdown(f"**Share of heads removed before {names[metric]} drops by more than "
                f"{summary['settings']['noticeable_drop']:.0%}**")
    def order_name(key: str) -> str:
        kind, _, by = key.partition(":")
        return f"least important first by {kind} on {names[by]}" if by else "random (mean of the seeds)"

    st.dataframe(pd.DataFrame([{"order": order_name(k), "share": v[metric]} for k, v in shares.items()]),
                 hide_index=True, width="stretch")
    st.caption("Michel et al. (2019) removed 20–40 % of BERT's heads without a noticeable loss.")

st.subheader("Do the heads of a pattern matter?")
st.dataframe(patterns.assign(dominant_pattern=patterns["dominant_pattern"].map(ui.pattern_name)), hide_index=True,
             column_config={c: st.column_config.NumberColumn(format="%.4f") for c in patterns.columns
                            if c not in ("dominant_pattern", "n_heads")})
st.caption(f"Cost on {cost['device']}: one bare forward over the probe {cost['bare_forward_s']:.2f} s; the ablation "
           f"sweep {cost['ablation_sweep_over_bare']}× that ({cost['ablation_sweep_over_bare_per_head']}× per head), "
           f"the gradient pass {cost['gradient_pass_over_bare']}×, the pruning curves {cost['pruning_over_bare']}×. "
           + behaviour.where_read(loaded.source, "importance"))
