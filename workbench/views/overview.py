"""Overview: which of the six patterns each head follows on a set of examples (classifier predictions)."""
import streamlit as st

from workbench import compute, loaders, plots, state, ui

st.title("Overview")
st.caption("Every layer × head map of the chosen examples is classified into the six attention patterns of "
           "the UNITER paper (vertical, diagonal, vertical+diagonal, block, heterogeneous, reversed block); "
           "each head is coloured by its most frequent pattern.")

loaded, split, _ = ui.need_example()
count = len(ui.guarded("Reading the split", loaders.get_dataset, loaded, split))
state.indices("overview_examples", count, list(range(min(8, count))))
chosen = st.multiselect("Examples", range(count), key="overview_examples", persist_state="session",
                        help=f"Examples of the {split!r} split to classify (the first 8 by default).")
if not chosen:
    st.info("Choose at least one example.")
    st.stop()

tables = [ui.guarded("Classifying the attention maps", loaders.example_table, loaded, split, i) for i in chosen]
table, heads, layers = compute.summarise(tables)

left, right = st.columns([3, 2])
left.plotly_chart(plots.pattern_grid(heads, f"Dominant pattern per head ({len(chosen)} examples)"),
                  key="overview_grid", config=ui.CHART)
right.plotly_chart(plots.pattern_bars(layers), key="overview_bars", config=ui.CHART)

shares = table["pattern"].value_counts(normalize=True)
cols = st.columns(len(shares))
for col, (pattern, share) in zip(cols, shares.items()):
    col.metric(pattern.replace("_", " "), f"{share:.0%}")
with st.expander("Per-head table"):
    st.dataframe(heads, hide_index=True)
st.caption(f"Source `{loaded.source.path}` · split {split} · {len(table)} maps · classifier "
           f"`{loaders.classifier_file().name}`")
