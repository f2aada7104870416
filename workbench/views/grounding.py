"""Grounding: which heads point words at the regions of their objects and regions at the words naming them, how
much attention crosses the modalities, and WRA's plan per layer (the analyses.grounding output)."""
import pandas as pd
import streamlit as st

from workbench import behaviour, plots, state, ui

st.title("Grounding")
st.caption("For every head: does a grounded word-piece's largest attention to a region land on a region of its "
           "object, and does a named object's region attend most to a word-piece naming it? Both against chance "
           "(the share of regions, or of word-pieces, that would be a hit).")
loaded = ui.need_model()
split = state.read_text("split", "test")
summary, tables = behaviour.read_or_offer(loaded, "grounding", split, "about a minute for the demo run")

heads, layers = tables["heads"], tables["layers"]
cols = st.columns(3)
cols[0].metric("Examples", summary["examples"], help=f"{summary['source']['split']} split, grounded captions")
cols[1].metric("Grounded word-pieces", summary["grounded_word_pieces"])
cols[2].metric("Cross-modal heads (> 0.5)", f"{summary['share_of_heads_cross_modal_over_half']:.0%}",
               help="Cao et al. 2020 (VALUE) found 15 % for UNITER-base")
views = {"word_to_region_over_chance": "word → region, × chance", "region_to_word_over_chance":
         "region → word, × chance", "cross_modal": "attention to the other modality"}
state.choice("gr_view", list(views))
view = st.radio("Show", list(views), key="gr_view", format_func=views.get, horizontal=True, persist_state="session")
hover = {"word_to_region": "word → region hit rate", "word_to_region_chance": "its chance",
         "region_to_word": "region → word hit rate", "region_to_word_chance": "its chance",
         "word_to_regions": "word rows' mass on regions", "region_to_text": "region rows' mass on text",
         "cross_modal": "cross-modal share"}
st.plotly_chart(plots.head_grid(heads, view, views[view] + plots.subtitle(
    f"{summary['rule']} rule; letters: dominant pattern"), hover,
    scale_title="share" if view == "cross_modal" else "× chance", zmax=1.0 if view == "cross_modal" else None),
    key="gr_grid", config=ui.CHART)
best = summary["best_heads"]
for direction, label in (("word_to_region", "word → region"), ("region_to_word", "region → word")):
    if best.get(direction):
        b = best[direction]
        st.markdown(f"Best {label} head: **layer {b['layer']}, head {b['head']}** ({ui.pattern_name(b['pattern'])}): "
                    f"{b['share']:.3f} against chance {b['chance']:.3f}.")

rule = "covering" if layers["plan_covering"].notna().any() else "box"
per_layer = pd.concat([layers[["layer", f"plan_{rule}"]].rename(columns={f"plan_{rule}": "hit rate"}).assign(
    where="WRA plan on the layer's states"), layers[["layer", f"attention_{rule}"]].rename(
    columns={f"attention_{rule}": "hit rate"}).assign(where="head-averaged attention (pointing game)"),
    layers[["layer", f"plan_{rule}_chance"]].rename(columns={f"plan_{rule}_chance": "hit rate"}).assign(
    where="chance")]).dropna()
st.plotly_chart(plots.curve_lines(per_layer, "layer", "hit rate", "where", "Grounding per layer"
                                  + plots.subtitle("layer 0: the embeddings; layer l: the output of encoder layer "
                                                   "l − 1"), f"hit rate ({rule} rule)",
                                  styles={"chance": "dot"}), key="gr_layers", config=ui.CHART)
st.caption(behaviour.where_read(loaded.source, "grounding"))
