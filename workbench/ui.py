"""Widgets shared by the pages: the sidebar (model source, split, example), the head picker, and the
`need_*` guards that show a clear message and stop the page when something is missing or broken.

Shared choices live in st.session_state under fixed keys with persist_state="session", so switching pages
keeps the run, split, example, layer and head. Widgets never get a default value argument: defaults are put
into session state first, which keeps Streamlit from warning about two sources of truth. Every such value is
checked by workbench.state before its widget is drawn (see there why a stored value can have the wrong type).
"""
from __future__ import annotations

import logging

import streamlit as st

from workbench import loaders, settings, state
from workbench.loaders import LoadError, Loaded, Source

KIND_LABELS = {"run": "Run folder", "official": "Official checkpoint"}
# Plotly's mode bar covers chart titles in narrow columns; zoom by dragging and reset by double-click still work.
CHART = {"displayModeBar": False}
UNEXPECTED = "Unexpected error"  # the start of the message of a failure no page handles (a bug)


def current_source() -> Source:
    """The source chosen in the sidebar, read without trusting the types in session state."""
    if st.session_state.get("source_kind", "run") == "official":
        preset = st.session_state.get("ckpt_preset")
        return Source("official", state.read_text("ckpt_path"), state.read_text("ckpt_corpus"),
                      preset if preset in loaders.PRESETS else loaders.PRESETS[0])
    return Source("run", state.read_text("run_dir", settings.default_run()))


def show(error: LoadError) -> None:
    (st.info if error.missing else st.error)(str(error))


def sidebar() -> None:
    """Source, split and example; loads the model (cached) so that every page starts from the same state."""
    state.choice("source_kind", KIND_LABELS)
    if not state.text("run_dir", settings.default_run()).strip():
        st.session_state["run_dir"] = settings.default_run()
    state.text("ckpt_path", "")
    state.text("ckpt_corpus", "data/official")
    state.choice("ckpt_preset", loaders.PRESETS)
    with st.sidebar:
        st.radio("Model source", list(KIND_LABELS), format_func=KIND_LABELS.get, key="source_kind",
                 horizontal=True, persist_state="session")
        if st.session_state["source_kind"] == "run":
            # A text box, not a select box with new options: Streamlit's select box drops typed text that
            # starts with the current option (typing runs/tiny/x while runs/tiny is chosen left "/x").
            st.text_input("Run folder", key="run_dir", persist_state="session",
                          help="A folder written by `python -m uniter_core.train` (default: the demo run); type "
                               "a path or pick one found under runs/ below.")
            found = [r for r in settings.find_runs() if r != st.session_state["run_dir"]]
            if found:
                st.selectbox("Runs found", found, index=None, key="run_pick", placeholder="pick another run…",
                             on_change=_pick_run, label_visibility="collapsed")
        else:
            st.text_input("Checkpoint (.pt)", key="ckpt_path", persist_state="session",
                          help="An official UNITER checkpoint, e.g. uniter-base.pt")
            st.text_input("Corpus folder", key="ckpt_corpus", persist_state="session",
                          help="Feature store + captions whose features fit the checkpoint, e.g. converted with "
                               "`python -m uniter_core.data.official_db`.")
            st.selectbox("Preset", loaders.PRESETS, key="ckpt_preset", persist_state="session")
        try:
            loaded = loaders.load(current_source())
        except LoadError as error:
            st.caption(("No model yet" if error.missing else "The model cannot be loaded") + " (see the page).")
            return
        for message in loaded.skipped:
            st.warning(f"{message}; showing {loaded.checkpoint}, the newest intact one.")
        _example_picker(loaded)


def _pick_run() -> None:
    """The 'Runs found' select sets the run folder box, then clears itself (a callback may set both)."""
    picked = st.session_state.get("run_pick")
    if isinstance(picked, str) and picked:
        st.session_state["run_dir"] = picked
    st.session_state["run_pick"] = None


def _example_picker(loaded: Loaded) -> None:
    splits = loaders.splits(loaded.corpus)
    if not splits:
        st.caption(f"{loaded.corpus} holds no txt_db/*.jsonl split.")
        return
    split = state.choice("split", splits)
    st.selectbox("Split", splits, key="split", persist_state="session")
    try:
        texts = loaders.get_dataset(loaded, split).texts
    except LoadError as error:
        st.caption(str(error))
        return
    if not texts:
        st.caption(f"The {split} split holds no examples.")
        return
    # The labels are this split's captions: a new split (or corpus) must re-send the value, see workbench.state.
    index = state.index("example", len(texts), context=(str(loaded.corpus), split))
    st.selectbox("Example", range(len(texts)), key="example", persist_state="session",
                 format_func=lambda i: f"{i}: {texts[i].get('caption', texts[i].get('text_id', ''))}"[:90])
    chosen = texts[index]
    # The select box shows the start of a long caption; the whole of it follows here.
    st.caption(f"“{chosen.get('caption', chosen.get('text_id', ''))}”")
    checkpoint = f" · checkpoint {loaded.checkpoint}" if loaded.checkpoint else ""
    st.caption(f"{split} split · {len(texts)} examples · {loaded.layers} layers × {loaded.heads} heads{checkpoint} · "
               f"corpus `{loaded.corpus}`")


# ------------------------------------------------------------------------------------------ guards
def need_model() -> Loaded:
    try:
        return loaders.load(current_source())
    except LoadError as error:
        show(error)
        st.stop()


def need_example() -> tuple[Loaded, str, int]:
    """(model, split, example index) chosen in the sidebar; stops the page with a message when unavailable."""
    loaded = need_model()
    split = st.session_state.get("split")
    if split not in loaders.splits(loaded.corpus):
        st.error(f"`{loaded.corpus}` has no readable split with examples (txt_db/*.jsonl).")
        st.stop()
    count = len(guarded("Reading the split", loaders.get_dataset, loaded, split))
    if not count:
        st.info(f"The {split!r} split of `{loaded.corpus}` holds no examples: pick another split in the sidebar.")
        st.stop()
    index = state.as_index(st.session_state.get("example"))
    return loaded, split, index if index is not None and 0 <= index < count else 0


def guarded(what: str, function, *args):
    """function(*args), or a clear message and a stopped page when it fails."""
    try:
        return function(*args)
    except LoadError as error:
        show(error)
    except Exception as error:  # a page must never show a traceback
        st.error(f"{what} failed: {type(error).__name__}: {error}")
    st.stop()


# ------------------------------------------------------------------------------------------ head picker
def _step(key: str, delta: int, size: int) -> None:
    st.session_state[key] = ((state.as_index(st.session_state.get(key)) or 0) + delta) % size


def head_picker(loaded: Loaded, allow_mean: bool = False) -> tuple[int, int | None]:
    """Layer and head selects with previous/next buttons (mouse only). With allow_mean the head may be
    'mean' (None): the average over the layer's heads."""
    layer, head = state.index("layer", loaded.layers), state.index("head", loaded.heads)
    mean = allow_mean and state.flag("head_mean")
    cols = st.columns([2.5, 1, 1, 2.5, 1, 1, 3], vertical_alignment="bottom")
    cols[0].selectbox("Layer", range(loaded.layers), key="layer", persist_state="session")
    cols[1].button("◀", key="layer_prev", help="previous layer", on_click=_step, args=("layer", -1, loaded.layers))
    cols[2].button("▶", key="layer_next", help="next layer", on_click=_step, args=("layer", 1, loaded.layers))
    cols[3].selectbox("Head", range(loaded.heads), key="head", persist_state="session", disabled=mean)
    cols[4].button("◀", key="head_prev", help="previous head", on_click=_step, args=("head", -1, loaded.heads),
                   disabled=mean)
    cols[5].button("▶", key="head_next", help="next head", on_click=_step, args=("head", 1, loaded.heads),
                   disabled=mean)
    if allow_mean:
        cols[6].toggle("layer mean", key="head_mean", persist_state="session",
                       help="average the attention over all heads of the layer")
    return layer, None if mean else head


def unexpected(error: Exception, where: str, container=st) -> None:
    """A failure no page foresaw: log the traceback for the developer, show one line to the user."""
    logging.getLogger("workbench").error("unexpected error in %s", where, exc_info=error)
    container.error(f"{UNEXPECTED} in {where}: {type(error).__name__}: {error}. Please report it; switching the "
                    f"source, split or page, or reloading, may get around it.")


# ------------------------------------------------------------------------------------------ wording
def pattern_name(pattern: str) -> str:
    """'vertical_diagonal' -> 'vertical + diagonal', as the pages write a pattern."""
    return pattern.replace("_diagonal", " + diagonal").replace("_", " ")


def region_naming(layout) -> str:
    """How the regions of an example are named on the page (ExampleLayout.region_name), in words."""
    if layout.names_from_corpus:
        return ("by what the corpus says they show (“moon #0”: the object's own box; “part of moon #4”: a "
                "proposal covering it; “background #7”), hover for the detector's class")
    return "by the detector's top class and box index (“dog #3”); the corpus records no objects"


def number(value: float, digits: int = 4, signed: bool = False) -> str:
    """A rounded number that never reads "-0.0000": what rounds to zero is written 0 (with `signed`, "±0")."""
    rounded = round(float(value), digits)
    if rounded == 0:
        return ("±" if signed else "") + f"{0:.{digits}f}"
    return f"{rounded:+.{digits}f}" if signed else f"{rounded:.{digits}f}"
