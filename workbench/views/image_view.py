"""Image view: the picture with its region boxes, shaded by where a word looks, or the words looking at a region."""
import numpy as np
import streamlit as st

from uniter_core.data.dataset import alignment_by_position
from workbench import compute, loaders, plots, state, ui

MODES = ("Word → regions", "Region → words")
TOP = 8  # regions listed in the table beside the picture

st.title("Image view")
loaded, split, index = ui.need_example()
layer, head = ui.head_picker(loaded, allow_mean=True)
example = ui.guarded("Extracting the attention maps", loaders.example_with_regions, loaded, split, index)
item = ui.guarded("Reading the example", loaders.item, loaded, split, index)
layout = example.layout
labels = layout.labels()
details = layout.hover_labels()
truth = alignment_by_position(item)
attention = compute.head_map(example.maps, layer, head)
source = f"layer {layer}, " + ("mean over heads" if head is None else f"head {head}")

try:
    picture = loaders.image(loaded, split, layout.image_id)
except loaders.LoadError as error:
    st.warning(f"{error}: showing the boxes alone.")
    picture = False
if picture is False:
    uri, width, height = None, 1000, 1000
elif picture is None:
    st.info(f"No image file for {layout.image_id} in `{loaded.corpus}` (looked for images/{layout.image_id}.jpg): "
            f"showing the boxes alone.")
    uri, width, height = None, 1000, 1000
else:
    uri, width, height = picture
boxes = layout.region_boxes * np.array([width, height, width, height])

state.choice("image_mode", MODES)
mode = st.radio("Show", MODES, key="image_mode", horizontal=True, persist_state="session")
left, right = st.columns([3, 2])
if mode == MODES[0]:
    # The labels are this example's word-pieces: another example re-sends the value (see workbench.state).
    state.index("word", layout.n_text, min(truth) if truth else 1, context=(loaded.source, split, index))
    position = right.selectbox("Word", range(layout.n_text), key="word", persist_state="session",
                               format_func=lambda p: f"{p}: {layout.tokens[p]}" + (" ✓" if p in truth else ""),
                               help="✓ = the corpus knows which box this word-piece names (dashed green)")
    weights = compute.word_to_regions(attention, layout.n_text, position)
    left.plotly_chart(plots.image_boxes(uri, width, height, boxes, details[layout.n_text:], weights,
                                        highlight=[int(weights.argmax())], truth=sorted(truth.get(position, ())),
                                        title=f"Where “{layout.tokens[position]}” looks" + plots.subtitle(source),
                                        highlight_name="most attention"),
                      key="image_word", config=ui.CHART)
    right.metric("Attention on regions", f"{weights.sum():.1%}",
                 help="share of this query's attention that goes to region keys (the rest stays on text)")
    shown = min(TOP, layout.n_regions)
    top = np.argsort(weights)[::-1][:shown]
    right.markdown(f"**The {shown} regions it attends to most**, of {layout.n_regions}" if shown < layout.n_regions
                   else f"**All {shown} regions**, most attention first")
    right.dataframe([{"region": labels[layout.n_text + j], "attention": round(float(weights[j]), 4),
                      "truth": "✓" if j in truth.get(position, ()) else ""} for j in top], hide_index=True,
                    width="stretch")
else:
    state.index("region", layout.n_regions, context=(loaded.source, split, index))
    region = right.selectbox("Region", range(layout.n_regions), key="region", persist_state="session",
                             format_func=lambda k: labels[layout.n_text + k])
    weights = compute.region_to_words(attention, layout.n_text, region)
    grounded = [p for p, regions in truth.items() if region in regions]
    left.plotly_chart(plots.image_boxes(uri, width, height, boxes, details[layout.n_text:], highlight=[region],
                                        title=f"Region {labels[layout.n_text + region]}", highlight_name="this region"),
                      key="image_region", config=ui.CHART)
    right.plotly_chart(plots.token_bars(list(layout.tokens), weights, "Attention of each word on it" +
                                        plots.subtitle(source),
                                        highlight=grounded), key="image_tokens", config=ui.CHART)
    if grounded:
        right.caption("Green bars: word-pieces that name this box in the corpus.")
st.caption(f"Regions are named {ui.region_naming(layout)}.")
