"""The output folder of a behaviour analysis (head importance, grounding, relevance, dynamics): its tables as
CSV, Parquet and JSON, its figures as PNG, PDF and SVG, and `summary.json`, written last, with the source, the
settings, the headline numbers and every table's columns with their meaning.

The folder is built as OUT.partial and moved into place (uniter_core.outputs.OutputFolder), so OUT holds a
whole result or the earlier one; a folder with files the command did not write is refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from uniter_core.errors import UserError
from uniter_core.io import atomic_path, read_json, write_json
from uniter_core.outputs import OutputFolder

SUMMARY = "summary.json"
TABLE_FORMATS = ("csv", "parquet", "json")


class Progress:
    """Progress of a long analysis: tqdm bars on the terminal (`progress=True`), a callback
    `progress(what, done, total)` (the workbench's progress bar), or nothing (`False`)."""

    def __init__(self, progress=True):
        self.progress, self.bars = progress, {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if callable(self.progress):
            self.progress(what, done, total)
        elif self.progress:
            from tqdm.auto import tqdm
            bar = self.bars.get(what)
            if bar is None:
                bar = self.bars[what] = tqdm(total=total, desc=what)
            bar.n = done
            bar.refresh()
            if done >= total:
                bar.close()


class ResultsError(UserError):
    """Results that must not replace an earlier output (an empty table, NaN where a number belongs)."""


def write_table(table: pd.DataFrame, out: Path, name: str) -> None:
    """NAME.csv, NAME.parquet and NAME.json, each atomically."""
    with atomic_path(out / f"{name}.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out / f"{name}.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(out / f"{name}.json") as tmp:
        table.to_json(tmp, orient="records", indent=1)


def check_tables(tables: dict[str, pd.DataFrame], out: Path, may_be_nan: Callable[[str, str], bool] = None) -> None:
    """Every table non-empty and every float column finite (`may_be_nan(table, column)`: columns where NaN
    means "not defined", e.g. a chance level of a head with no grounded word); otherwise nothing is written."""
    for name, table in tables.items():
        if table.empty:
            raise ResultsError(f"{out} not written: the {name} table is empty")
        numeric = table.select_dtypes("number")
        for column in numeric.columns:
            values = numeric[column].to_numpy(np.float64)
            allowed = may_be_nan is not None and may_be_nan(name, column)
            if np.isinf(values).any() or (np.isnan(values).any() and not allowed):
                raise ResultsError(f"{out} not written: column {column} of the {name} table holds NaN or "
                                   f"infinite values")


def results_folder(out: Path, command: str, entries: tuple[str, ...], force: bool = True) -> OutputFolder:
    """The OutputFolder of an analysis: `entries` are the top-level names it writes besides summary.json."""
    own = set(entries) | {SUMMARY, "figures"}
    return OutputFolder(out, command, SUMMARY, force=force, own_entries=lambda name: name in own)


def table_entries(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{n}.{fmt}" for n in names for fmt in TABLE_FORMATS)


def write_results(folder: OutputFolder, tables: dict[str, pd.DataFrame], columns: dict[str, dict[str, str]],
                  summary: dict, draw: Callable[[Path], None], may_be_nan=None, started: bool = False) -> Path:
    """Check the tables, then write them, the figures (`draw(figures_folder)`) and summary.json (with the
    columns' meanings: {table: {column: description}}) into OUT.partial and move it into place. `started`: the
    caller has opened OUT.partial already (a resumable job that keeps its pieces there)."""
    check_tables(tables, folder.out, may_be_nan)
    missing = [(t, c) for t, table in tables.items() for c in table.columns if c not in columns.get(t, {})]
    if missing:
        raise AssertionError(f"undocumented column {missing[0][1]} of table {missing[0][0]}")
    if not started:
        folder.start({"summary": summary.get("settings", {}), "source": summary.get("source", {})})
    with folder.building() as work:
        for name, table in tables.items():
            write_table(table, work, name)
        (work / "figures").mkdir(exist_ok=True)
        draw(work / "figures")
        docs = {name: {"rows": int(len(table)),
                       "columns": {c: {"dtype": str(table[c].dtype), "description": columns[name][c]}
                                   for c in table.columns}} for name, table in tables.items()}
        write_json(work / SUMMARY, {**summary, "tables": docs})
        folder.finish()
    return folder.out


def read_results(folder: Path, names: tuple[str, ...]) -> tuple[dict, dict[str, pd.DataFrame]]:
    """(summary, {name: table}) of a finished output folder; UserError naming what is missing."""
    folder = Path(folder)
    summary_file = folder / SUMMARY
    if not summary_file.exists():
        raise UserError(f"{folder} is not a finished analysis output (no {SUMMARY})")
    summary = read_json(summary_file, "analysis summary")
    tables = {}
    for name in names:
        path = folder / f"{name}.csv"
        if not path.exists():
            raise UserError(f"{folder}: {path.name} is missing")
        tables[name] = pd.read_csv(path)
    return summary, tables
