"""Training: per-task losses, learning rate and throughput from metrics.jsonl, and the final evaluation."""
import pandas as pd
import streamlit as st

from workbench import compute, loaders, plots, ui

st.title("Training")
source = ui.current_source()
if source.kind != "run":
    st.info("Training curves come from a run folder (metrics.jsonl); an official checkpoint has none. "
            "Choose “Run folder” in the sidebar.")
    st.stop()
run_dir = ui.guarded("Finding the run folder", loaders.run_folder, source.path)
if not (run_dir / "metrics.jsonl").exists() and not (run_dir / "train_config.json").exists():
    st.info(f"`{source.path}` is not a run folder (it has neither train_config.json nor metrics.jsonl): pick a "
            f"folder written by `python -m uniter_core.train`.")
    st.stop()

steps, evals, bad = ui.guarded("Reading metrics.jsonl", loaders.metrics, run_dir)
if bad:
    st.warning(f"{len(bad)} unreadable line(s) in `{run_dir / 'metrics.jsonl'}` skipped (first: line {bad[0]}); "
               f"a run killed while logging leaves a half-written last line.")
if len(steps):
    cols = st.columns(4)
    cols[0].metric("Steps logged", f"{int(steps['step'].max())}")
    cols[1].metric("Tokens seen", f"{int(steps['tokens'].sum()):,}" if "tokens" in steps else "–")
    cols[2].metric("Median tokens / s", f"{steps['tokens_per_s'].median():,.0f}" if "tokens_per_s" in steps else "–")
    seconds = steps["seconds"].sum() if "seconds" in steps else None
    cols[3].metric("Training time", "–" if seconds is None else
                   f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s")
    smooth = st.slider("Smoothing (rolling mean over logged steps)", 1, 101, 21 if len(steps) > 200 else 1, step=2,
                       key="train_smooth")
    left, right = st.columns(2)
    left.plotly_chart(plots.lines(compute.task_losses(steps), "step", "loss", "task", "Loss per task", smooth,
                                  log_y=True), key="t_loss", config=ui.CHART)
    wra = compute.wra_terms(steps)
    if len(wra):
        right.plotly_chart(plots.lines(wra, "step", "value", "part", "ITM's WRA term (optimal transport)", smooth,
                                       y_title="value"), key="t_itm", config=ui.CHART)
        left.caption("ITM is drawn by its cross-entropy: its total loss adds weight × WRA transport cost, which is "
                     "signed (right), so the total would leave a log axis.")
    left, right = st.columns(2)
    if "lr" in steps:
        left.plotly_chart(plots.lines(steps, "step", "lr", title="Learning rate"), key="t_lr", config=ui.CHART)
    if "tokens_per_s" in steps:
        right.plotly_chart(plots.lines(steps, "step", "tokens_per_s", title="Throughput", smooth=smooth,
                                       y_title="tokens / s"), key="t_speed", config=ui.CHART)
if len(evals) > 1:
    numeric = [c for c in evals.columns if c not in ("step", "split") and pd.api.types.is_numeric_dtype(evals[c])]
    metric = st.selectbox("Evaluation during training", numeric,
                          key="train_eval_metric")
    st.plotly_chart(plots.lines(evals, "step", metric, "split", f"{metric} during training"), key="t_evals",
                    config=ui.CHART)

st.subheader("Evaluation")
results = sorted(p for p in run_dir.glob("eval_*.json") if not p.stem.endswith("_baseline"))
if not results:
    st.info(f"No evaluation yet: `python -m uniter_core.evaluate --run {source.path} --which both`.")
for path in results:
    split = path.stem.removeprefix("eval_")
    try:
        pretrained = compute.read_eval(path)
        baseline = compute.read_eval(run_dir / f"eval_{split}_baseline.json")
    except ValueError as error:
        st.error(str(error))
        continue
    st.markdown(f"**{split} split** — {pretrained.get('checkpoint', '?')}, "
                f"{pretrained.get('candidates', '?')} retrieval candidates" +
                ("" if baseline else f" (no baseline: `python -m uniter_core.evaluate --run {source.path} "
                                     f"--split {split} --which baseline`)"))
    st.dataframe(compute.eval_table(pretrained, baseline), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("pre-trained", "initialisation", "difference")})
