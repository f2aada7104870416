"""Overview: which of the six patterns each head follows on a set of examples (classifier predictions).

Classifying a whole split takes minutes (every map of every example goes through the model and the classifier),
so the rows of a matching `python -m analyses.export_stats` export are used where there is one, and the rest is
computed with a progress bar, after a warning with the export command when it will take long.
"""
import time

import streamlit as st

from workbench import compute, exports, loaders, plots, state, ui

st.title("Overview")
st.caption("Every layer × head map of the chosen examples is classified into the six attention patterns of "
           "the UNITER paper (vertical, diagonal, vertical+diagonal, block, heterogeneous, reversed block); "
           "each head is coloured by its most frequent pattern.")

loaded, split, _ = ui.need_example()
count = len(ui.guarded("Reading the split", loaders.get_dataset, loaded, split))
state.flag("overview_all", False)
whole = st.toggle(f"The whole {split} split ({count} examples)", key="overview_all", persist_state="session",
                  help="Every example of the split: read from a matching export at once, else classified with a "
                       "progress bar. Off: the examples chosen below.")
if whole:  # no multiselect of hundreds of chips for the browser to draw; the chosen examples are kept for later
    chosen = list(range(count))
else:
    state.indices("overview_examples", count, list(range(min(8, count))))
    chosen = st.multiselect("Examples", range(count), key="overview_examples", persist_state="session",
                            help=f"Examples of the {split!r} split to classify (the first 8 by default).")
if not chosen:
    st.info("Choose at least one example.")
    st.stop()

folder = exports.export_folder(loaded.source, state.read_text("stats_dir"), split)
export, why = exports.find_export(loaded, split, folder)
covered = [i for i in chosen if export is not None and i in export.examples]
missing = [i for i in chosen if export is None or i not in export.examples]
command = exports.export_command(loaded.source, split, folder)
if export is not None:
    rest = (f"{len(missing)} of the chosen examples it does not cover are classified here" if missing else
            f"all {len(chosen)} chosen examples")
    st.caption(f"From the export `{exports.shown(folder)}` ({export.label}); {rest}.")
elif why:
    st.caption(f"The export `{exports.shown(folder)}` is not used: {why}.")


def long_warning(notice, todo: int, per_example: float) -> None:
    """Say how long the examples not classified yet will take, and which command makes it instant next time."""
    with notice.container():
        st.warning(f"{todo} of the chosen examples are not classified yet: about "
                   f"{compute.duration(todo * per_example)} on this machine. Exporting the statistics of the "
                   f"{split} split once (below, or on the Statistics page) makes this page read them instantly "
                   f"next time.")
        st.code(command, language="bash")


def classify(indices: list[int]) -> list:
    """example_table() of each example, with a progress bar (done / total, time left) while any is new."""
    todo = {i for i in indices if not loaders.example_table_cached(loaded, split, i)}
    if not todo:
        return [ui.guarded("Classifying the attention maps", loaders.example_table, loaded, split, i)
                for i in indices]
    notice = st.empty()
    per_example = loaders.example_seconds(loaded)  # None until this model classified an example here
    warned = len(todo) > compute.OVERVIEW_LONG and per_example is not None
    if warned:
        long_warning(notice, len(todo), per_example)
    bar = st.progress(0.0, text=compute.progress_text(0, len(indices), None))
    tables, fresh, start = [], 0, time.perf_counter()
    for done, i in enumerate(indices, 1):
        tables.append(ui.guarded("Classifying the attention maps", loaders.example_table, loaded, split, i))
        if i in todo:
            fresh += 1
            per_example = (time.perf_counter() - start) / fresh
        if not warned and len(todo) - fresh > compute.OVERVIEW_LONG:
            warned = True
            long_warning(notice, len(todo) - fresh, per_example)
        left = (len(todo) - fresh) * per_example if per_example is not None else None
        bar.progress(done / len(indices), text=compute.progress_text(done, len(indices), left))
    bar.empty()
    if warned:
        with notice.container():
            st.info(f"Classifying {fresh} examples took {compute.duration(time.perf_counter() - start)}. "
                    f"Exported once, the statistics of the {split} split are read instantly:")
            st.code(command, language="bash")
    return tables


parts = ([export.rows(covered)] if covered else []) + classify(missing)
table, heads, layers = compute.overview_tables(parts, chosen)

left, right = st.columns([3, 2])
left.plotly_chart(plots.pattern_grid(heads, f"Dominant pattern per head ({len(chosen)} examples)"),
                  key="overview_grid", config=ui.CHART)
right.plotly_chart(plots.pattern_bars(layers), key="overview_bars", config=ui.CHART)

shares = table["pattern"].value_counts(normalize=True)
# One wrapping line rather than a row of metrics: six metric labels get cut ("heterogene…") in narrow windows.
st.markdown("**Share of all maps:** " + " · ".join(f"{ui.pattern_name(p)} **{share:.0%}**" if share >= 0.01 else
                                                  f"{ui.pattern_name(p)} **{share:.1%}**" for p, share in shares.items()))
with st.expander("Per-head table"):
    st.dataframe(heads, hide_index=True, column_config={"dominant_pattern": st.column_config.TextColumn(width="medium")})
st.caption(f"Source `{loaded.source.path}` · split {split} · {len(table)} maps · classifier "
           f"`{loaders.classifier_file().name}`")
