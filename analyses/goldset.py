"""The gold set's labels, columns and files, in one place for the commands (analyses.gold, train_classifier) and
the workbench's Label heads page.

A gold folder holds maps.npz (the analyses.mapfile format) and labels.csv: index,label, then provenance columns
that are kept but not trained on. GOLD_KEY names a map of a model (run, split, example, layer, head), so that
labelling it again replaces its label instead of adding a second copy.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from analyses.classifier import DEFAULT_MODEL
from analyses.mapfile import MapFileError, MapRecord, read_maps, write_maps
from analyses.patterns import PATTERNS
from uniter_core.io import atomic_path, write_text

LABELS = PATTERNS + ("skip",)  # "skip": a map looked at and left out of training
GOLD_KEY = ["run", "split", "example", "layer", "head"]
PROVENANCE = ("index", *GOLD_KEY, "n_text", "n_regions")  # the columns of `gold sample`'s candidates.csv
GOLD_COLUMNS = ["index", "label", *GOLD_KEY, "n_text", "n_regions", "labeller", "note"]
PROJECT_GOLD = Path(__file__).resolve().parent / "gold"  # the committed gold set (train_classifier's default)
GOLD_CLASSIFIER = "head_classifier.joblib"  # a gold folder's own classifier, inside the folder


def provenance_row(index: int, run, split, example: int, layer: int, head: int, n_text: int, n_regions: int) -> dict:
    """Where a map comes from, as the PROVENANCE columns of a candidates.csv or labels.csv row."""
    values = (int(index), str(run), str(split), int(example), int(layer), int(head), int(n_text), int(n_regions))
    return dict(zip(PROVENANCE, values))


# ------------------------------------------------------------------------------------------ the commands' reader
def read_labels(path: Path, labels: tuple[str, ...] | None = LABELS) -> dict[int, dict]:
    """labels.csv rows by index (in file order); every label must be one of `labels` (None: any non-empty).

    MapFileError, naming the file and line, for a file that is not a UTF-8 CSV with the columns index,label, a
    missing or non-integer index, a repeated index or an empty label."""
    if path.is_dir():
        raise MapFileError(f"{path} is a folder, not a labels CSV")
    if not path.is_file():
        raise MapFileError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    data = path.read_bytes()
    if not data.strip():
        raise MapFileError(f"{path} is empty; a labels CSV needs the columns index,label")
    if b"\0" in data:
        line = data[:data.index(b"\0")].count(b"\n") + 1
        raise MapFileError(f"{path}: line {line} contains a NUL byte, so it is not a text CSV")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise MapFileError(f"{path}: line {line} is not UTF-8 text, so it is not a labels CSV") from None
    text = text.removeprefix("\ufeff")
    rows: dict[int, dict] = {}
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if not reader.fieldnames or not {"index", "label"} <= set(reader.fieldnames):
            raise MapFileError(f"{path}: needs the columns index,label (has {', '.join(reader.fieldnames or [])})")
        for row in reader:
            line, index, label = reader.line_num, row.get("index"), row.get("label")
            if index in (None, "") or label in (None, ""):
                raise MapFileError(f"{path}, line {line}: needs an index and a label")
            if not index.strip().isdigit() or not index.strip().isascii():
                raise MapFileError(f"{path}, line {line}: index {index!r} is not a non-negative integer")
            if int(index) in rows:
                raise MapFileError(f"{path}, line {line}: index {int(index)} is labelled twice")
            if labels is not None and label not in labels:
                raise MapFileError(f"{path}, line {line}: label {label!r} is not one of {', '.join(labels)}")
            rows[int(index)] = row
    except csv.Error as e:
        raise MapFileError(f"{path}, line {reader.line_num}: not a readable CSV ({e})") from None
    return rows


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


def next_free_index(gold: Path) -> int:
    """One past the largest map index used in the gold folder's maps.npz and labels.csv (0 when empty)."""
    used = [r.index for r in read_maps(gold / "maps.npz")] if (gold / "maps.npz").exists() else []
    if (gold / "labels.csv").exists():
        used += list(read_labels(gold / "labels.csv"))
    return max(used, default=-1) + 1


# ------------------------------------------------------------------------------------------ the workbench's table
def read_gold_labels(gold_dir: Path) -> pd.DataFrame:
    """labels.csv of a gold folder as a table (empty when there is none yet); MapFileError when unreadable.
    Laxer than read_labels (any label, hand-edited extra columns) so that the page can show and amend it."""
    labels_file = Path(gold_dir) / "labels.csv"
    if not labels_file.exists():
        return pd.DataFrame(columns=GOLD_COLUMNS)
    try:
        table = pd.read_csv(labels_file)
    except (ValueError, OSError, UnicodeDecodeError) as error:
        raise MapFileError(f"{labels_file}: not a readable CSV file ({error})") from None
    if not {"index", "label"} <= set(table.columns):
        raise MapFileError(f"{labels_file}: needs columns index,label (has {', '.join(map(str, table.columns))})")
    for column in [c for c in ("index", *GOLD_KEY[2:]) if c in table]:  # used as integers when labelling
        numbers = pd.to_numeric(table[column], errors="coerce")
        missing = numbers.isna() & (table[column].notna() | (column == "index"))  # key columns may be empty
        bad = missing | ((numbers % 1).fillna(0) != 0)
        if bad.any():
            raise MapFileError(f"{labels_file}: line {int(bad.to_numpy().argmax()) + 2}: column {column} must hold "
                               f"whole numbers")
    return table


def gold_key(run: str, split: str, example: int, layer: int, head: int) -> tuple:
    return (str(run), str(split), int(example), int(layer), int(head))


def labelled_keys(table: pd.DataFrame) -> set[tuple]:
    """The GOLD_KEY of every row of a read_gold_labels table that has one."""
    if not set(GOLD_KEY) <= set(table.columns):
        return set()
    rows = table.dropna(subset=GOLD_KEY)
    return {gold_key(*values) for values in rows[GOLD_KEY].itertuples(index=False)}


def find_gold_entry(table: pd.DataFrame, provenance: dict) -> int | None:
    """Row number of the read_gold_labels table that labels the map `provenance` names (its GOLD_KEY), or None."""
    key = gold_key(*(provenance[k] for k in GOLD_KEY))
    for row_number, values in zip(table.index, table.reindex(columns=GOLD_KEY).itertuples(index=False)):
        if not any(pd.isna(v) for v in values) and gold_key(*values) == key:
            return row_number
    return None


def add_gold_label(gold_dir: Path, attention: np.ndarray, n_text: int, n_regions: int, label: str,
                   provenance: dict, labeller: str = "workbench") -> int:
    """Store one labelled map in the gold set (maps.npz then labels.csv, each atomically); returns its index.
    A map labelled before (same run, split, example, layer, head) keeps its index and gets the new label."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r} (known: {', '.join(LABELS)})")
    gold_dir = Path(gold_dir)
    maps_file = gold_dir / "maps.npz"
    table = read_gold_labels(gold_dir)
    row_number = find_gold_entry(table, provenance)
    if row_number is not None:
        table.loc[row_number, "label"] = label
        write_text(gold_dir / "labels.csv", table.to_csv(index=False))
        return int(table.loc[row_number, "index"])
    records = read_maps(maps_file) if maps_file.exists() else []
    index = max([r.index for r in records] + [int(i) for i in table["index"]] + [-1]) + 1
    write_maps(maps_file, records + [MapRecord(index, np.asarray(attention, np.float32), n_text, n_regions)])
    row = {"label": label, "labeller": labeller, "note": "",
           **provenance_row(index, *(provenance[k] for k in GOLD_KEY), n_text, n_regions)}
    row = {column: row[column] for column in GOLD_COLUMNS}
    table = pd.concat([table, pd.DataFrame([row])], ignore_index=True) if len(table) else pd.DataFrame([row])
    write_text(gold_dir / "labels.csv", table.to_csv(index=False))
    return index


def remove_gold_label(gold_dir: Path, index: int, expected_provenance: dict, expected_label: str | None = None,
                      restore_label: str | None = None) -> None:
    """Take back one label that add_gold_label stored (the workbench's undo), only while entry `index` of
    labels.csv is still that label: the same map (`expected_provenance`, its GOLD_KEY) and, when given,
    `expected_label`. Anything else means the file changed meanwhile (another tab, a hand edit), and taking
    the entry back would lose someone's work: MapFileError naming labels.csv, and nothing is written.

    With `restore_label` (the label replaced an earlier one) the entry gets that label back and keeps its map;
    otherwise its row leaves labels.csv and map_<index> leaves maps.npz, each written atomically, labels first
    (so an interruption leaves at most an unlabelled map, which training ignores). A file left with nothing in
    it is removed, as before the first label: an .npz without maps is not a valid maps file."""
    gold_dir = Path(gold_dir)
    labels_file, maps_file = gold_dir / "labels.csv", gold_dir / "maps.npz"
    if restore_label is not None and restore_label not in LABELS:
        raise ValueError(f"unknown label {restore_label!r} (known: {', '.join(LABELS)})")
    table = read_gold_labels(gold_dir)
    rows = table.index[pd.to_numeric(table["index"], errors="coerce") == int(index)]
    if len(rows) != 1:
        raise MapFileError(f"{labels_file}: map {index} is " + ("no longer labelled" if not len(rows) else
                           f"labelled {len(rows)} times") + "; nothing was undone")
    row = table.loc[rows[0]]
    expected = gold_key(*(expected_provenance[k] for k in GOLD_KEY))
    found = row.reindex(GOLD_KEY)
    incomplete = any(pd.isna(v) for v in found)
    if incomplete or gold_key(*found) != expected:
        now = "without run, split, example, layer and head" if incomplete else _described(gold_key(*found))
        raise MapFileError(f"{labels_file}: map {index} is now {now}, not {_described(expected)}; nothing was "
                           f"undone")
    if expected_label is not None and str(row["label"]) != expected_label:
        raise MapFileError(f"{labels_file}: map {index} is labelled {row['label']} now, not {expected_label}; "
                           f"nothing was undone")
    if restore_label is not None:
        table.loc[rows[0], "label"] = restore_label
        write_text(labels_file, table.to_csv(index=False))
        return
    records = read_maps(maps_file) if maps_file.exists() else []  # read (and checked) before anything is written
    kept = [r for r in records if r.index != int(index)]
    table = table.drop(index=rows[0])
    if len(table):
        write_text(labels_file, table.to_csv(index=False))
    else:
        os.unlink(labels_file)
    if len(kept) == len(records):
        return
    if kept:
        write_maps(maps_file, kept)
    else:
        os.unlink(maps_file)


def _described(key: tuple) -> str:
    return "{} {} example {} layer {} head {}".format(*key)


def gold_classifier_file(gold_dir: Path) -> Path:
    """The classifier trained on a gold folder: the project's default one for the committed gold set, which
    is what that model is trained on; for any other folder head_classifier.joblib inside it, so that training
    on another gold set never replaces the default model."""
    gold_dir = Path(gold_dir)
    if gold_dir.resolve() == PROJECT_GOLD.resolve():
        return DEFAULT_MODEL
    return gold_dir / GOLD_CLASSIFIER


# ------------------------------------------------------------------------------------------ two annotators
def annotator_agreement(first: dict[int, str], second: dict[int, str]) -> dict:
    """How far two annotators who labelled the same maps apart agree: the share of maps with the same label and
    Cohen's kappa (that share corrected for the agreement their label frequencies give by chance)."""
    from sklearn.metrics import cohen_kappa_score  # only this command needs it

    indices = sorted(first)
    a, b = [first[i] for i in indices], [second[i] for i in indices]
    same = sum(x == y for x, y in zip(a, b))
    kappa = float(cohen_kappa_score(a, b)) if len(set(a) | set(b)) > 1 else 1.0
    return {"maps": len(indices), "agreed": same, "agreement": same / len(indices), "kappa": kappa,
            "disagreements": [(i, first[i], second[i]) for i in indices if first[i] != second[i]]}


def merged_labels(first: dict[int, str], second: dict[int, str], third: dict[int, str] | None) -> list[dict]:
    """One label per map: the two annotators' label where they agree; where they do not, the label that a third
    annotator shares with one of them, or `skip` (kept, not trained on) when there is no majority or no third."""
    rows = []
    for index in sorted(first):
        a, b = first[index], second[index]
        if a == b:
            rows.append({"index": index, "label": a, "labeller": "two annotators, agreed", "note": ""})
            continue
        c = third.get(index) if third else None
        label = c if c in (a, b) else "skip"
        how = "majority of three" if c in (a, b) else ("no majority of three" if c else "two annotators, disagreed")
        rows.append({"index": index, "label": label, "labeller": how,
                     "note": f"annotators: {a} / {b}" + (f" / {c}" if c else "")})
    return rows
