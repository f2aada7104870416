"""Why this match: which word-pieces and regions the ITM "match" logit of the chosen example rests on, by three
relevance methods, with the example's perturbation curves and the split's evaluation of the methods."""
import numpy as np
import streamlit as st

from analyses.relevance import METHODS
from uniter_core.data.dataset import alignment_by_position
from workbench import behaviour, loaders, plots, state, ui
from workbench.loaders import LoadError

NAMES = {"attention": "last-layer attention", "rollout": "attention rollout", "gradient": "gradient × attention"}
st.title("Why this match")
st.caption("Relevance of each word-piece and region to the model's “match” logit for the chosen caption and "
           "image: the last layer's [CLS] attention, attention rollout (Abnar & Zuidema 2020) and gradient-weighted "
           "attention relevance (Chefer et al. 2021). The curves remove tokens in order of relevance and record "
           "the match probability.")
loaded, split, index = ui.need_example()
explained = ui.guarded("Computing the relevance", behaviour.explained, loaded, split, index)
example = ui.guarded("Extracting the attention maps", loaders.example_with_regions, loaded, split, index)
item = ui.guarded("Reading the example", loaders.item, loaded, split, index)
layout = example.layout

state.choice("rel_method", METHODS, "gradient")
method = st.radio("Method", METHODS, key="rel_method", format_func=NAMES.get, horizontal=True,
                  persist_state="session")
st.metric("Match probability", f"{explained.probability:.3f}")
regions, words = explained.regions[method], explained.words[method]
objects = sorted({box for boxes in alignment_by_position(item).values() for box in boxes})
left, right = st.columns([3, 2])
picture = loaders.image(loaded, split, layout.image_id)
uri, width, height = picture if picture else (None, 1000, 1000)
boxes = layout.region_boxes * np.array([width, height, width, height])
top = int(np.argmax(regions)) if len(regions) else None
left.plotly_chart(plots.image_boxes(uri, width, height, boxes, layout.hover_labels()[layout.n_text:], regions,
                                    highlight=[top] if top is not None else [], truth=objects,
                                    title="Regions by relevance" + plots.subtitle(NAMES[method]),
                                    weight_name="relevance", figure_height=480, highlight_name="most relevant"),
                  key="rel_image", config=ui.CHART)
right.plotly_chart(plots.token_bars(list(layout.tokens[1:-1]), words, "Word-pieces by relevance"
                                    + plots.subtitle(NAMES[method]),
                                    highlight=[p - 1 for p in alignment_by_position(item)]),
                   key="rel_words", config=ui.CHART)
right.caption("Green bars: word-pieces the corpus links to an object (its boxes are dashed green on the image). "
              f"Regions are named {ui.region_naming(layout)}.")

state.choice("rel_modality", ("regions", "words"))
modality = st.radio("Remove", ("regions", "words"), key="rel_modality", horizontal=True, persist_state="session",
                    format_func=lambda m: "regions" if m == "regions" else "word-pieces")
curves = explained.curves[explained.curves["modality"] == modality].copy()
panels = st.columns(2)
for panel, direction, label in ((panels[0], "positive", "most relevant first (lower is better)"),
                                (panels[1], "negative", "least relevant first (higher is better)")):
    shown = curves[curves["direction"] == direction].assign(order=lambda t: t["order"].map(
        lambda o: NAMES.get(o, "random order")))
    panel.plotly_chart(plots.curve_lines(shown, "share", "probability", "order", f"This pair: {label}",
                                         "match probability", styles={"random order": "dot"}),
                       key=f"rel_curve_{direction}", config=ui.CHART)

st.subheader("The methods over the split")
try:
    summary, tables, note = behaviour.read(loaded, "relevance")
except LoadError as error:
    ui.show(error)
    st.code(behaviour.command(loaded.source, "relevance", split), language="bash")
else:
    if note:
        st.warning(note)
    auc = tables["auc"]
    table = auc.pivot_table(index="order", columns=["modality", "direction"], values="auc").reindex(
        list(METHODS) + ["random"])
    table.columns = [f"{m}, {'most' if d == 'positive' else 'least'} relevant first" for m, d in table.columns]
    st.dataframe(table.rename(index=lambda o: NAMES.get(o, "random order")), column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in table.columns})
    pointing = tables["pointing"]
    grounded = len(pointing) and pointing["word_pieces"].iloc[0] > 0
    game = ("Pointing game (a grounded word's most relevant region shows its object): " + ", ".join(
        f"{NAMES[r.method]} {r.hits:.3f}" for r in pointing.itertuples())
        + f", chance {pointing['chance'].iloc[0]:.3f}. ") if grounded else "No grounded words for a pointing game. "
    st.caption(f"Area under the match-probability curve over {summary['examples']} {summary['source']['split']} "
               "examples (most relevant first: lower is better; least relevant first: higher is better). " + game
               + behaviour.where_read(loaded.source, "relevance"))
