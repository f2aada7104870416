"""One writer for every corpus folder (build_corpus, extract, official_db): the skeleton they share.

    corpus = CorpusWriter(out, "build_corpus", kind="collage", force=args.force)
    if corpus.check():                      # refuses foreign folders; True when already built
        return out
    with corpus.building(settings, feature_dim, class_names, background_class) as work:
        for shard, chunk, done in corpus.shards(items, shard_size, "extracting"):
            if not done:
                corpus.write_shard(shard, records_of(chunk))
        corpus.finish(store_meta, texts, text_meta, manifest)

Layout written (uniter_core.data.store for img_db/):
    img_db/                      feature store
    txt_db/<split>.jsonl         captions: text_id, image_id, caption, input_ids, alignment
    txt_db/meta.json             tokenizer and special token ids
    manifest.json                written last: a folder without it is incomplete
The folder is built in OUT.partial (uniter_core.outputs) and moved into place when complete; an interrupted build
resumes at its first missing shard.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

from tqdm import tqdm

from uniter_core.data.store import FeatureStoreWriter
from uniter_core.io import write_json, write_jsonl
from uniter_core.outputs import OutputFolder

CORPUS_ENTRIES = ("images", "img_db", "txt_db", "manifest.json")


def _manifest_kind(kind: str):
    def legacy(folder: Path) -> bool:
        import json
        try:
            return json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("kind") == kind
        except (OSError, ValueError, AttributeError):
            return False
    return legacy


class CorpusWriter:
    def __init__(self, out: str | Path, command: str, kind: str, force: bool = False):
        self.out, self.kind = Path(out), kind
        self.folder = OutputFolder(self.out, command, "manifest.json", force, legacy=_manifest_kind(kind),
                                   own_entries=lambda name: name in CORPUS_ENTRIES)
        self.store: FeatureStoreWriter | None = None
        self.num_shards = 0

    def check(self) -> bool:
        """Refuse what must not be overwritten; True (with a message) when the corpus is already built."""
        if self.folder.check():
            print(f"{self.out} is already built (use --force to rebuild)")
            return True
        return False

    @property
    def work(self) -> Path:
        return self.folder.partial

    @contextlib.contextmanager
    def building(self, settings: dict, feature_dim: int, class_names: list[str],
                 background_class: bool) -> Iterator[Path]:
        self.folder.start(settings)
        with self.folder.building() as work:
            self.store = FeatureStoreWriter(work / "img_db", feature_dim, class_names, background_class)
            yield work

    def shards(self, items: Sequence, shard_size: int, desc: str, unit: str = "img") -> Iterator[tuple[int, list, bool]]:
        """(shard index, its items, whether it is already written) for every shard, with a progress bar."""
        self.num_shards = (len(items) + shard_size - 1) // shard_size
        with tqdm(total=len(items), desc=desc, unit=unit) as bar:
            for shard in range(self.num_shards):
                chunk = list(items[shard * shard_size:(shard + 1) * shard_size])
                yield shard, chunk, self.store.has_shard(shard)
                bar.update(len(chunk))

    def write_shard(self, shard: int, records) -> None:
        self.store.write_shard(shard, records)

    def finish(self, store_meta: dict, texts: dict[str, list[dict]], text_meta: dict, manifest: dict) -> Path:
        """Store manifest, captions, text meta, corpus manifest (last), then the folder moves into place."""
        self.store.finish(self.num_shards, **store_meta)
        for split, rows in texts.items():
            write_jsonl(self.work / "txt_db" / f"{split}.jsonl", rows)
        write_json(self.work / "txt_db" / "meta.json", text_meta)
        write_json(self.work / "manifest.json", {"name": self.out.name, "kind": self.kind, **manifest})
        return self.folder.finish()
