"""Training dynamics: pattern fractions, importance, grounding and the probe's metrics at every kept step of the run,
and a second run beside it (the analyses.dynamics output)."""
import pandas as pd
import streamlit as st

from analyses.patterns import PATTERNS
from analyses.probe import METRIC_NAMES
from workbench import behaviour, plots, state, ui
from workbench.loaders import LoadError

st.title("Training dynamics")
st.caption("How the heads formed: the run keeps its weights at chosen steps (run.keep_steps in its config; step 0 is "
           "the initialisation), and every kept step is measured on one probe. A second run (e.g. the same schedule "
           "without WRA) is drawn beside it.")
loaded = ui.need_model()
if loaded.source.kind != "run":
    st.info("Training dynamics come from a run folder with kept steps; an official checkpoint has none. Choose "
            "“Run folder” in the sidebar.")
    st.stop()
try:
    summary, tables, note = behaviour.read(loaded, "dynamics")
except LoadError as error:
    ui.show(error)
    st.markdown("Write it from a terminal (minutes per kept step), adding `--compare RUN` for a second run:")
    st.code(behaviour.command(loaded.source, "dynamics"), language="bash")
    st.stop()
if note:
    st.warning(note)
steps, layers, heads = tables["steps"], tables["layers"], tables["heads"]
st.markdown("**Steps measured**: " + "; ".join(f"{run}: {', '.join(map(str, s))}"
                                              for run, s in summary["steps"].items()))

metrics = {m: METRIC_NAMES[m] for m in ("r1", "margin", "mlm_accuracy", "mlm_loss", "wra_alignment")}
metrics.update(cross_modal_heads="share of heads with cross-modal attention > 0.5",
               best_word_to_region="best head's word → region hit rate")
state.choice("dyn_metric", list(metrics), "r1")
metric = st.selectbox("Metric", list(metrics), key="dyn_metric", format_func=metrics.get, persist_state="session")
st.plotly_chart(plots.curve_lines(steps, "step", metric, "run", f"{metrics[metric]} during training",
                                  metrics[metric]), key="dyn_metric_chart", config=ui.CHART)

runs = list(dict.fromkeys(layers["run"]))
state.choice("dyn_run", runs)
run = st.radio("Run", runs, key="dyn_run", horizontal=True, persist_state="session")
columns = st.columns(int(layers["layer"].max()) + 1)
for layer, column in zip(sorted(layers["layer"].unique()), columns):
    part = layers[(layers["run"] == run) & (layers["layer"] == layer)].sort_values("step")
    long = part.melt(id_vars=["step"], value_vars=[f"frac_{c}" for c in PATTERNS], var_name="pattern",
                     value_name="share")
    long["pattern"] = long["pattern"].str.removeprefix("frac_").map(ui.pattern_name)
    column.plotly_chart(plots.curve_lines(long, "step", "share", "pattern", f"Layer {layer}: patterns",
                                          "share of maps"), key=f"dyn_patterns_{layer}", config=ui.CHART)

st.subheader("Heads at one step")
chosen_steps = sorted(heads[heads["run"] == run]["step"].unique())
state.choice("dyn_step", [int(s) for s in chosen_steps], int(chosen_steps[-1]))
step = st.select_slider("Step", [int(s) for s in chosen_steps], key="dyn_step")
values = {"effect_margin": ("ablation effect on the margin", True), "effect_mlm_loss": (
    "ablation effect on the MLM loss", True), "word_to_region": ("word → region hit rate", False),
    "cross_modal": ("cross-modal attention", False)}
state.choice("dyn_value", list(values))
value = st.radio("Show", list(values), key="dyn_value", format_func=lambda v: values[v][0], horizontal=True,
                 persist_state="session")
at = heads[(heads["run"] == run) & (heads["step"] == step)]
st.plotly_chart(plots.head_grid(at, value, f"{run}, step {step}: {values[value][0]}", {
    value: values[value][0], "grad_retrieval": "gradient importance (retrieval)"}, diverging=values[value][1]),
    key="dyn_heads", config=ui.CHART)

if len(summary["steps"]) > 1:
    st.subheader("The runs at their last step")
    final = pd.DataFrame(summary["final"]).T
    st.dataframe(final, column_config={c: st.column_config.NumberColumn(format="%.3f") for c in final.columns})
st.caption(behaviour.where_read(loaded.source, "dynamics"))
