"""Head explorer: one (example, layer, head) attention map with its predicted pattern and statistics."""
import streamlit as st

from analyses.patterns import HEAD_STATS, PATTERNS
from workbench import loaders, plots, ui

st.title("Head explorer")
loaded, split, index = ui.need_example()
layer, head = ui.head_picker(loaded)

example = ui.guarded("Extracting the attention maps", loaders.example, loaded, split, index)
table = ui.guarded("Classifying the attention maps", loaders.example_table, loaded, split, index)
layout = example.layout
row = table[(table["layer"] == layer) & (table["head"] == head)].iloc[0]

st.markdown(f"**Example {index}** ({layout.text_id}): {' '.join(layout.tokens[1:-1])}")
pattern = row["pattern"]
st.markdown(f"**Predicted pattern**: {ui.pattern_name(pattern)} (p = {row[f'p_{pattern}']:.2f})")
st.plotly_chart(plots.attention_heatmap(example.maps[layer, head], layout.labels(), layout.n_text,
                                        f"Layer {layer}, head {head}: rows = queries, columns = keys",
                                        hover_labels=layout.hover_labels()),
                key="head_heatmap", config=ui.CHART)
left, right = st.columns(2)
left.plotly_chart(plots.probability_bars({c: float(row[f"p_{c}"]) for c in PATTERNS}), key="head_probs",
                  config=ui.CHART)
with right:
    st.markdown("**Head statistics** (this map)")
    st.dataframe([{"statistic": name, "value": round(float(row[name]), 4)} for name in HEAD_STATS],
                 hide_index=True, width="stretch", height=36 * (len(HEAD_STATS) + 1))  # every row, no scroll
with st.expander("What the statistics mean"):
    st.markdown("\n".join(f"- **{name}**: {doc}" for name, doc in HEAD_STATS.items()))
st.caption(f"{layout.n_text} text positions ([CLS], word-pieces, [SEP]) and {layout.n_regions} regions, named "
           f"{ui.region_naming(layout)}; the dotted lines separate text from regions. With many positions only "
           f"every few are labelled on the axes; hover a cell for its query and key.")
