"""Cached loading of everything the pages show, with every failure turned into one readable sentence.

Heavy objects (model, dataset, classifier, per-example attention) live in st.cache_resource, tables in
st.cache_data. Cache keys carry a "stamp" (checkpoint name, file times) so a newer checkpoint or a retrained
classifier is picked up without restarting the app. Loading errors become LoadError, which pages show with
st.error / st.info (see `need_*`), never as a traceback.
"""
from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from analyses.attention import iter_example_attention
from analyses.classifier import DEFAULT_MODEL
from analyses.train_classifier import load_classifier
from uniter_core.config import PRESETS as UNITER_PRESETS
from uniter_core.data.dataset import ImageTextDataset
from uniter_core.errors import UserError
from uniter_core.runs import load_official_checkpoint, load_run
from uniter_core.train_state import CheckpointManager
from workbench import compute, settings

PRESETS = tuple(UNITER_PRESETS)  # the model presets an official checkpoint can be read as


class LoadError(Exception):
    """Something the page needs cannot be loaded; `missing` means absent (an info) rather than broken."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class Source:
    """Where the model comes from: a run folder of uniter_core.train, or an official checkpoint + corpus."""

    kind: str  # "run" | "official"
    path: str
    corpus: str = ""
    preset: str = "uniter-base"

    @property
    def name(self) -> str:
        return Path(self.path).stem if self.kind == "official" else Path(self.path).name

    def stamp(self) -> str:
        """Changes when the weights behind the source change (new checkpoint, replaced file)."""
        path = settings.resolve(self.path)
        if self.kind == "run":
            latest = CheckpointManager(path).latest()
            return f"{latest.name}@{_mtime(latest / 'model')}" if latest else "none"
        return f"{_mtime(path)}:{_mtime(settings.resolve(self.corpus) / 'img_db' / 'manifest.json')}"


@dataclass
class Loaded:
    source: Source
    model: object  # UniterForPretraining, eval mode
    corpus: Path
    max_text_len: int
    max_regions: int
    checkpoint: str = ""  # the run's checkpoint in use (run folders only)
    skipped: tuple[str, ...] = ()  # damaged newer checkpoints passed over, with the reason

    @property
    def key(self) -> tuple:
        """Hashable identity for the caches below (the model itself is not hashed)."""
        return (self.source, self.source.stamp())

    @property
    def layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def heads(self) -> int:
        return self.model.config.num_attention_heads


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


file_time = _mtime  # for the pages: a cache stamp of a file that may vanish meanwhile


# ------------------------------------------------------------------------------------------ model
def missing_run_message(path: str) -> str:
    if Path(path) == Path(settings.DEMO_RUN):
        return (f"No run at `{path}` yet. Make the demo run with `make demo` (pre-trains and evaluates "
                f"runs/pretrain-mini, about 16 minutes on 2 CPU cores), or pick another run folder in the sidebar.")
    return f"No run at `{path}`: pick a folder written by `python -m uniter_core.train --out {path}`."


def run_folder(path: str) -> Path:
    """The resolved run folder; LoadError when it does not exist (an info) or is a file (an error)."""
    resolved = settings.resolve(path)
    if not resolved.exists():
        raise LoadError(missing_run_message(path), missing=True)
    if not resolved.is_dir():
        raise LoadError(f"`{path}` is a file: pick a run folder written by `python -m uniter_core.train`.")
    return resolved


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def _load(source: Source, stamp: str) -> Loaded:
    if source.kind == "run":
        run = load_run(settings.resolve(source.path))
        return Loaded(source, run.model.eval(), run.corpus, run.max_text_len, run.max_regions, run.checkpoint.name,
                      run.skipped)
    run = load_official_checkpoint(settings.resolve(source.path), settings.resolve(source.corpus), source.preset)
    return Loaded(source, run.model.eval(), run.corpus, run.max_text_len, run.max_regions)


def load(source: Source) -> Loaded:
    # An empty path must not resolve to the working directory (Path("") is "."): say what to enter instead.
    if not source.path.strip():
        raise LoadError("No checkpoint file chosen: type the path of an official UNITER checkpoint (.pt) in the "
                        "sidebar." if source.kind == "official" else
                        "No run folder chosen: type the path of a folder written by `python -m uniter_core.train` "
                        "in the sidebar.", missing=True)
    path = run_folder(source.path) if source.kind == "run" else settings.resolve(source.path)
    if source.kind == "official" and path.is_dir():
        raise LoadError(f"`{source.path}` is a folder: the checkpoint must be a .pt file, e.g. uniter-base.pt.")
    if source.kind == "official" and not path.is_file():
        raise LoadError(f"No checkpoint file at `{source.path}`.", missing=True)
    if source.kind == "official" and not source.corpus.strip():
        raise LoadError("No corpus folder chosen: type the folder of the feature store and captions that fit the "
                        "checkpoint in the sidebar (e.g. one converted with `python -m uniter_core.data.official_db`).",
                        missing=True)
    try:
        return _load(source, source.stamp())
    except FileNotFoundError as error:
        raise LoadError(str(error).replace(str(path), source.path)) from None
    except UserError as error:  # the project's own messages name the file and the problem already
        raise LoadError(f"`{source.path}` cannot be loaded: {error}") from None
    except Exception as error:  # safetensors, torch and JSON errors all mean the same thing here
        raise LoadError(f"`{source.path}` cannot be loaded: {type(error).__name__}: {error}") from None


@st.cache_resource(max_entries=4)
def dataset(corpus: str, split: str, max_text_len: int, max_regions: int) -> ImageTextDataset:
    return ImageTextDataset(corpus, split, max_text_len, max_regions)


def get_dataset(loaded: Loaded, split: str) -> ImageTextDataset:
    try:
        return dataset(str(loaded.corpus), split, loaded.max_text_len, loaded.max_regions)
    except Exception as error:
        raise LoadError(f"split {split!r} of `{loaded.corpus}` cannot be read: {error}") from None


def splits(corpus: Path) -> list[str]:
    """The corpus' txt_db/*.jsonl splits, preferred ones first; none when the folder cannot be listed."""
    try:
        found = sorted(p.stem for p in (Path(corpus) / "txt_db").glob("*.jsonl"))
    except OSError:
        return []
    preferred = [s for s in settings.SPLITS_PREFERRED if s in found]
    return preferred + [s for s in found if s not in preferred]


# ------------------------------------------------------------------------------------------ attention
@st.cache_resource(max_entries=32, show_spinner=False)  # a uniter-base example is ~15 MB of maps
def _example(_loaded: Loaded, key: tuple, split: str, index: int):
    return next(iter_example_attention(_loaded.model, _loaded.corpus, split, indices=[index], progress=False,
                                       max_text_len=_loaded.max_text_len, max_regions=_loaded.max_regions))


def example(loaded: Loaded, split: str, index: int):
    """ExampleAttention (maps [layers, heads, n, n] + layout) of one example, computed once."""
    return _example(loaded, loaded.key, split, int(index))


def example_with_regions(loaded: Loaded, split: str, index: int):
    """example(), for the pages about regions: LoadError (an info) when the example has none."""
    found = example(loaded, split, index)
    if not found.layout.n_regions:
        raise LoadError(f"Example {index} ({found.layout.image_id}) has no image regions: pick another example in "
                        f"the sidebar.", missing=True)
    return found


def item(loaded: Loaded, split: str, index: int) -> dict:
    """The dataset item (features, boxes, ground-truth alignment) of one example."""
    return get_dataset(loaded, split)[int(index)]


@st.cache_resource(max_entries=2, show_spinner="Loading the head-pattern classifier…")
def _classifier(path: str | None, stamp: float):
    return load_classifier(path)


def classifier_file() -> Path:
    return settings.classifier_path() or DEFAULT_MODEL


def classifier():
    path = settings.classifier_path()
    try:
        return _classifier(str(path) if path else None, _mtime(classifier_file()))
    except Exception as error:
        raise LoadError(f"The head-pattern classifier cannot be loaded: {error}") from None


def classifier_key() -> tuple:
    return (str(classifier_file()), _mtime(classifier_file()))


@st.cache_resource(show_spinner=False)
def _classified() -> dict:
    """What _example_table has computed in this process: {cache key: seconds it took}, and per model the
    (seconds, examples) it took, so that a page can tell beforehand how many examples still need the model and
    about how long they will take (st.cache_data cannot be asked whether it holds a value)."""
    return {"done": {}, "timing": {}}


@st.cache_data(max_entries=512, show_spinner=False)
def _example_table(_loaded: Loaded, key: tuple, split: str, index: int, clf_key: tuple) -> pd.DataFrame:
    patterns = classifier()  # loaded first: its loading time is not the example's
    start = time.perf_counter()
    table = compute.example_table(example(_loaded, split, index), patterns)
    seconds = time.perf_counter() - start
    record = _classified()
    record["done"][(key, split, index, clf_key)] = seconds
    total, count = record["timing"].get(key, (0.0, 0))
    record["timing"][key] = (total + seconds, count + 1)
    return table


def example_table(loaded: Loaded, split: str, index: int) -> pd.DataFrame:
    """Predicted pattern, probabilities and head statistics of every (layer, head) of one example."""
    return _example_table(loaded, loaded.key, split, int(index), classifier_key())


def example_table_cached(loaded: Loaded, split: str, index: int) -> bool:
    """Whether example_table() of this example has been computed in this process (it is then instant, unless
    the cache dropped it since: a guess, for estimates only)."""
    return (loaded.key, split, int(index), classifier_key()) in _classified()["done"]


def example_seconds(loaded: Loaded) -> float | None:
    """Mean seconds example_table() took per example of this model in this process; None before the first."""
    total, count = _classified()["timing"].get(loaded.key, (0.0, 0))
    return total / count if count else None


@st.cache_data(max_entries=64, show_spinner="Solving the transport problem…")
def _transport(_loaded: Loaded, key: tuple, split: str, index: int, solver: str) -> dict:
    txt, img = compute.final_states(_loaded.model, item(_loaded, split, index))
    config = _loaded.model.config
    return compute.transport_plan(txt, img, compute.SOLVERS[solver], config.ot_beta, config.ot_iteration,
                                  config.ot_k)


def transport(loaded: Loaded, split: str, index: int, solver: str) -> dict:
    return _transport(loaded, loaded.key, split, int(index), solver)


# ------------------------------------------------------------------------------------------ files
@st.cache_data(max_entries=64, show_spinner=False)
def _image(path: str, stamp: float) -> tuple[str, int, int]:
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    mime = "image/png" if path.lower().endswith(".png") else "image/jpeg"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"data:{mime};base64,{data}", width, height


def image(loaded: Loaded, split: str, image_id: str) -> tuple[str, int, int] | None:
    """(data URI, width, height) of an example's picture, or None when the corpus holds no image file;
    LoadError naming the file when it exists but cannot be read."""
    store = get_dataset(loaded, split).store
    meta = store.meta(image_id) if image_id in store else {}
    names = [meta["file"]] if meta.get("file") else []
    names += [f"images/{image_id}{ext}" for ext in (".jpg", ".jpeg", ".png")]
    for name in names:
        path = loaded.corpus / name
        if path.is_file():
            try:
                return _image(str(path), _mtime(path))
            except Exception as error:  # noqa: BLE001 - PIL raises many types for a damaged picture
                raise LoadError(f"`{path}` cannot be read as an image ({type(error).__name__}: {error})") from None
    return None


@st.cache_data(max_entries=32, show_spinner=False)
def _table(path: str, stamp: float) -> pd.DataFrame:
    return pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)


def stats_table(folder: Path, name: str, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """An export_stats table (Parquet, else CSV); LoadError naming the file when missing, unreadable or
    without the `required` columns."""
    for path in (folder / f"{name}.parquet", folder / f"{name}.csv"):
        if path.exists():
            try:
                table = _table(str(path), _mtime(path))
            except Exception as error:
                raise LoadError(f"`{path}` cannot be read ({type(error).__name__}: {error}); export the "
                                f"statistics again.") from None
            lacking = [c for c in required if c not in table.columns]
            if lacking:
                has = ", ".join(map(str, table.columns[:8])) + ("…" if len(table.columns) > 8 else "")
                raise LoadError(f"`{path}` has no {', '.join(lacking)} column (it has: {has or 'none'}); export "
                                f"the statistics again.")
            return table
    raise LoadError(f"`{folder}` holds no {name} table.", missing=True)


@st.cache_data(max_entries=8, show_spinner=False)
def _metrics(path: str, stamp: float, size: int):
    return compute.read_metrics(Path(path))


def metrics(run_dir: Path):
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise LoadError(f"`{path}` does not exist: the run has not logged any step yet.", missing=True)
    try:
        return _metrics(str(path), _mtime(path), path.stat().st_size)
    except Exception as error:
        raise LoadError(f"`{path}` cannot be read: {error}") from None
