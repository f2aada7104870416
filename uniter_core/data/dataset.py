"""From a corpus folder to the official UNITER batch dict.

`ImageTextDataset` pairs every caption with its image's regions; `collate` pads and builds the keys the
official code uses (`input_ids, position_ids, img_feat, img_pos_feat, attn_masks, gather_index`), so code
ported from ChenRocks/UNITER keeps working; `TokenBucketSampler` groups examples of similar length into
batches whose size is counted in tokens (text + regions), sharded over ranks for distributed training.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, Sampler

from uniter_core.data.store import FeatureStore
from uniter_core.errors import UserError
from uniter_core.io import JsonlError, iter_jsonl, read_json


class CorpusError(UserError, ValueError):
    """A corpus folder's text part (txt_db/) is missing or malformed; the message names the file (and line)."""


class MissingSplitError(CorpusError, FileNotFoundError):
    """txt_db/<split>.jsonl does not exist."""


def _read_meta(path: Path) -> dict:
    """txt_db/meta.json, with the keys the dataset uses."""
    try:
        meta = read_json(path, "corpus text metadata")
    except JsonlError as e:
        raise CorpusError(str(e)) from None
    special = meta.get("special_tokens") if isinstance(meta, dict) else None
    if not isinstance(special, dict) or not all(type(special.get(k)) is int for k in ("[CLS]", "[SEP]")) \
            or type(meta.get("vocab_size")) is not int or meta["vocab_size"] < 0:
        raise CorpusError(f"{path} needs special_tokens with integer [CLS] and [SEP] ids and an integer vocab_size")
    return meta


def pos7(norm_bb: torch.Tensor) -> torch.Tensor:
    """norm_bb [..., 6] = (x1, y1, x2, y2, w, h) -> the 7-d position feature, adding the area w*h."""
    return torch.cat([norm_bb, norm_bb[..., 4:5] * norm_bb[..., 5:6]], dim=-1)


class ImageTextDataset(Dataset):
    """Caption/image pairs of one split of a corpus folder (img_db/ + txt_db/<split>.jsonl).

    Each item: input_ids ([CLS] word-pieces [SEP]), img_feat, norm_bb, soft_labels of the image's regions,
    image_id, text_id, and the ground-truth alignment as (sequence position, region index) pairs.
    """

    def __init__(self, corpus_dir: str | Path, split: str, max_text_len: int = 60, max_regions: int = 100):
        corpus_dir = Path(corpus_dir)
        text_file = corpus_dir / "txt_db" / f"{split}.jsonl"
        self.text_file = text_file
        if not text_file.is_file():
            splits = sorted(p.stem for p in (corpus_dir / "txt_db").glob("*.jsonl")) \
                if (corpus_dir / "txt_db").is_dir() else []
            raise MissingSplitError(f"{text_file} does not exist: is {corpus_dir} a built corpus with a {split!r} "
                                    f"split? (splits there: {', '.join(splits) or 'none'})")
        self.corpus_dir = corpus_dir
        self.split = split
        self.store = FeatureStore(corpus_dir / "img_db")
        meta_file = corpus_dir / "txt_db" / "meta.json"
        meta = _read_meta(meta_file)
        self.special_tokens: dict[str, int] = meta["special_tokens"]
        self.vocab_size: int = meta["vocab_size"]
        self.max_text_len = max_text_len
        self.max_regions = max_regions
        try:
            self.texts = [self._checked_row(text_file, line, row) for line, row in iter_jsonl(text_file)]
        except JsonlError as e:
            raise CorpusError(str(e)) from None
        self.image_ids = list(dict.fromkeys(t["image_id"] for t in self.texts))

    def _checked_row(self, text_file: Path, line: int, row: dict) -> dict:
        """The row if it can be trained on; else CorpusError naming the file and line."""
        where = f"{text_file}, line {line}"
        text_id, image_id, ids = row.get("text_id"), row.get("image_id"), row.get("input_ids")
        if not isinstance(text_id, (str, int)) or isinstance(text_id, bool):
            raise CorpusError(f"{where}: text_id is {text_id!r}, expected a string or an integer")
        if not isinstance(image_id, str):
            raise CorpusError(f"{where}: image_id is {image_id!r}, expected a string")
        if image_id not in self.store:
            raise CorpusError(f"{where}: image {image_id!r} is not in the feature store {self.store.directory}")
        if not isinstance(ids, list) or not ids or not all(type(i) is int for i in ids):
            raise CorpusError(f"{where}: input_ids must be a non-empty list of integers")
        if self.vocab_size and not 0 <= min(ids) <= max(ids) < self.vocab_size:
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise CorpusError(f"{where}: token id {bad} is outside the vocabulary of {self.vocab_size}")
        alignment = row.get("alignment", [])
        if not isinstance(alignment, list) or not all(
                isinstance(pair, list) and len(pair) == 2 and all(type(v) is int and v >= 0 for v in pair)
                for pair in alignment):
            raise CorpusError(f"{where}: alignment must be a list of [word-piece, region] pairs of integers >= 0")
        return row

    @property
    def img_dim(self) -> int:
        return self.store.feature_dim

    def check_fits(self, config) -> None:
        """Refuse a model (UniterConfig `config`) whose region features or classes differ from this corpus's,
        before a forward pass fails on shapes."""
        where = self.store.directory / "manifest.json"
        if self.img_dim != config.img_dim:
            raise CorpusError(f"{where}: the corpus has {self.img_dim}-d region features but the model expects "
                              f"img_dim {config.img_dim}")
        if len(self.store.class_names) != config.num_region_classes:
            raise CorpusError(f"{where}: the corpus has {len(self.store.class_names)} region classes but the model "
                              f"expects {config.num_region_classes}")

    def __len__(self) -> int:
        return len(self.texts)

    def lengths(self) -> list[int]:
        """Tokens per example (text incl. [CLS]/[SEP] + regions), for token-counted batching."""
        return [min(len(t["input_ids"]), self.max_text_len) + 2 + min(self.store.num_regions(t["image_id"]),
                                                                      self.max_regions) for t in self.texts]

    def get_image(self, image_id: str) -> dict[str, torch.Tensor]:
        regions = self.store[image_id]
        n = min(len(regions["features"]), self.max_regions)
        return {"img_feat": torch.from_numpy(regions["features"][:n]),
                "norm_bb": torch.from_numpy(regions["norm_bb"][:n]),
                "soft_labels": torch.from_numpy(regions["soft_labels"][:n])}

    def __getitem__(self, index: int) -> dict:
        text = self.texts[index]
        words = text["input_ids"][: self.max_text_len]
        cls, sep = self.special_tokens["[CLS]"], self.special_tokens["[SEP]"]
        image = self.get_image(text["image_id"])
        n_regions = len(image["img_feat"])
        alignment = [(p + 1, r) for p, r in text.get("alignment", []) if p < len(words) and r < n_regions]
        return {"input_ids": torch.tensor([cls, *words, sep], dtype=torch.long), **image,
                "image_id": text["image_id"], "text_id": text["text_id"], "alignment": alignment}


def get_gather_index(txt_lens: list[int], num_bbs: list[int], max_txt_len: int, out_size: int) -> torch.Tensor:
    """Indices into cat([text embeddings padded to max_txt_len, region embeddings]) that put each example's
    regions right after its own text, padding at the end (as in the official code)."""
    gather_index = torch.arange(out_size, dtype=torch.long).unsqueeze(0).repeat(len(txt_lens), 1)
    for i, (tl, nbb) in enumerate(zip(txt_lens, num_bbs)):
        gather_index[i, tl:tl + nbb] = torch.arange(max_txt_len, max_txt_len + nbb, dtype=torch.long)
    return gather_index


def collate(examples: list[dict]) -> dict:
    """Pad a list of examples into the official batch dict (plus txt_lens / num_bbs / ids for bookkeeping)."""
    txt_lens = [len(e["input_ids"]) for e in examples]
    num_bbs = [len(e["img_feat"]) for e in examples]
    input_ids = pad_sequence([e["input_ids"] for e in examples], batch_first=True, padding_value=0)
    max_txt_len = input_ids.size(1)
    img_feat = pad_sequence([e["img_feat"] for e in examples], batch_first=True, padding_value=0)
    img_pos_feat = pad_sequence([pos7(e["norm_bb"]) for e in examples], batch_first=True, padding_value=0)
    attn_masks = pad_sequence([torch.ones(t + n, dtype=torch.long) for t, n in zip(txt_lens, num_bbs)],
                              batch_first=True, padding_value=0)
    return {
        "input_ids": input_ids,
        "position_ids": torch.arange(max_txt_len, dtype=torch.long).unsqueeze(0),
        "img_feat": img_feat,
        "img_pos_feat": img_pos_feat,
        "attn_masks": attn_masks,
        "gather_index": get_gather_index(txt_lens, num_bbs, max_txt_len, attn_masks.size(1)),
        "txt_lens": txt_lens,
        "num_bbs": num_bbs,
        "image_ids": [e["image_id"] for e in examples],
        "text_ids": [e["text_id"] for e in examples],
    }


class TokenBucketSampler(Sampler[list[int]]):
    """Batches of example indices whose padded size (longest example x count) stays within `max_tokens`.

    Examples are shuffled, cut into buckets of `bucket_size`, sorted by length inside each bucket and packed
    greedily, so batches hold examples of similar length (little padding). Batch sizes are multiples of
    `size_multiple` (except the last of a bucket). The order depends only on (seed, epoch); with
    `world_size` > 1 every rank gets a disjoint, equally long share of the batches. `start_batch` skips the
    batches already consumed, which is how a resumed run continues mid-epoch.
    """

    def __init__(self, lengths: list[int], max_tokens: int, bucket_size: int = 1024, size_multiple: int = 8,
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False):
        if max(lengths) * size_multiple > max_tokens:
            raise ValueError(f"max_tokens={max_tokens} cannot hold {size_multiple} examples of the longest "
                             f"length {max(lengths)}: raise the token budget or lower size_multiple")
        self.lengths = list(lengths)
        self.max_tokens = max_tokens
        self.bucket_size = bucket_size
        self.size_multiple = size_multiple
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def batches(self, epoch: int) -> list[list[int]]:
        """All batches of one epoch for this rank."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        ids = list(range(len(self.lengths)))
        rng.shuffle(ids)
        batches: list[list[int]] = []
        for b in range(0, len(ids), self.bucket_size):
            bucket = sorted(ids[b:b + self.bucket_size], key=lambda i: self.lengths[i], reverse=True)
            batch: list[int] = []
            longest = 0
            for c in range(0, len(bucket), self.size_multiple):
                chunk = bucket[c:c + self.size_multiple]
                chunk_longest = max(self.lengths[i] for i in chunk)
                if batch and max(longest, chunk_longest) * (len(batch) + len(chunk)) > self.max_tokens:
                    batches.append(batch)
                    batch, longest = [], 0
                batch.extend(chunk)
                longest = max(longest, chunk_longest)
            if batch and not (self.drop_last and len(batch) < self.size_multiple):
                batches.append(batch)
        rng.shuffle(batches)
        per_rank = len(batches) // self.world_size  # equal counts keep ranks in lock-step
        return batches[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self):
        return iter(self.batches(self.epoch)[self.start_batch:])

    def __len__(self) -> int:
        return len(self.batches(self.epoch)) - self.start_batch


def alignment_by_position(item: dict) -> dict[int, set[int]]:
    """The ground-truth word-region alignment of a dataset item: sequence position (with [CLS] at 0) -> the
    set of region indices the word-piece there names (empty for captions without an alignment)."""
    truth: dict[int, set[int]] = {}
    for position, region in item.get("alignment") or ():
        truth.setdefault(int(position), set()).add(int(region))
    return truth
