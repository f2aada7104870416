"""The feature store: region features of many images in sharded, memory-mappable fp16 arrays.

Layout of a store folder (the same fields as the official UNITER LMDB feature DB, minus LMDB):
    manifest.json                       written last; its presence means the store is complete
    shard_00000.json                    per image: image_id, start row, n_regions, width, height, extra meta
    shard_00000.{features,norm_bb,conf,soft_labels}.npy   fp16 rows of all regions of the shard's images
Shards are written one by one (each file atomically), so an interrupted extraction resumes at the first
missing shard; readers memory-map the arrays and never load the whole store.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uniter_core.data.regions import RegionFeatures
from uniter_core.errors import UserError
from uniter_core.io import write_json, write_npy
from uniter_core.io import JsonlError, read_json

FORMAT = "uniter-workbench-features"
FIELDS = ("features", "norm_bb", "conf", "soft_labels")


class StoreError(UserError, ValueError):
    """A feature store (or a record written to it) is malformed."""


def validate_regions(image_id: str, regions: RegionFeatures, feature_dim: int, num_classes: int) -> None:
    """Refuse what would poison training: no regions, NaN/inf values, or arrays of the wrong shape."""
    n = len(regions.features)
    if n == 0:
        raise StoreError(f"image {image_id!r} has no regions")
    expected = {"features": (n, feature_dim), "norm_bb": (n, 6), "conf": (n,), "soft_labels": (n, num_classes)}
    for name, shape in expected.items():
        array = getattr(regions, name)
        if array.shape != shape:
            raise StoreError(f"image {image_id!r}: {name} has shape {array.shape}, expected {shape}")
        if not np.isfinite(array).all():
            raise StoreError(f"image {image_id!r}: {name} contains NaN or infinite values")


class FeatureStoreWriter:
    def __init__(self, directory: str | Path, feature_dim: int, class_names: list[str],
                 background_class: bool = False):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.feature_dim = feature_dim
        self.class_names = list(class_names)
        self.background_class = background_class

    def shard_name(self, shard: int) -> str:
        return f"shard_{shard:05d}"

    def has_shard(self, shard: int) -> bool:
        """A shard is complete once its JSON index exists (it is written after its arrays)."""
        return (self.directory / f"{self.shard_name(shard)}.json").exists()

    def write_shard(self, shard: int, records: list[tuple[dict, RegionFeatures]]) -> None:
        """records: (meta with at least image_id, width, height; features). Validates before writing."""
        for meta, regions in records:
            validate_regions(meta["image_id"], regions, self.feature_dim, len(self.class_names))
        name = self.shard_name(shard)
        for field in FIELDS:
            rows = np.concatenate([getattr(r, field) for _, r in records]).astype(np.float16)
            write_npy(self.directory / f"{name}.{field}.npy", rows)
        index, start = [], 0
        for meta, regions in records:
            index.append({**meta, "start": start, "n_regions": len(regions.features)})
            start += len(regions.features)
        write_json(self.directory / f"{name}.json", index, indent=None)

    def finish(self, num_shards: int, **extra) -> dict:
        missing = [s for s in range(num_shards) if not self.has_shard(s)]
        if missing:
            raise StoreError(f"{self.directory}: shards {missing} were never written")
        manifest = {"format": FORMAT, "version": 1, "feature_dim": self.feature_dim,
                    "num_classes": len(self.class_names), "background_class": self.background_class,
                    "class_names": self.class_names, "num_shards": num_shards, **extra}
        write_json(self.directory / "manifest.json", manifest)
        return manifest


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _first_bad_row(array: np.ndarray, spans: list[list[int]], step: int) -> int | None:
    """The first row inside `spans` ([start, end) ranges) holding a NaN or inf, read `step` rows at a time."""
    for start, end in spans:
        for a in range(start, end, step):
            finite = np.isfinite(array[a:min(end, a + step)])
            if not finite.all():
                return a + int(np.flatnonzero(~finite.reshape(len(finite), -1).all(axis=1))[0])
    return None


def _read_store_json(path: Path, what: str):
    try:
        return read_json(path, what)
    except JsonlError as e:
        raise StoreError(str(e)) from None


def _check_manifest(path: Path, manifest: dict) -> None:
    """The keys a reader relies on, with their types."""
    checks = {"feature_dim": lambda v: _is_int(v) and v > 0, "num_shards": lambda v: _is_int(v) and v >= 0,
              "class_names": lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
              "background_class": lambda v: isinstance(v, bool)}
    missing = [k for k in checks if k not in manifest]
    if missing:
        raise StoreError(f"{path} lacks the keys {missing}")
    for key, ok in checks.items():
        if not ok(manifest[key]):
            raise StoreError(f"{path}: {key} is {manifest[key]!r}, which is not a valid value")
    if "num_classes" in manifest and manifest["num_classes"] != len(manifest["class_names"]):
        raise StoreError(f"{path}: num_classes is {manifest['num_classes']!r} but class_names has "
                         f"{len(manifest['class_names'])} names")


@dataclass
class _Entry:
    shard: int
    start: int
    n_regions: int
    meta: dict


class FeatureStore:
    """Read-only access by image id; arrays are memory-mapped on first use."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest_path = self.directory / "manifest.json"
        if not manifest_path.exists():
            raise StoreError(f"{self.directory} is not a complete feature store (no manifest.json)")
        self.manifest = _read_store_json(manifest_path, "feature store manifest")
        if not isinstance(self.manifest, dict):
            raise StoreError(f"{manifest_path}: expected a JSON object, found {type(self.manifest).__name__}")
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{manifest_path}: format is {self.manifest.get('format')!r}, expected {FORMAT!r}")
        _check_manifest(manifest_path, self.manifest)
        self.feature_dim = int(self.manifest["feature_dim"])
        self.class_names: list[str] = self.manifest["class_names"]
        self.background_class = bool(self.manifest["background_class"])
        self._entries: dict[str, _Entry] = {}
        self._shard_rows: list[int] = []  # rows of each shard's arrays = sum of its images' n_regions
        for shard in range(self.manifest["num_shards"]):
            self._shard_rows.append(self._read_shard_index(shard))
        self._arrays: dict[tuple[int, str], np.ndarray] = {}

    def _read_shard_index(self, shard: int) -> int:
        """Add the rows of shard_XXXXX.json to the index after checking them; returns the shard's row count."""
        path = self.directory / f"shard_{shard:05d}.json"
        if not path.is_file():
            raise StoreError(f"{path} is missing: the feature store {self.directory} is incomplete")
        rows = _read_store_json(path, "feature store shard index")
        if not isinstance(rows, list):
            raise StoreError(f"{path}: expected a JSON list of image rows, found {type(rows).__name__}")
        entries = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise StoreError(f"{path}: row {i} is {type(row).__name__}, not an object")
            image_id, start, n = row.get("image_id"), row.get("start"), row.get("n_regions")
            if not isinstance(image_id, str) or not image_id:
                raise StoreError(f"{path}: row {i} has image_id {image_id!r}, expected a non-empty string")
            if not _is_int(start) or not _is_int(n) or start < 0 or n < 1:
                raise StoreError(f"{path}: image {image_id!r} has start {start!r} and n_regions {n!r}, expected "
                                 f"integers >= 0 and >= 1")
            if image_id in self._entries:
                raise StoreError(f"{path}: image {image_id!r} is listed twice in the feature store")
            entries.append(_Entry(shard, start, n, row))
            self._entries[image_id] = entries[-1]
        total = sum(e.n_regions for e in entries)
        end = 0
        for e in sorted(entries, key=lambda e: e.start):
            if e.start < end:
                raise StoreError(f"{path}: the rows of image {e.meta['image_id']!r} "
                                 f"({e.start}..{e.start + e.n_regions}) overlap those of the image before it "
                                 f"(which end at {end})")
            end = e.start + e.n_regions
            if end > total:
                raise StoreError(f"{path}: the rows of image {e.meta['image_id']!r} ({e.start}..{end}) lie beyond "
                                 f"the shard's {total} rows (the sum of its n_regions)")
        return total

    @property
    def image_ids(self) -> list[str]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._entries

    def meta(self, image_id: str) -> dict:
        return self._entry(image_id).meta

    def num_regions(self, image_id: str) -> int:
        return self._entry(image_id).n_regions

    def _entry(self, image_id: str) -> _Entry:
        try:
            return self._entries[image_id]
        except KeyError:
            raise KeyError(f"image {image_id!r} is not in the feature store {self.directory}") from None

    def _array(self, shard: int, field: str) -> np.ndarray:
        key = (shard, field)
        if key not in self._arrays:
            self._arrays[key] = self._open_array(shard, field)
        return self._arrays[key]

    def _open_array(self, shard: int, field: str) -> np.ndarray:
        """Memory-map one array, refusing it unless it is a float16 .npy of the shape the index promises."""
        path = self.directory / f"shard_{shard:05d}.{field}.npy"
        if not path.is_file():
            raise StoreError(f"{path} is missing: the feature store {self.directory} is incomplete")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise StoreError(f"{path} is not a readable .npy array, truncated or damaged "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        if not isinstance(array, np.ndarray):  # np.load returns an NpzFile for a zip archive
            raise StoreError(f"{path} is not a .npy array")
        rows = self._shard_rows[shard]
        columns = {"features": (self.feature_dim,), "norm_bb": (6,), "conf": (),
                   "soft_labels": (len(self.class_names),)}[field]
        if array.dtype != np.float16:
            raise StoreError(f"{path} holds {array.dtype} values, expected float16")
        if array.shape != (rows, *columns):
            raise StoreError(f"{path} has shape {array.shape}, but the manifest and shard index promise "
                             f"{(rows, *columns)}")
        return array

    def check_finite(self, image_ids=None, progress: bool = False, chunk_values: int = 1 << 22) -> int:
        """Scan the arrays of `image_ids` (default: all) for NaN/inf; StoreError names the first such image and
        its .npy file. Reads at most `chunk_values` values at a time per array; returns the regions checked."""
        by_shard: dict[int, list[_Entry]] = {}
        for image_id in (self.image_ids if image_ids is None else image_ids):
            e = self._entry(image_id)
            by_shard.setdefault(e.shard, []).append(e)
        total = sum(e.n_regions for entries in by_shard.values() for e in entries)
        from tqdm import tqdm
        with tqdm(total=total, desc=f"checking {self.directory}", unit="region", disable=not progress) as bar:
            for shard in sorted(by_shard):
                entries = sorted({id(e): e for e in by_shard[shard]}.values(), key=lambda e: e.start)
                spans: list[list[int]] = []  # merged [start, end) row ranges of the requested images
                for e in entries:
                    if spans and spans[-1][1] == e.start:
                        spans[-1][1] = e.start + e.n_regions
                    else:
                        spans.append([e.start, e.start + e.n_regions])
                first: tuple[int, str] | None = None  # (row, field) of the earliest bad row of the shard
                for field in FIELDS:
                    array = self._array(shard, field)
                    step = max(1, chunk_values // max(1, int(np.prod(array.shape[1:]))))
                    bad = _first_bad_row(array, spans, step)
                    if bad is not None and (first is None or bad < first[0]):
                        first = (bad, field)
                if first is not None:
                    row, field = first
                    starts = np.array([e.start for e in entries])
                    e = entries[int(np.searchsorted(starts, row, side="right")) - 1]
                    path = self.directory / f"shard_{shard:05d}.{field}.npy"
                    raise StoreError(f"{path}: the {field} of image {e.meta['image_id']!r} contain NaN or "
                                     f"infinite values (region {row - e.start})")
                bar.update(sum(e.n_regions for e in entries))
        return total

    def feature_mean(self, image_ids=None) -> np.ndarray:
        """Mean region feature (float32 [feature_dim], accumulated in float64) over the regions of `image_ids`
        (default: every image in the store)."""
        total, count = np.zeros(self.feature_dim, np.float64), 0
        for image_id in (self.image_ids if image_ids is None else image_ids):
            e = self._entry(image_id)
            total += self._array(e.shard, "features")[e.start:e.start + e.n_regions].sum(axis=0, dtype=np.float64)
            count += e.n_regions
        if count == 0:
            raise StoreError(f"{self.directory}: no regions to average")
        return (total / count).astype(np.float32)

    def __getitem__(self, image_id: str) -> dict[str, np.ndarray]:
        """All fields of one image as float32 arrays: features, norm_bb, conf, soft_labels."""
        e = self._entry(image_id)
        return {f: np.asarray(self._array(e.shard, f)[e.start:e.start + e.n_regions], np.float32) for f in FIELDS}
