"""Pre-training task datasets, collates and the task sampler.

A task dataset wraps the base ImageTextDataset (uniter_core.data.dataset) and adds one task's randomness
(masks, ITM negatives, see uniter_core.masking); its collate builds on the base collate and adds the official
task keys:

  mlm              txt_labels [B, max_txt_len] (-1 = not a target)
  mrfr/mrc/mrckl   img_masks [B, max_regions] bool, img_mask_tgt [B, L] bool over the packed sequence,
                   feat_targets [n_masked, img_dim] (original features; img_feat has them zeroed),
                   label_targets [n_masked, classes] (detector soft labels)
  itm              targets [B] (1 = matching image); with WRA txt_pad [B, max_txt_len] and
                   img_pad [B, max_regions], bool, True on padding (the official ot_inputs pads)

`TaskStream` is one task's endless token-bucketed batches. `TaskSampler` picks one task per optimisation step from the mix ratios, as a pure function of (seed, step):
every rank draws the same task, and a resumed run continues the same sequence.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from uniter_core.config import UniterConfig
from uniter_core.data.dataset import TokenBucketSampler, collate
from uniter_core.model import SequenceLayout
from uniter_core.masking import example_generator, mask_regions, mask_text, sample_negative_index

TASKS = ("mlm", "mrfr", "mrc", "mrckl", "itm")  # the pre-training tasks, by their official names
DEFAULT_MIX = {"itm": 3, "mlm": 4, "mrfr": 2, "mrckl": 2}  # official large-corpus configs


def mix_problem(mix: dict) -> str | None:
    """What makes a task mix unusable, as the end of a sentence that starts with the mix's name, or None: unknown
    tasks, a ratio that is not a finite number >= 0, no ratio above zero."""
    unknown = sorted(set(mix) - set(TASKS))
    if unknown:
        return f" names unknown tasks {unknown} (known: {', '.join(TASKS)})"
    for task, ratio in mix.items():
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 0:
            return f".{task} must be a number >= 0, got {ratio!r}"
    if sum(float(v) for v in mix.values()) <= 0:
        return " needs at least one task with a ratio > 0"
    return None


class TaskDataset(Dataset):
    """Base for the task wrappers: per-example generators from (seed, epoch, index); call set_epoch."""

    stream = ""

    def __init__(self, base, seed: int = 0):
        self.base = base
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self, index: int) -> torch.Generator:
        return example_generator(self.seed, self.epoch, index, self.stream)

    def __len__(self) -> int:
        return len(self.base)

    def lengths(self) -> list[int]:
        return self.base.lengths()


class MlmDataset(TaskDataset):
    stream = "mlm"

    def __init__(self, base, mask_token_id: int, word_piece_range: tuple[int, int], mask_prob: float = 0.15,
                 seed: int = 0):
        super().__init__(base, seed)
        self.mask_token_id, self.word_piece_range, self.mask_prob = mask_token_id, word_piece_range, mask_prob

    def __getitem__(self, index: int) -> dict:
        example = dict(self.base[index])
        example["input_ids"], example["txt_labels"] = mask_text(
            example["input_ids"], self.generator(index), self.mask_token_id, self.word_piece_range, self.mask_prob)
        return example


class MrmDataset(TaskDataset):
    """Region masks for MRFR, MRC and MRC-kl (the same batch serves all three)."""

    stream = "mrm"

    def __init__(self, base, mask_prob: float = 0.15, seed: int = 0):
        super().__init__(base, seed)
        self.mask_prob = mask_prob

    def __getitem__(self, index: int) -> dict:
        example = dict(self.base[index])
        example["img_mask"] = mask_regions(len(example["img_feat"]), self.generator(index), self.mask_prob)
        return example


class ItmDataset(TaskDataset):
    """With probability neg_prob the example's image is replaced by another image of the split (target 0)."""

    stream = "itm"

    def __init__(self, base, neg_prob: float = 0.5, seed: int = 0):
        super().__init__(base, seed)
        self.neg_prob = neg_prob
        self.image_index = {image_id: i for i, image_id in enumerate(base.image_ids)}

    def pair(self, index: int, image_id: str) -> tuple[str, int]:
        """(image id to show, target) for example `index` whose true image is `image_id`."""
        generator = self.generator(index)
        negative = bool(torch.rand(1, generator=generator) < self.neg_prob)
        other = sample_negative_index(len(self.base.image_ids), self.image_index[image_id], generator)
        return (self.base.image_ids[other], 0) if negative else (image_id, 1)

    def __getitem__(self, index: int) -> dict:
        example = dict(self.base[index])
        image_id, target = self.pair(index, example["image_id"])
        if not target:
            example.update(self.base.get_image(image_id), image_id=image_id)
            if "alignment" in example:
                example["alignment"] = []  # word-region links belong to the true image
        example["target"] = target
        return example


def mlm_collate(examples: list[dict]) -> dict:
    batch = collate(examples)
    batch["txt_labels"] = pad_sequence([e["txt_labels"] for e in examples], batch_first=True, padding_value=-1)
    return batch


def mrm_collate(examples: list[dict]) -> dict:
    batch = collate(examples)
    img_masks = pad_sequence([e["img_mask"] for e in examples], batch_first=True, padding_value=False)
    batch["feat_targets"] = batch["img_feat"][img_masks]
    batch["label_targets"] = torch.cat([e["soft_labels"][e["img_mask"]] for e in examples])
    batch["img_feat"] = batch["img_feat"].masked_fill(img_masks.unsqueeze(-1), 0.0)
    img_mask_tgt = torch.zeros_like(batch["attn_masks"], dtype=torch.bool)
    layout = SequenceLayout.from_batch(batch)
    for b, e in enumerate(examples):
        img_mask_tgt[b, layout.region_slice(b)] = e["img_mask"]
    batch["img_masks"], batch["img_mask_tgt"] = img_masks, img_mask_tgt
    return batch


def itm_collate(examples: list[dict], ot: bool = True) -> dict:
    batch = collate(examples)
    batch["targets"] = torch.tensor([e["target"] for e in examples], dtype=torch.long)
    if ot:
        batch["txt_pad"], batch["img_pad"] = wra_pads(batch)
    return batch


def wra_pads(batch: dict, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(txt_pad [B, max_txt_len], img_pad [B, max_regions]) of a collated batch, bool, True on padding: the
    official ot_inputs that WRA's transport problem is masked with."""
    txt_lens = torch.tensor(batch["txt_lens"], device=device)
    num_bbs = torch.tensor(batch["num_bbs"], device=device)
    txt_pad = torch.arange(max(batch["txt_lens"]), device=device) >= txt_lens.unsqueeze(1)  # collate pads
    img_pad = torch.arange(max(batch["num_bbs"]), device=device) >= num_bbs.unsqueeze(1)  # to the longest
    return txt_pad, img_pad


def build_task_dataset(task: str, base, config: UniterConfig, seed: int = 0):
    """(dataset, collate_fn) of one task over a base dataset, with the config's probabilities and token ids.
    WRA pads are added to ITM batches only when config.itm_ot_lambda > 0."""
    if task == "mlm":
        return (MlmDataset(base, config.mask_token_id, (config.first_word_piece_id, config.vocab_size),
                           config.mlm_prob, seed), mlm_collate)
    if task in ("mrfr", "mrc", "mrckl"):
        return MrmDataset(base, config.mrm_prob, seed), mrm_collate
    if task == "itm":
        return ItmDataset(base, config.itm_neg_prob, seed), functools.partial(itm_collate,
                                                                             ot=config.itm_ot_lambda > 0)
    raise ValueError(f"unknown pre-training task {task!r} (known: {', '.join(TASKS)})")


class TaskSampler:
    """One task name per step, drawn with probability proportional to `mix`, as a function of (seed, step)."""

    def __init__(self, mix: dict[str, float] | None = None, seed: int = 0):
        mix = dict(DEFAULT_MIX if mix is None else mix)
        problem = mix_problem(mix)
        if problem:
            raise ValueError(f"task mix {mix}{problem}")
        self.mix, self.seed, self.step = mix, seed, 0
        self.names = sorted(mix)  # order-independent: the same on every rank whatever the dict order
        weights = np.array([float(mix[n]) for n in self.names])
        self.cumulative = np.cumsum(weights / weights.sum())

    def task_at(self, step: int) -> str:
        u = np.random.default_rng([self.seed, step]).random()
        return self.names[min(int(np.searchsorted(self.cumulative, u, side="right")), len(self.names) - 1)]

    def __iter__(self):
        return self

    def __next__(self) -> str:
        task = self.task_at(self.step)
        self.step += 1
        return task

    def state_dict(self) -> dict:
        return {"mix": dict(self.mix), "seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if state["mix"] != self.mix or state["seed"] != self.seed:
            raise ValueError(f"task sampler state was saved with mix {state['mix']} and seed {state['seed']}, "
                             f"not {self.mix} and {self.seed}")
        self.step = state["step"]


class TaskStream:
    """Endless batches of one task; its position (epoch, batches consumed) is part of a checkpoint."""

    def __init__(self, task: str, dataset, collate_fn, max_tokens: int, bucket_size: int, size_multiple: int,
                 seed: int, num_workers: int = 0, rank: int = 0, world_size: int = 1):
        self.task = task
        self.dataset = dataset
        self.sampler = TokenBucketSampler(dataset.lengths(), max_tokens, bucket_size, size_multiple, seed=seed,
                                          rank=rank, world_size=world_size)
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.epoch, self.consumed = 0, 0
        self._iterator = None

    def _start(self) -> None:
        self.sampler.set_epoch(self.epoch, start_batch=self.consumed)
        self.dataset.set_epoch(self.epoch)
        # A private generator: creating a loader iterator draws a seed, which must not come from the global
        # RNG (that would shift dropout masks depending on when each task's stream happened to start).
        generator = torch.Generator().manual_seed(self.sampler.seed * 7919 + self.epoch)
        loader = DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=self.collate_fn,
                            num_workers=self.num_workers, persistent_workers=False, generator=generator)
        self._iterator = iter(loader)

    def next_batch(self) -> dict:
        if self._iterator is None:
            self._start()
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epoch, self.consumed = self.epoch + 1, 0
            self._start()
            batch = next(self._iterator)
        self.consumed += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed, self._iterator = state["epoch"], state["consumed"], None
