"""The behaviour analyses as the pages read them: where each one's output folder is, the command that writes it,
whether it was made from the model the app shows, and running it from the page with a progress bar.

Outputs live under settings.behaviour_root(): behaviour/<source name>/<analysis>/ (what `make behaviour` and the
pages' "Compute now" write). Without one, a page reads the copy committed with the project for the demo run,
docs/behaviour/<source name>/<analysis>/, when there is one. Reading takes a fraction of a second; computing
takes seconds (grounding) to minutes (the importance sweep and the dynamics), so pages read an output when there
is one and offer to compute it otherwise.
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path

import streamlit as st

from analyses import dynamics, grounding, head_importance, relevance
from analyses.results import read_results
from uniter_core.errors import UserError
from workbench import compute, settings
from workbench.loaders import LoadError, Loaded, Source, file_time

ANALYSES = {"importance": (head_importance, head_importance.TABLES, "analyses.head_importance"),
            "grounding": (grounding, grounding.TABLES, "analyses.grounding"),
            "relevance": (relevance, relevance.TABLES, "analyses.relevance"),
            "dynamics": (dynamics, dynamics.TABLES, "analyses.dynamics")}


COMMITTED = settings.REPO / "docs" / "behaviour"


def folder(source: Source, analysis: str) -> Path:
    """Where the commands and the pages write the analysis of `source`."""
    return settings.behaviour_root() / source.name / analysis


def found_folder(source: Source, analysis: str) -> Path | None:
    """The output a page reads: the written one, else the committed copy of the demo run, else None."""
    for where in (folder(source, analysis), COMMITTED / source.name / analysis):
        if (where / "summary.json").exists():
            return where
    return None


def _source_arguments(source: Source) -> list[str]:
    if source.kind == "run":
        return ["--run", source.path]
    return ["--checkpoint", source.path, "--corpus", source.corpus, "--preset", source.preset]


def command(source: Source, analysis: str, split: str = "test", extra: list[str] = ()) -> str:
    """The shell command that writes the page's output for `source`."""
    module = ANALYSES[analysis][2]
    if analysis == "dynamics":
        arguments = ["--run", source.path]
    else:
        arguments = _source_arguments(source) + ["--split", split]
    words = ["python", "-m", module, *arguments, *extra, "--out", str(_shown(folder(source, analysis)))]
    return " ".join(shlex.quote(w) for w in words)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(settings.REPO))
    except (ValueError, OSError):
        return str(path)


@st.cache_data(max_entries=16, show_spinner=False)
def _read(path: str, names: tuple[str, ...], stamp: float):
    return read_results(Path(path), names)


def read(loaded: Loaded, analysis: str) -> tuple[dict, dict, str | None]:
    """(summary, tables, a note when the output was made from another checkpoint than the one shown);
    LoadError(missing=True) when there is no output yet."""
    where = found_folder(loaded.source, analysis)
    if where is None:
        raise LoadError(f"No {analysis} output for this model yet (`{_shown(folder(loaded.source, analysis))}`).",
                        missing=True)
    try:
        summary, tables = _read(str(where), ANALYSES[analysis][1], file_time(where / "summary.json"))
    except (UserError, ValueError, OSError) as error:
        raise LoadError(f"`{_shown(where)}` cannot be read: {error}") from None
    return summary, tables, _mismatch(summary.get("source", {}), loaded, analysis)


def where_read(source: Source, analysis: str) -> str:
    """The page's closing caption: which folder it read, and whether that is the committed copy."""
    found = found_folder(source, analysis)
    if found is None:
        return ""
    committed = found != folder(source, analysis)
    return (f"Read from `{_shown(found)}`" + (f", the results committed with the project (the commands and "
                                             f"“Compute now” write `{_shown(folder(source, analysis))}`)."
                                             if committed else "."))


def _mismatch(recorded: dict, loaded: Loaded, analysis: str) -> str | None:
    if analysis == "dynamics":
        checkpoints = recorded.get("checkpoints") or []
        made = checkpoints[0] if checkpoints else None
    else:
        made = recorded.get("checkpoint")
        made = made if loaded.source.kind == "run" else (Path(made).name if made else None)
    shown = loaded.checkpoint if loaded.source.kind == "run" else Path(loaded.source.path).name
    if made and shown and made != shown:
        return f"This output was made from {made}; the app shows {shown}. Compute it again to match."
    return None


def compute_now(loaded: Loaded, analysis: str, split: str, **settings_) -> dict:
    """Run the analysis into its folder with a progress bar on the page; LoadError with the one-line reason
    when it cannot (the output folder is someone else's, the run is damaged, ...)."""
    module = ANALYSES[analysis][0]
    function = getattr(module, {"importance": "head_importance"}.get(analysis, analysis))
    bar = st.progress(0.0, text=f"Starting the {analysis} analysis…")
    started = time.perf_counter()

    def progress(what: str, done: int, total: int) -> None:
        elapsed = time.perf_counter() - started
        left = elapsed / done * (total - done) if done else None
        eta = f" · about {compute.duration(left)} left" if left is not None and done < total else ""
        bar.progress(min(done / max(total, 1), 1.0), text=f"{what}: {done} / {total}{eta}")

    source = loaded.source
    where = dict(run=settings.resolve(source.path)) if source.kind == "run" else dict(
        checkpoint=settings.resolve(source.path), corpus=settings.resolve(source.corpus), preset=source.preset)
    if analysis != "dynamics":
        where["split"] = split
    elif source.kind != "run":
        raise LoadError("Training dynamics need a run folder with kept steps; an official checkpoint has none.")
    try:
        summary = function(out=folder(source, analysis), progress=progress, **where, **settings_)
    except UserError as error:
        raise LoadError(str(error)) from None
    finally:
        bar.empty()
    _read.clear()
    return summary


@st.cache_data(max_entries=32, show_spinner=False)
def _explained(_loaded: Loaded, key: tuple, split: str, index: int):
    from workbench import loaders
    return relevance.explain_example(_loaded.model, loaders.item(_loaded, split, index))


def explained(loaded: Loaded, split: str, index: int):
    """relevance.explain_example of one example (one forward and backward, then its perturbation variants)."""
    return _explained(loaded, loaded.key, split, index)


def read_or_offer(loaded: Loaded, analysis: str, split: str, how_long: str, options=None) -> tuple[dict, dict]:
    """(summary, tables) of the page's output; without one, the page says so, shows the command (`how_long` it
    takes) and a "Compute now" button (with `options()` drawing its settings and returning their keywords), and
    stops. A note is shown when the output was made from another checkpoint."""
    from workbench import ui
    try:
        summary, tables, note = read(loaded, analysis)
    except LoadError as error:
        ui.show(error)
        st.markdown(f"Write it from a terminal ({how_long}), or here:")
        st.code(command(loaded.source, analysis, split), language="bash")
        chosen = options() if options else {}
        if st.button("Compute now", key=f"{analysis}_compute", help="Runs the analysis here with a progress bar"):
            try:
                compute_now(loaded, analysis, split, **chosen)
            except LoadError as failure:
                ui.show(failure)
            else:
                st.rerun()
        st.stop()
    if note:
        st.warning(note)
    return summary, tables
