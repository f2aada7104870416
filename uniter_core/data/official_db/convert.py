"""The converter command: an official image DB + text DB pair into the corpus-folder layout of build_corpus.

    python -m uniter_core.data.official_db --img-db DIR [DIR ...] --txt-db DIR [DIR ...] --out DIR
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from uniter_core.cli import exit_with, output_path, run_command, settings_from_args
from uniter_core.data.corpus_writer import CorpusWriter
from uniter_core.data.regions import RegionFeatures
from uniter_core.data.store import StoreError

from .format import CAPTION_FIELDS, OfficialDBError
from .reader import OfficialImageDB, OfficialTextDB, open_image_db


def _text_name(db_dir: Path) -> str:
    return db_dir.name[:-3] if db_dir.name.endswith(".db") else db_dir.name


def _text_rows(db: OfficialTextDB) -> list[dict]:
    rows = []
    vocab_size = db.v_range[1]
    for text_id in db.ids:
        try:
            record = db[text_id]
        except KeyError:
            raise OfficialDBError(f"{db.db_dir}: id2len.json lists the text {text_id!r} but the LMDB has no record "
                                  f"of it") from None
        fname = record.get("img_fname")
        input_ids = record.get("input_ids")
        if not isinstance(input_ids, list):
            raise OfficialDBError(f"{db.db_dir}: record {text_id!r} has no input_ids list")
        bad = next((i for i in input_ids if not isinstance(i, (int, np.integer)) or isinstance(i, bool)
                    or not 0 <= i < vocab_size), None)
        if bad is not None:
            raise OfficialDBError(f"{db.db_dir}: record {text_id!r} has the input id {bad!r}, not a token id "
                                  f"below the vocabulary size {vocab_size} of meta.json")
        if not isinstance(fname, str):
            raise OfficialDBError(f"{db.db_dir}: record {text_id!r} has img_fname {fname!r}; only single-image "
                                  f"text DBs (pre-training, retrieval, VQA, VE) can be converted")
        caption = next((record[k] for k in CAPTION_FIELDS if isinstance(record.get(k), str)), "")
        rows.append({"text_id": str(text_id), "image_id": fname, "caption": caption,
                     "input_ids": [int(i) for i in record["input_ids"]], "alignment": []})
    return rows


def _text_meta(dbs: list[OfficialTextDB]) -> dict:
    first = dbs[0].meta
    for db in dbs[1:]:
        if any(db.meta.get(k) != first.get(k) for k in ("CLS", "SEP", "MASK", "v_range")):
            raise OfficialDBError(f"{db.db_dir} uses other special token ids than {dbs[0].db_dir}")
    return {"tokenizer": first.get("tokenizer", first.get("toker")), "vocab_size": first["v_range"][1],
            "special_tokens": {"[CLS]": first["CLS"], "[SEP]": first["SEP"], "[MASK]": first["MASK"],
                               "[UNK]": first.get("UNK", 100), "[PAD]": 0},
            "alignment": "none: official text DBs carry no word-region alignment",
            "official_meta": {_text_name(db.db_dir): db.meta for db in dbs}}


@dataclass(frozen=True)
class ConversionSettings:
    """Which official DBs to convert and how many boxes per image to keep (the official nbb rule); an
    interrupted conversion resumes only with the same settings."""

    img_db: list[Path]  # official image DB folder(s)
    txt_db: list[Path]  # official text DB folder(s), one split each
    conf_th: float = 0.2  # box confidence threshold (-1: a fixed num_bb)
    max_bb: int = 100
    min_bb: int = 10
    num_bb: int = 36  # boxes per image when conf_th is -1
    compress: str = "auto"  # auto | yes | no: which LMDB of the image DB to read
    max_txt_len: int = -1  # drop longer texts (-1: keep all)
    shard_size: int = 500  # images per feature shard: the unit of resuming

    def __post_init__(self):
        if self.shard_size < 1 or self.min_bb < 1 or self.max_bb < self.min_bb:
            raise ValueError("--shard-size and --min-bb must be >= 1 and --max-bb >= --min-bb")
        if self.compress not in ("auto", "yes", "no"):
            raise ValueError(f"--compress must be auto, yes or no, not {self.compress!r}")


def convert(out: Path, settings: ConversionSettings, force: bool = False) -> Path:
    """Convert official UNITER image and text DBs into a corpus folder `out` (or resume an interrupted
    conversion; with force, redo a finished one). Returns `out`."""
    out = Path(out)
    corpus = CorpusWriter(out, "official_db", kind="official", force=force)
    if corpus.check():
        return out
    compress = {"auto": None, "yes": True, "no": False}[settings.compress]
    txt_dbs = [OfficialTextDB(d, settings.max_txt_len) for d in settings.txt_db]
    names = [_text_name(db.db_dir) for db in txt_dbs]
    if len(set(names)) != len(names):
        raise OfficialDBError(f"the text DBs {[str(d) for d in settings.txt_db]} would share a split name")
    rows = {name: _text_rows(db) for name, db in zip(names, txt_dbs)}
    img_dbs = [open_image_db(d, settings.conf_th, settings.max_bb, settings.min_bb, settings.num_bb, compress) for d in settings.img_db]
    source: dict[str, OfficialImageDB] = {}
    for name, db in zip(names, txt_dbs):
        for row in rows[name]:
            fname = row["image_id"]
            if fname not in source:
                holder = next((i for i in img_dbs if fname in i), None)
                if holder is None:
                    raise OfficialDBError(f"{db.db_dir} refers to image {fname!r}, which is in none of the image "
                                          f"DBs {[str(d) for d in settings.img_db]}")
                source[fname] = holder
    fnames = sorted(source)
    if not fnames:
        raise OfficialDBError(f"the text DBs {[str(d) for d in settings.txt_db]} contain no texts")

    run_args = {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v)
                for k, v in asdict(settings).items()}
    first = source[fnames[0]][fnames[0]]
    num_classes = first["soft_labels"].shape[1]
    class_names = ["__background__"] + [f"class_{i}" for i in range(1, num_classes)]
    with corpus.building(run_args, first["features"].shape[1], class_names, background_class=True):
        for shard, chunk, done in corpus.shards(fnames, settings.shard_size, "converting images"):
            if done:
                continue
            records = []
            for fname in chunk:
                dump = source[fname][fname]
                meta = {"image_id": fname, "width": None, "height": None, "source": str(source[fname].db_path)}
                records.append((meta, RegionFeatures(**dump)))
            try:
                corpus.write_shard(shard, records)
            except StoreError as e:  # e.g. NaN features: name the official DB they came from
                bad = next((f for f in chunk if repr(f) in str(e)), chunk[0])
                raise OfficialDBError(f"{source[bad].db_path}: {e}") from None
        corpus.finish(
            {"source": f"official UNITER image DBs {[str(d) for d in settings.img_db]}",
             "extractor": "the official DB's detector (Faster R-CNN, 1600 Visual Genome classes + background)",
             "nbb": {"conf_th": settings.conf_th, "max_bb": settings.max_bb, "min_bb": settings.min_bb, "num_bb": settings.num_bb}},
            rows, _text_meta(txt_dbs),
            {"image_dbs": run_args["img_db"], "text_dbs": run_args["txt_db"],
             "splits": {n: {"images": len({r["image_id"] for r in rows[n]}), "captions": len(rows[n])}
                        for n in names},
             "build_args": run_args})
    return out


def parse_args(argv=None) -> tuple[Path, ConversionSettings, bool]:
    """(--out, the settings, --force) of the command line."""
    # the description is the package docstring, as when this was one module
    p = argparse.ArgumentParser(description=sys.modules[__package__].__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-db", required=True, nargs="+", type=Path, help="official image DB folder(s)")
    p.add_argument("--txt-db", required=True, nargs="+", type=Path, help="official text DB folder(s)")
    p.add_argument("--out", required=True, type=output_path, help="output corpus folder")
    p.add_argument("--conf-th", type=float, default=0.2, help="box confidence threshold (-1: fixed --num-bb)")
    p.add_argument("--max-bb", type=int, default=100, help="most boxes per image (default 100)")
    p.add_argument("--min-bb", type=int, default=10, help="fewest boxes per image (default 10)")
    p.add_argument("--num-bb", type=int, default=36, help="boxes per image when --conf-th is -1 (default 36)")
    p.add_argument("--compress", choices=("auto", "yes", "no"), default="auto",
                   help="read the *_compressed LMDB (default: whichever exists, compressed first)")
    p.add_argument("--max-txt-len", type=int, default=-1, help="drop longer texts (default -1: keep all)")
    p.add_argument("--shard-size", type=int, default=500, help="images per feature shard (the resume unit)")
    p.add_argument("--force", action="store_true", help="convert again even if OUT is complete")
    args = p.parse_args(argv)
    return args.out, settings_from_args(p, args, ConversionSettings), args.force


def _cli(argv=None) -> int:
    out, settings, force = parse_args(argv)
    print(f"corpus ready: {convert(out, settings, force)}")
    return 0


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
