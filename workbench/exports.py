"""The export_stats folder a page may read instead of computing: which folder, the command that makes it, and
whether it was made from exactly what the app shows (find_export), so that the Overview reads a split's per-map
rows in a fraction of a second rather than classifying every map again.
"""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import streamlit as st

from analyses.classifier import DEFAULT_MODEL, metadata_path
from analyses.export_stats import ID_COLUMNS
from analyses.patterns import FEATURE_VERSION, HEAD_STATS, PATTERNS
from workbench import compute, settings
from workbench.loaders import LoadError, Loaded, Source, classifier_file, file_time, get_dataset, stats_table

# The per-map columns a page aggregates: an export lacking any of them cannot stand in for computing.
EXPORT_COLUMNS = tuple(ID_COLUMNS) + ("pattern",) + tuple(f"p_{c}" for c in PATTERNS) + tuple(HEAD_STATS)


@dataclass(frozen=True, eq=False)
class Export:
    """An export_stats folder made from the model, split and classifier the app shows: its per-map rows can
    stand in for classifying those examples again (a split takes minutes, reading them a fraction of a second)."""

    folder: Path
    source: dict  # columns.json "source"
    table: pd.DataFrame  # examples.parquet (or .csv): one row per (example, layer, head)
    examples: frozenset  # the example indices it holds

    def rows(self, indices) -> pd.DataFrame:
        """The per-map rows of `indices` (examples it holds), typed as example_table() types them."""
        rows = self.table[self.table["example"].isin(list(indices))]
        return rows.astype({"text_id": str, "image_id": str, "pattern": str})

    @property
    def label(self) -> str:
        """What the export was made with, for a caption: checkpoint and classifier."""
        checkpoint = self.source.get("checkpoint", "?")
        checkpoint = Path(checkpoint).name if "run" not in self.source else checkpoint
        return f"checkpoint {checkpoint}, classifier {classifier_file().name}"


def shown(path: str | Path) -> str:
    """A path as a page writes it: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(settings.REPO))
    except (ValueError, OSError):
        return str(path)


def export_folder(source: Source, typed: str = "", split: str = "test") -> Path:
    """The statistics folder of a source's split, as the pages pick it: the folder typed on the Statistics page,
    else under settings.stats_root() stats/<run name> for the test split (what `make demo` exports) and
    stats/<run name>-<split> for any other, so that exporting one split never replaces another's export."""
    if typed.strip():
        return settings.resolve(typed.strip())
    return settings.stats_root() / (source.name if split == "test" else f"{source.name}-{split}")


def export_command(source: Source, split: str, out: Path) -> str:
    """The export_stats command line that exports `split` of `source` into `out` with the classifier the app
    uses, so that the export matches what the pages show."""
    where = (["--run", source.path] if source.kind == "run" else
             ["--checkpoint", source.path, "--corpus", source.corpus, "--preset", source.preset])
    model = settings.classifier_path()
    model = ["--model", shown(model)] if model else []
    return shlex.join(["python", "-m", "analyses.export_stats", *where, "--split", split, *model,
                       "--out", f"{shown(out)}/"])


def _same_path(recorded, path: str | Path) -> bool:
    """Whether a path recorded in an export (as it was typed) names the same file or folder as `path`."""
    if not isinstance(recorded, str) or not recorded.strip():
        return False
    a, b = settings.resolve(recorded), settings.resolve(path)
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them is gone: compare the names
        return a.resolve() == b.resolve()


@st.cache_data(max_entries=8, show_spinner=False)
def _sidecar(path: str, stamp: float):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _json_file(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _source_problem(recorded: dict, loaded: Loaded, split: str) -> str | None:
    """Why the model, corpus or split of an export are not those of the page; None when they are."""
    source = loaded.source
    if source.kind == "run":
        if "run" not in recorded:
            return f"the export is of the checkpoint `{recorded.get('checkpoint')}`, the app shows run `{source.path}`"
        if not _same_path(recorded["run"], source.path):
            return f"the export is of run `{recorded['run']}`, the app shows `{source.path}`"
        if recorded.get("checkpoint") != loaded.checkpoint:
            return f"the export is of checkpoint {recorded.get('checkpoint')}, the app shows {loaded.checkpoint}"
    else:
        if "run" in recorded:
            return f"the export is of run `{recorded['run']}`, the app shows the checkpoint `{source.path}`"
        if not _same_path(recorded.get("checkpoint"), source.path):
            return f"the export is of checkpoint `{recorded.get('checkpoint')}`, the app shows `{source.path}`"
        if recorded.get("preset") != source.preset:
            return f"the export read the checkpoint as {recorded.get('preset')}, the app as {source.preset}"
    if not _same_path(recorded.get("corpus"), loaded.corpus):
        return f"the export read the corpus `{recorded.get('corpus')}`, the app reads `{shown(loaded.corpus)}`"
    if recorded.get("split") != split:
        return f"the export is of the {recorded.get('split')!r} split, the page shows {split!r}"
    return None


def _classifier_problem(recorded: dict, exported_at: float) -> str | None:
    """Why the export's classifier is not the one the app uses; None when it is. export_stats records the
    classifier as typed ("default" for DEFAULT_MODEL) and the hash of its training data; a classifier retrained
    at the same path on the same data (other trees or features) is told by its metadata's creation time."""
    used, name = classifier_file(), recorded.get("classifier")
    if not _same_path(str(DEFAULT_MODEL) if name == "default" else name, used):
        return f"the export used the classifier `{name}`, the app uses `{shown(used)}`"
    meta_file = metadata_path(used)
    metadata = _json_file(meta_file)
    if not isinstance(metadata, dict):
        return f"the metadata of the app's classifier, `{shown(meta_file)}`, cannot be read"
    if metadata.get("data_hash") != recorded.get("classifier_data_hash"):
        return f"`{shown(used)}` was retrained on other data since the export"
    try:
        created = datetime.fromisoformat(str(metadata.get("created"))).timestamp()
    except ValueError:
        created = None
    if created is not None and created > exported_at:
        return f"`{shown(used)}` was retrained after the export"
    return None


def find_export(loaded: Loaded, split: str, folder: Path) -> tuple[Export | None, str]:
    """(the export in `folder` when it was made from what the page shows, else None; why it was not used, "" when
    the folder holds no export). Made from what the page shows: same run folder and checkpoint (or official
    checkpoint and preset), corpus, split, classifier, and the split still holds the captions it exported."""
    sidecar = folder / "columns.json"
    if not sidecar.is_file():
        return None, ""
    stamp = file_time(sidecar)
    try:
        info = _sidecar(str(sidecar), stamp)
    except (OSError, ValueError) as error:
        return None, f"`{shown(sidecar)}` cannot be read ({type(error).__name__}: {error})"
    recorded = info.get("source") if isinstance(info, dict) else None
    if not isinstance(recorded, dict):
        return None, f"`{shown(sidecar)}` does not say what the export was made from (no \"source\")"
    if info.get("feature_version") != FEATURE_VERSION:
        return None, (f"the export was made with feature version {info.get('feature_version')}, this code computes "
                      f"version {FEATURE_VERSION}")
    problem = _source_problem(recorded, loaded, split) or _classifier_problem(recorded, stamp)
    if problem:
        return None, problem
    try:
        table = stats_table(folder, "examples", EXPORT_COLUMNS)
        text_ids = [str(t.get("text_id")) for t in get_dataset(loaded, split).texts]
    except LoadError as error:
        return None, str(error).rstrip(".")
    examples, problem = compute.export_coverage(table, text_ids, loaded.layers * loaded.heads)
    if problem:
        return None, problem
    return Export(folder, recorded, table, examples), ""
