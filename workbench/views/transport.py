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

cost = chosen["cost"]
config = loaded.model.config
epsilon = config.ot_beta / config.ot_iteration
cols = st.columns(4)
cols[0].metric("Transport cost Σ C·T", ui.number(chosen["distance"]))
cols[1].metric("L1 to the IPOT plan", ui.number(np.abs(plan - ipot["plan"]).sum()))
cols[2].metric("Cost difference to IPOT", ui.number(chosen["distance"] - ipot["distance"], signed=True))
cols[3].metric("Entropic ε", "none" if solver == "POT EMD" else f"{epsilon:.3g}",
               help="IPOT approaches entropic OT with ε = β / iterations; Sinkhorn is run with that ε")
spread = float(cost.max() - cost.min())
st.caption(f"Costs 1 − cos(word-piece, region) of this example run from {cost.min():.3g} to {cost.max():.3g} "
           f"(spread {spread:.3g}).")
if solver == "IPOT":
    st.caption(f"IPOT settings of the model: β = {config.ot_beta:g}, {config.ot_iteration} iterations (inner "
               f"k = {config.ot_k}); after t iterations IPOT's plan is close to entropic OT with ε = β / t = "
               f"{epsilon:.3g}.")
elif solver == "POT Sinkhorn":
    st.caption(f"Sinkhorn (log domain) with ε = β / iterations = {config.ot_beta:g} / {config.ot_iteration} = "
               f"{epsilon:.3g}, the regularisation IPOT approaches.")
else:
    st.caption("Exact EMD: no regularisation; its plan is a vertex of the transport polytope (few non-zero cells).")
if solver != "POT EMD" and spread < 10 * epsilon:
    st.info(f"The costs of this example span only {spread:.3g}, under 10 × ε = {10 * epsilon:.3g}: at this ε the "
            f"entropic term dominates, so the plan stays close to uniform (every cell near 1/(T·K)) while exact "
            f"EMD, which has no such term, concentrates the mass. Nearly equal costs mean the final-layer states "
            f"of words and regions point in almost the same direction (see the final-state cosines on the "
            f"Training page).")

st.plotly_chart(plots.transport_heatmap(plan, list(layout.tokens), labels[layout.n_text:], truth,
                                        f"{solver} plan" + plots.subtitle(f"rows sum to 1/{layout.n_text}, columns "
                                                                          f"to 1/{layout.n_regions}"),
                                        hover_columns=layout.hover_labels()[layout.n_text:]),
                key="ot_plan", config=ui.CHART)
st.caption("Green squares: the (word-piece, box) pairs the corpus says belong together. Regions are named "
           f"{ui.region_naming(layout)}.")
left, right = st.columns([2, 3])
with left:
    state.index("ot_word", layout.n_text, min(truth) if truth else 1, context=(loaded.source, split, index))
    position = st.selectbox("Word", range(layout.n_text), key="ot_word", persist_state="session",
                            format_func=lambda p: f"{p}: {layout.tokens[p]}" + (" ✓" if p in truth else ""),
                            help="✓ = the corpus knows which box this word-piece names (dashed green)")
    mass = plan[position] / max(plan[position].sum(), 1e-12)
    uniform = 1 / layout.n_regions
    st.caption(f"Its largest share is {mass.max():.3f} and its smallest {mass.min():.3f}, against "
               f"{uniform:.3f} for an even spread over the {layout.n_regions} regions" +
               (": close to even, so which region gets the most says little." if mass.max() < 1.5 * uniform
                else "."))
    if position in truth:
        hit = int(mass.argmax()) in truth[position]
        st.caption(("✓ The largest mass lands on a ground-truth box" if hit else
                    "✗ The largest mass misses the ground-truth box") + " (dashed green).")
picture = loaders.image(loaded, split, layout.image_id)
uri, width, height = picture if picture else (None, 1000, 1000)
boxes = layout.region_boxes * np.array([width, height, width, height])
right.plotly_chart(plots.image_boxes(uri, width, height, boxes, layout.hover_labels()[layout.n_text:], mass,
                                     highlight=[int(mass.argmax())], truth=sorted(truth.get(position, ())),
                                     title=f"Mass of “{layout.tokens[position]}”" + plots.subtitle(solver),
                                     weight_name="share of mass", figure_height=480, highlight_name="most mass"),
                   key="ot_image", config=ui.CHART)

st.subheader("Solvers compared")
st.dataframe(compute.solver_table(results, truth), hide_index=True,
             column_config={"transport cost": st.column_config.NumberColumn(format="%.4f"),
                            "L1 to IPOT": st.column_config.NumberColumn(format="%.4f")})
if not truth:
    st.caption("This caption has no ground-truth word-region alignment in the corpus.")
