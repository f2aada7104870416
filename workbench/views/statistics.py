"""Statistics: the tables and figures written by analyses.export_stats, filtered and downloadable."""
import json
from pathlib import Path

import streamlit as st

from analyses import export_stats, figures
from analyses.patterns import PATTERNS
from workbench import compute, exports, loaders, settings, state, ui

MIME = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet", "json": "application/json",
        "png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
TABLES = {"heads": "per head", "layers": "per layer", "examples": "per map"}
# Columns the page filters on; a table without them is not an export_stats table.
REQUIRED = {"heads": ("layer", "head", "dominant_pattern"), "layers": ("layer", "dominant_pattern"),
            "examples": ("layer", "head", "pattern")}
FRACTIONS = tuple(f"frac_{c}" for c in PATTERNS)  # what the figures are drawn from


def export_source(source) -> dict:
    """export_stats's options naming the model of the sidebar's source, as typed."""
    if source.kind == "run":
        return {"run": source.path}
    return {"checkpoint": source.path, "corpus": source.corpus, "preset": source.preset}


@st.cache_data(max_entries=48, show_spinner=False)
def figure_bytes(folder: str, name: str, fmt: str, stamp: float, layers: tuple = (), heads: tuple = (),
                 patterns: tuple = ()) -> bytes | None:
    """One of analyses.figures drawn from the folder's tables, as export_stats draws it, for the filtered layers,
    heads and dominant patterns (None when none is left). Drawn here rather than read from figures/, so that the
    page follows the filters and always shows the current drawing (fitted colour scales) even for older exports.
    Layer filters apply to every figure, head and pattern filters to the per-head ones."""
    tables = {t: loaders.stats_table(Path(folder), t, REQUIRED[t] + FRACTIONS) for t in ("layers", "heads")}
    if layers:
        tables = {t: table[table["layer"].isin(layers)] for t, table in tables.items()}
    if heads:
        tables["heads"] = tables["heads"][tables["heads"]["head"].isin(heads)]
    if patterns:
        tables["heads"] = tables["heads"][tables["heads"]["dominant_pattern"].isin(patterns)]
    if not len(tables[figures.FIGURES[name][0]]):
        return None
    return figures.render(name, tables["layers"], tables["heads"], fmt)


def sorted_values(column) -> list:
    """The distinct values of a column, sorted (by text when a hand-edited file mixes types)."""
    values = list(column.dropna().unique())
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def run_export(source, split: str, out: Path, max_examples: int | None) -> None:
    """export_stats into `out`, without a progress bar; its line, or its error, shown on the page."""
    where = {name: value if name == "preset" else Path(value) for name, value in export_source(source).items()}
    with st.spinner("Exporting the statistics…"):
        tables, printed, done = compute.run_captured(
            export_stats.export_stats, out=out, split=split, max_examples=max_examples,
            model=settings.classifier_path(), progress=False, **where)
    message = printed + (export_stats.summary(out, tables) if done else "")
    st.session_state["export_message"] = ("success" if done else "error", message.strip())  # shown after rerun


st.title("Statistics")
source = ui.current_source()
split = st.session_state.get("split")
split = split if isinstance(split, str) and split else "test"
default = exports.export_folder(source, split=split)
state.text("stats_dir", "")
typed = st.text_input("Statistics folder", key="stats_dir", placeholder=str(default), persist_state="session",
                      help="A folder written by `python -m analyses.export_stats` (default: stats/<run name> for "
                           "the test split, stats/<run name>-<split> for the others).")
folder = exports.export_folder(source, typed, split)
command = exports.export_command(source, split, folder)
kind, message = st.session_state.pop("export_message", (None, None))
if kind:
    (st.success if kind == "success" else st.error)(message)

if not (folder / "columns.json").exists():
    try:
        loaders.load(source)
    except loaders.LoadError as error:  # nothing to export from: say what is missing, offer no command
        ui.show(error)
        st.info(f"No exported statistics in `{exports.shown(folder)}` either.")
        st.stop()
    st.info(f"No exported statistics of the {split} split in `{exports.shown(folder)}` yet. Produce them with:")
    st.code(command, language="bash")
    cols = st.columns([2, 1, 3], vertical_alignment="bottom")
    limit = cols[0].number_input("…or export here, for the first N examples (0 = all)", min_value=0, value=0,
                                 step=50, key="export_limit")
    cols[2].caption("The whole demo test split takes a few minutes on 2 CPU cores; the page waits until it is done.")
    if cols[1].button("Export now", key="export_now", type="primary"):
        run_export(source, split, folder, int(limit) or None)
        st.rerun()
    st.stop()

try:
    sidecar = json.loads((folder / "columns.json").read_text(encoding="utf-8"))
except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
    st.error(f"`{folder / 'columns.json'}` cannot be read ({error}); export the statistics again:")
    st.code(command, language="bash")
    st.stop()
source_info = sidecar.get("source", {}) if isinstance(sidecar, dict) else {}
st.caption(" · ".join(f"{k}: {v}" for k, v in source_info.items() if v not in (None, "")))

state.choice("stats_table", TABLES)
name = st.radio("Table", list(TABLES), horizontal=True, key="stats_table", format_func=TABLES.get)
table = ui.guarded("Reading the table", loaders.stats_table, folder, name, REQUIRED[name])
pattern_column = "pattern" if name == "examples" else "dominant_pattern"
options = {"layers": sorted_values(table["layer"]), "heads": sorted_values(table["head"]) if "head" in table else []}
for key, values in [(f"stats_{k}_{name}", v) for k, v in options.items()] + [(f"stats_patterns_{name}", PATTERNS)]:
    state.members(key, list(values))
cols = st.columns(3)
layers = cols[0].multiselect("Layer", options["layers"], key=f"stats_layers_{name}", placeholder="all",
                             persist_state="session")
heads = cols[1].multiselect("Head", options["heads"], key=f"stats_heads_{name}", placeholder="all",
                            disabled="head" not in table, persist_state="session")
patterns = cols[2].multiselect("Pattern", PATTERNS, key=f"stats_patterns_{name}", placeholder="all",
                               format_func=ui.pattern_name, persist_state="session",
                               help="per map: the map's predicted pattern; per head / per layer: the dominant one")
view = table
if layers:
    view = view[view["layer"].isin(layers)]
if heads and "head" in view:
    view = view[view["head"].isin(heads)]
if patterns:
    view = view[view[pattern_column].isin(patterns)]
# The pattern right after the keys, where a narrow window still shows it (the export keeps its own order).
first = [c for c in ("example", "layer", "head", pattern_column) if c in view]
st.dataframe(view[first + [c for c in view.columns if c not in first]], hide_index=True, height=320,
             column_config={pattern_column: st.column_config.TextColumn(width="medium"),
                            "text_id": st.column_config.TextColumn(width="medium"),
                            "image_id": st.column_config.TextColumn(width="medium")})
st.caption(f"{len(view)} of {len(table)} rows")

data = {"csv": view.to_csv(index=False).encode(), "json": view.to_json(orient="records", indent=1).encode()}
try:
    data = {"csv": data["csv"], "parquet": view.to_parquet(index=False), "json": data["json"]}
except Exception as error:  # pyarrow refuses columns of mixed types (a hand-edited CSV)
    st.caption(f"No Parquet download: the table has columns Parquet cannot store ({type(error).__name__}).")
cols = st.columns([1, 1.3, 1, 3])
for col, (fmt, payload) in zip(cols, data.items()):
    col.download_button(f"{fmt.upper()}", payload, file_name=f"{name}.{fmt}", mime=MIME[fmt], key=f"dl_{fmt}",
                        icon=":material/download:")
with st.expander("What the columns mean"):
    docs = sidecar.get("tables") if isinstance(sidecar, dict) else None
    docs = docs.get(name) if isinstance(docs, dict) else None
    docs = docs.get("columns") if isinstance(docs, dict) else None
    docs = {c: d for c, d in docs.items() if isinstance(d, dict)} if isinstance(docs, dict) else {}
    st.dataframe([{"column": c, "dtype": str(d.get("dtype")), "meaning": str(d.get("description"))}
                  for c, d in docs.items()], hide_index=True)

st.subheader("Figures")
# The figures are drawn from the per-head and per-layer tables: a per-map pattern filter (a map's own pattern)
# has no counterpart there, so they follow the layer and head filters only.
chosen = (tuple(layers), tuple(heads), () if name == "examples" else tuple(patterns))
notes = []
if any(chosen):
    notes.append("drawn for the filters above: layers apply to every figure, heads and dominant patterns to the "
                 "per-head grids (heads filtered out are left off their axis); the downloads are these figures")
if name == "examples" and patterns:
    notes.append("the per-map pattern filter does not apply to them: they show the heads' dominant patterns and "
                 "shares over all their maps")
st.caption("Drawn from the tables as `analyses.export_stats` draws them" + ("; " + "; ".join(notes) if notes else
           "; set filters above to draw them for a part of the model") + ".")
stamp = max(loaders.file_time(folder / f"{t}.{ext}") for t in ("columns", "layers", "heads")
            for ext in ("json", "parquet", "csv"))  # a re-export or a hand-edited table draws them again
for figure_name in figures.FIGURES:
    png = ui.guarded("Drawing the figure", figure_bytes, str(folder), figure_name, "png", stamp, *chosen)
    if png is None:
        st.info(f"{figure_name.replace('_', ' ')}: no rows left under these filters.")
        continue
    st.image(png, caption=figure_name.replace("_", " "), width="content")  # its own size, shrunk to fit
    cols = st.columns([1, 1, 1, 4])
    for col, fmt in zip(cols, ("png", "svg", "pdf")):
        # SVG and PDF are drawn only when asked for (a callable), so that a filter change redraws one PNG each
        payload = png if fmt == "png" else (lambda n=figure_name, f=fmt: figure_bytes(str(folder), n, f, stamp, *chosen))
        col.download_button(fmt.upper(), payload, file_name=f"{figure_name}.{fmt}", mime=MIME[fmt],
                            key=f"fig_{figure_name}_{fmt}", icon=":material/download:")
