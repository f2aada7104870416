"""Start: what the workbench shows and where, opened at the app's root address (every other page has its own)."""
import streamlit as st

from workbench import loaders, ui

st.title("UNITER Workbench")
st.caption("Attention heads of a UNITER model, read against the images and captions they were computed on. "
           "Pick the model, the split and the example in the sidebar; every page follows them.")

try:
    loaded = loaders.load(ui.current_source())
except loaders.LoadError as error:
    ui.show(error)
else:
    checkpoint = f", checkpoint {loaded.checkpoint}" if loaded.checkpoint else ""
    st.markdown(f"**Model** `{loaded.source.path}`{checkpoint}: {loaded.layers} layers × {loaded.heads} heads, "
                f"corpus `{loaded.corpus}`.")

GUIDE = {
    "views/overview.py": "which of the six attention patterns each head follows, over many examples",
    "views/head_explorer.py": "one head's attention map of the chosen example, its predicted pattern and statistics",
    "views/image_view.py": "where a word looks among the image regions, or which words look at a region",
    "views/transport.py": "the word × region transport plan of WRA, by IPOT, Sinkhorn and exact EMD",
    "views/statistics.py": "the exported pattern tables and figures, filtered and downloadable",
    "views/importance.py": "which heads matter: remove one head at a time, gradient importance, pruning curves",
    "views/grounding.py": "which heads point words at their objects' regions, and regions at the words naming them",
    "views/relevance.py": "which words and regions the match of the chosen caption and image rests on",
    "views/dynamics.py": "how patterns, importance and grounding formed during training; two runs side by side",
    "views/label_heads.py": "hand-label maps into the gold set and retrain the pattern classifier",
    "views/training.py": "loss curves, learning rate, throughput and the evaluation of a run",
}
for path, what in GUIDE.items():
    left, right = st.columns([1, 3], vertical_alignment="center")
    left.page_link(path)
    right.markdown(what)
