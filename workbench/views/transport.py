"""Optimal transport: the word x region plan of WRA on the chosen example, for three solvers."""
import numpy as np
import streamlit as st

from uniter_core.data.dataset import alignment_by_position
from workbench import compute, loaders, plots, state, ui

st.title("Optimal transport")
st.caption("Word-region alignment as UNITER's WRA computes it: cosine cost between the final-layer states of "
           "[CLS], the word-pieces and [SEP] and those of the regions, uniform marginals, and a transport plan. "
           "IPOT is what training uses; POT's Sinkhorn (ε = β / iterations) and exact EMD are references.")
loaded, split, index = ui.need_example()
example = ui.guarded("Extracting the attention maps", loaders.example_with_regions, loaded, split, index)
item = ui.guarded("Reading the example", loaders.item, loaded, split, index)
layout = example.layout
labels = layout.labels()
truth = alignment_by_position(item)

state.choice("ot_solver", compute.SOLVERS)
solver = st.radio("Solver", list(compute.SOLVERS), key="ot_solver", horizontal=True, persist_state="session")
results = {name: ui.guarded(f"The {name} solver", loaders.transport, loaded, split, index, name)
           for name in compute.SOLVERS}
chosen, ipot = results[solver], results["IPOT"]
plan = chosen["plan"]

cols = st.columns(4)
cols[0].metric("Transport cost Σ C·T", f"{chosen['distance']:.4f}")
cols[1].metric("L1 to the IPOT plan", f"{np.abs(plan - ipot['plan']).sum():.4f}")
cols[2].metric("Cost difference to IPOT", f"{chosen['distance'] - ipot['distance']:+.4f}")
config = loaded.model.config
cols[3].metric("IPOT settings", f"β {config.ot_beta:g} · {config.ot_iteration} it")

left, right = st.columns(2)
left.plotly_chart(plots.transport_heatmap(plan, list(layout.tokens), labels[layout.n_text:], truth,
                                          f"{solver} plan (rows sum to 1/{layout.n_text})"),
                  key="ot_plan", config=ui.CHART)
with right:
    state.index("ot_word", layout.n_text, min(truth) if truth else 1, context=(loaded.source, split, index))
    position = st.selectbox("Word", range(layout.n_text), key="ot_word", persist_state="session",
                            format_func=lambda p: f"{p}: {layout.tokens[p]}" + (" ✓" if p in truth else ""))
    mass = plan[position] / max(plan[position].sum(), 1e-12)
    picture = loaders.image(loaded, split, layout.image_id)
    uri, width, height = picture if picture else (None, 1000, 1000)
    boxes = layout.region_boxes * np.array([width, height, width, height])
    st.plotly_chart(plots.image_boxes(uri, width, height, boxes, labels[layout.n_text:], mass,
                                      highlight=[int(mass.argmax())], truth=sorted(truth.get(position, ())),
                                      title=f"Mass of “{layout.tokens[position]}” ({solver})",
                                      weight_name="share of mass", figure_height=460),
                    key="ot_image", config=ui.CHART)
    if position in truth:
        hit = int(mass.argmax()) in truth[position]
        st.caption(("✓ The largest mass lands on a ground-truth box" if hit else
                    "✗ The largest mass misses the ground-truth box") + " (dashed green).")

left.caption("Green squares: the (word-piece, box) pairs the corpus says belong together.")
st.subheader("Solvers compared")
st.dataframe(compute.solver_table(results, truth), hide_index=True)
if not truth:
    st.caption("This caption has no ground-truth word-region alignment in the corpus.")
