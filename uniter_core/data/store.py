"""The feature store: region features of many images in sharded, memory-mappable fp16 arrays.

Layout of a store folder (the same fields as the official UNITER LMDB feature DB, minus LMDB):
    manifest.json                       written last; its presence means the store is complete
    shard_00000.json                    per image: image_id, start row, n_regions, width, height, extra meta
    shard_00000.{features,norm_bb,conf,soft_labels}.npy   fp16 rows of all regions of the shard's images
Shards are written one by one (each file atomically), so an interrupted extraction resumes at the first
missing shard; readers memory-map the arrays and never load the whole store.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uniter_core.data.regions import RegionFeatures
from uniter_core.io import write_json, write_npy

FORMAT = "uniter-workbench-features"
FIELDS = ("features", "norm_bb", "conf", "soft_labels")


class StoreError(ValueError):
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
        self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{manifest_path}: format is {self.manifest.get('format')!r}, expected {FORMAT!r}")
        self.feature_dim = int(self.manifest["feature_dim"])
        self.class_names: list[str] = self.manifest["class_names"]
        self.background_class = bool(self.manifest["background_class"])
        self._entries: dict[str, _Entry] = {}
        for shard in range(self.manifest["num_shards"]):
            rows = json.loads((self.directory / f"shard_{shard:05d}.json").read_text(encoding="utf-8"))
            for row in rows:
                self._entries[row["image_id"]] = _Entry(shard, row["start"], row["n_regions"], row)
        self._arrays: dict[tuple[int, str], np.ndarray] = {}

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
            self._arrays[key] = np.load(self.directory / f"shard_{shard:05d}.{field}.npy", mmap_mode="r")
        return self._arrays[key]

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
