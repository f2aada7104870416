"""Making the hand-labelled gold set: sample real maps from a trained run, render them as contact sheets, label.

    python -m analyses.gold sample --run runs/pretrain-mini --split val --n 240 --out analyses/gold
    python -m analyses.gold sheets --maps analyses/gold/candidates.npz --out /tmp/sheets   # look at them
    # ... write analyses/gold/labels.csv (index,label[,provenance]) by eye, see analyses/gold/GUIDE.md ...
    python -m analyses.gold agree --labels a.csv b.csv [c.csv] --out merged.csv   # two annotators, apart
    python -m analyses.gold finish --gold analyses/gold        # keep the labelled maps, render the guide

`sample` streams the split through the model, and picks maps spread evenly over the classes that the current
classifier predicts and over layers, so that rare patterns are shown at all; the suggestion is used only to
choose maps and is never written down, so the labels are made by looking, not by the rules or the classifier.
`sheets` draws numbered maps with the text/region boundary marked. `finish` drops unlabelled candidates into
`maps.npz` and renders one example picture per class for the labelling guide. `agree` compares two annotators
who labelled the same sheets apart (share agreed, Cohen's kappa) and, with a third annotator's labels of the maps
they disagree on, writes one label per map by majority (`skip` where there is none).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np

from analyses.errors import as_input_error
from analyses.goldset import (LABELS, PROVENANCE, annotator_agreement, merged_labels, next_free_index, provenance_row,
                              read_labels, write_csv)
from analyses.mapfile import MapFileError, MapRecord, read_maps, write_maps
from analyses.patterns import PATTERNS
from uniter_core.cli import exit_with, run_command
from uniter_core.io import atomic_path
from uniter_core.outputs import OutputError, check_output_file, check_writable_location, first_line, png_text

MERGED_HEADER = "index,label,labeller,note"  # `agree --out`: the first line that marks its own files
PNG_SOURCE = "analyses.gold"  # the PNG text chunk Source of every picture this module draws: marks its own files


def sample_maps(run: Path, split: str, n: int, max_examples: int, seed: int = 0, model_path: Path | None = None,
                progress: bool = True, first_index: int = 0) -> tuple[list, list[dict]]:
    """(records, provenance rows) of n maps from the first max_examples examples of the split, balanced over the
    classifier's suggested classes and the layers (round robin), at most one map per (example, layer, head)."""
    from analyses.attention import iter_example_attention
    from uniter_core.runs import load_run
    from analyses.patterns import map_features
    from analyses.train_classifier import load_classifier

    loaded = load_run(run)
    model, corpus = loaded.model, loaded.corpus
    classifier = load_classifier(model_path)
    pools: dict[tuple[str, int], list] = {}
    for ex in iter_example_attention(model, corpus, split, max_examples=max_examples, progress=progress):
        layers, heads, n_pos, _ = ex.maps.shape
        flat = ex.maps.reshape(layers * heads, n_pos, n_pos)
        suggested = classifier.predict(map_features(flat, ex.layout.n_text, ex.layout.n_regions))
        for k, label in enumerate(suggested):
            pools.setdefault((label, k // heads), []).append((ex.layout, k // heads, k % heads, flat[k].copy()))
    rng = np.random.default_rng(seed)
    for pool in pools.values():
        rng.shuffle(pool)
    order = sorted(pools, key=lambda key: (PATTERNS.index(key[0]), key[1]))
    records, rows = [], []
    while len(records) < n and any(pools[key] for key in order):
        for key in order:
            if pools[key] and len(records) < n:
                layout, layer, head, m = pools[key].pop()
                i = len(records)
                records.append(MapRecord(i, m, layout.n_text, layout.n_regions))
                rows.append(provenance_row(i, run, split, layout.example, layer, head, layout.n_text,
                                           layout.n_regions))
    # present them shuffled, so that neighbours on a sheet do not share a suggested class; numbered after
    # the maps the gold folder already holds (e.g. labelled in the workbench), so indices never collide
    permutation = rng.permutation(len(records))
    records = [MapRecord(first_index + new, records[old].map, records[old].n_text, records[old].n_regions)
               for new, old in enumerate(permutation)]
    rows = [{**rows[old], "index": first_index + new} for new, old in enumerate(permutation)]
    return records, rows


def draw_map(ax, record: MapRecord, title: str) -> None:
    """One map: colour scaled to its 99th percentile so that weak structure shows, boundary lines after [SEP]."""
    m = record.map
    vmax = max(float(np.quantile(m, 0.99)), 1e-6)
    ax.imshow(m, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
    edge = record.n_text - 0.5
    for line in (ax.axhline, ax.axvline):
        line(edge, color="red", linewidth=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def render_sheets(records: list[MapRecord], out: Path, titles: dict[int, str] | None = None,
                  per_sheet: int = 20, columns: int = 5, name: Callable[[int], str] | None = None) -> list[Path]:
    """PNG contact sheets of the maps (rows = queries, columns = keys), numbered by map index; sheet k is
    `name(k)` in `out` (default sheet_<kk>.png)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(records), per_sheet):
        chunk = records[start:start + per_sheet]
        rows = -(-len(chunk) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.1 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, record in zip(axes.flat, chunk):
            ax.axis("on")
            label = (titles or {}).get(record.index, "")
            draw_map(ax, record, f"#{record.index} t{record.n_text} r{record.n_regions} {label}".strip())
        fig.tight_layout()
        path = out / (name(start // per_sheet) if name else sheet_name(start // per_sheet))
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=72, metadata={"Source": PNG_SOURCE})
        plt.close(fig)
        paths.append(path)
    return paths


def sheet_name(k: int) -> str:
    return f"sheet_{k:02d}.png"


def _is_candidates_csv(path: Path) -> bool:
    """An earlier candidates.csv of `sample`: its header is the PROVENANCE columns."""
    return first_line(path).strip().removeprefix("\ufeff") == ",".join(PROVENANCE)


def _is_candidates_npz(path: Path) -> bool:
    """An earlier candidates.npz of `sample`: a valid maps file."""
    return bool(read_maps(path))


def _is_own_picture(path: Path) -> bool:
    """A sheet or example picture this module drew (its PNG Source text is PNG_SOURCE)."""
    return png_text(path).get("Source") == PNG_SOURCE


def _is_example_picture(path: Path) -> bool:
    """An example picture of `finish` (examples/<pattern>.png): drawn by this module, or by matplotlib before
    the pictures carried PNG_SOURCE (the committed guide pictures)."""
    return _is_own_picture(path) or png_text(path).get("Software", "").startswith("Matplotlib")


def write_sheets(records: list[MapRecord], out: Path, titles: dict[int, str] | None = None,
                 per_sheet: int = 20) -> list[Path]:
    """The `sheets` command's output: sheet_<kk>.png in `out`, replacing only sheets that this module drew
    (PNG_SOURCE); any other file of such a name is refused before anything is written."""
    check_writable_location(out)
    for k in range(-(-len(records) // per_sheet)):
        path = out / sheet_name(k)
        if path.is_dir() or (path.is_symlink() and not path.exists()):
            raise OutputError(f"--out {path} is a {'folder' if path.is_dir() else 'dangling link'}; move it away "
                              f"first")
        check_output_file(path, "gold sheets", _is_own_picture)
    return render_sheets(records, out, titles, per_sheet=per_sheet)


@as_input_error()
def finish(gold: Path) -> dict[str, int]:
    """maps.npz = every labelled map, from candidates.npz or already in maps.npz (maps labelled in the
    workbench go straight there); examples/<class>.png = a few maps of each class for the guide. Every output
    location is checked before anything is written."""
    check_output_file(gold / "maps.npz", "gold finish", lambda f: True, what="--gold")  # a folder, a bad path
    examples = gold / "examples"
    check_writable_location(examples, what="--gold's")
    candidates = {}
    for name in ("maps.npz", "candidates.npz"):
        if (gold / name).exists():
            candidates.update({r.index: r for r in read_maps(gold / name)})
    labels = read_labels(gold / "labels.csv")
    missing = sorted(set(labels) - set(candidates))
    if missing:
        raise MapFileError(f"{gold / 'labels.csv'}: index {missing[0]} is in neither candidates.npz nor "
                           f"maps.npz")
    records = [candidates[i] for i in sorted(labels)]
    chosen = {label: [candidates[i] for i in sorted(labels) if labels[i]["label"] == label][:5]
              for label in PATTERNS}
    chosen = {label: maps for label, maps in chosen.items() if maps}
    for label in chosen:
        check_output_file(examples / f"{label}.png", "gold finish", _is_example_picture, what="--gold's")
    write_maps(gold / "maps.npz", records, dtype=np.float16)
    counts = {label: 0 for label in LABELS}
    for row in labels.values():
        counts[row["label"]] += 1
    for label, maps in chosen.items():
        render_sheets(maps, examples, {r.index: label for r in maps}, per_sheet=5,
                      name=lambda k, label=label: f"{label}.png")
    return counts


def sample_candidates(*, run: Path, out: Path, split: str = "val", n: int = 240, max_examples: int = 60,
                      seed: int = 0, model: Path | None = None) -> int:
    """`sample`: sample_maps into out/candidates.npz and out/candidates.csv, numbered after the maps the folder
    already holds; returns the number of maps. Files of the user's there are refused before the long sampling."""
    check_output_file(out / "candidates.npz", "gold sample", _is_candidates_npz)
    check_output_file(out / "candidates.csv", "gold sample", _is_candidates_csv)
    with as_input_error():
        records, rows = sample_maps(run, split, n, max_examples, seed, model, first_index=next_free_index(out))
        if not records:
            raise MapFileError(f"--run {run}: no maps sampled from the first {max_examples} examples of the "
                               f"{split!r} split (is it empty?); nothing written")
        out.mkdir(parents=True, exist_ok=True)
        write_maps(out / "candidates.npz", records)
        write_csv(out / "candidates.csv", rows, list(PROVENANCE))
    return len(records)


@as_input_error()
def draw_sheets(*, maps: Path, out: Path, labels: Path | None = None) -> list[Path]:
    """`sheets`: contact sheets of a maps file in `out`, each map titled with its label from `labels` if given."""
    records = read_maps(maps)
    titles = {i: row["label"] for i, row in read_labels(labels).items()} if labels else None
    return write_sheets(records, out, titles)


@as_input_error()
def compare_annotators(*, labels: list[Path], out: Path | None = None) -> dict:
    """`agree`: the agreement of the first two labels files (same maps, labelled apart); with `out`, one label
    per map (merged_labels, the third file breaking ties) written there as index,label,labeller,note."""
    if len({path.resolve() for path in labels}) < len(labels):
        raise MapFileError("--labels: the same file is given twice; give each annotator's own file")
    if out is not None:
        if out.resolve() in {path.resolve() for path in labels}:
            raise MapFileError(f"--out {out} is also one of the --labels files; write the merge to a new file")
        check_output_file(out, "gold agree", lambda f: first_line(f).rstrip("\r") == MERGED_HEADER, what="--out")
    read = [{i: row["label"] for i, row in read_labels(path).items()} for path in labels]
    first, second = read[0], read[1]
    if not first:
        raise MapFileError(f"{labels[0]}: labels no maps (only the header)")
    for path, mine, other in ((labels[1], second, first), (labels[0], first, second)):
        missing = sorted(set(other) - set(mine))
        if missing:
            raise MapFileError(f"{path}: index {missing[0]} is not labelled; both annotators must label every map")
    result = annotator_agreement(first, second)
    third = read[2] if len(read) > 2 else None
    if third is not None:
        missing = [i for i, _, _ in result["disagreements"] if i not in third]
        if missing:
            raise MapFileError(f"{labels[2]}: index {missing[0]}, where the first two disagree, is not labelled")
    if out is not None:
        write_csv(out, merged_labels(first, second, third), MERGED_HEADER.split(","))
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="pick candidate maps from a run")
    s.add_argument("--run", required=True, type=Path)
    s.add_argument("--split", default="val")
    s.add_argument("--n", type=int, default=240)
    s.add_argument("--max-examples", type=int, default=60)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--model", type=Path, help="classifier that suggests classes for balancing (default: the default)")
    s.add_argument("--out", required=True, type=Path)
    r = sub.add_parser("sheets", help="render contact sheets of a maps file")
    r.add_argument("--maps", required=True, type=Path)
    r.add_argument("--labels", type=Path, help="optional labels.csv: show each map's label in its title")
    r.add_argument("--out", required=True, type=Path)
    a = sub.add_parser("agree", help="agreement of two annotators; with a third, one label per map")
    a.add_argument("--labels", required=True, type=Path, nargs="+", metavar="CSV",
                   help="two index,label files of the same maps, labelled apart; a third breaks their ties")
    a.add_argument("--out", type=Path, help="write the merged index,label,labeller,note here (a new file)")
    f = sub.add_parser("finish", help="write maps.npz of the labelled candidates and the guide's pictures")
    f.add_argument("--gold", required=True, type=Path)
    args = p.parse_args(argv)
    if args.command == "agree" and len(args.labels) not in (2, 3):
        a.error(f"--labels takes two or three files, not {len(args.labels)}")
    if args.command == "sample":
        for option, value in (("--n", args.n), ("--max-examples", args.max_examples)):
            if value < 1:
                s.error(f"{option} must be at least 1, not {value}")
        if args.seed < 0:
            s.error(f"--seed must be a non-negative integer, not {args.seed}")
    return args


def _cli(argv=None) -> None:
    args = parse_args(argv)
    if args.command == "sample":
        count = sample_candidates(run=args.run, out=args.out, split=args.split, n=args.n,
                                  max_examples=args.max_examples, seed=args.seed, model=args.model)
        print(f"{count} candidate maps in {args.out / 'candidates.npz'}")
    elif args.command == "sheets":
        paths = draw_sheets(maps=args.maps, out=args.out, labels=args.labels)
        print(f"{len(paths)} sheets in {args.out}")
    elif args.command == "agree":
        result = compare_annotators(labels=args.labels, out=args.out)
        maps = f"{result['maps']} map" + ("s" if result["maps"] != 1 else "")
        print(f"{maps}: the annotators agree on {result['agreed']} ({result['agreement']:.1%}), "
              f"Cohen's kappa {result['kappa']:.3f}")
        for index, first, second in result["disagreements"]:
            print(f"  map {index}: {first} / {second}")
        if args.out:
            print(f"one label per map in {args.out}")
    else:
        counts = finish(args.gold)
        print(f"{args.gold / 'maps.npz'}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
