"""Conditional masking of the pre-training tasks (as in the UNITER paper), driven by explicit generators.

- Text (MLM): each word-piece between [CLS] and [SEP] is chosen with probability mask_prob; a chosen piece
  becomes [MASK] (80 %), a random word-piece from the vocabulary's normal range (10 %) or stays (10 %), and
  is a target. If none is chosen, one piece drawn uniformly becomes [MASK] (the official code forces the
  first one; a uniform draw avoids favouring the sentence start).
- Regions (MRM): each region is chosen with probability mask_prob, at least one (drawn uniformly, as
  officially); the collate zeroes chosen features and the model adds the mask embedding.
- One modality per example: an MLM example masks only text, an MRM example only regions, ITM nothing.

Every example draws from its own generator, seeded by (seed, epoch, index, stream): masks do not depend on
DataLoader workers or batch order, and a resumed run reproduces them exactly.
"""
from __future__ import annotations

import numpy as np
import torch

STREAMS = {"mlm": 1, "mrm": 2, "itm": 3}  # independent random streams per task family


def example_generator(seed: int, epoch: int, index: int, stream: str) -> torch.Generator:
    """A torch.Generator that depends only on (seed, epoch, index, stream)."""
    state = np.random.SeedSequence([seed, epoch, index, STREAMS[stream]]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))  # manual_seed takes 63-bit values


def mask_text(input_ids: torch.Tensor, generator: torch.Generator, mask_token_id: int,
              word_piece_range: tuple[int, int], mask_prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [T] = [CLS] pieces [SEP] -> (masked input_ids [T], txt_labels [T], -1 where not a target).

    Random replacements are drawn from [word_piece_range[0], word_piece_range[1]), the official v_range
    (no special or unused tokens). The same number of random draws is made whatever the outcome."""
    input_ids = input_ids.clone()
    txt_labels = torch.full_like(input_ids, -1)
    n = input_ids.numel() - 2
    if n <= 0:
        return input_ids, txt_labels
    chosen = torch.rand(n, generator=generator) < mask_prob
    action = torch.rand(n, generator=generator)
    random_pieces = torch.randint(word_piece_range[0], word_piece_range[1], (n,), generator=generator,
                                  dtype=input_ids.dtype)
    fallback = torch.randint(n, (1,), generator=generator)
    if not chosen.any():
        chosen[fallback] = True
        action[fallback] = 0.0  # -> [MASK]
    pieces = input_ids[1:-1]
    replaced = torch.where(action < 0.8, torch.full_like(pieces, mask_token_id),
                           torch.where(action < 0.9, random_pieces, pieces))
    txt_labels[1:-1] = torch.where(chosen, pieces, txt_labels[1:-1])
    input_ids[1:-1] = torch.where(chosen, replaced, pieces)
    return input_ids, txt_labels


def mask_regions(num_bb: int, generator: torch.Generator, mask_prob: float = 0.15) -> torch.Tensor:
    """Bool [num_bb]: regions to mask, at least one when there are any."""
    chosen = torch.rand(num_bb, generator=generator) < mask_prob
    if num_bb and not chosen.any():
        chosen[torch.randint(num_bb, (1,), generator=generator)] = True
    return chosen


def sample_negative_index(num_images: int, positive: int, generator: torch.Generator) -> int:
    """Uniform over the other images: never `positive` itself."""
    if num_images < 2:
        raise ValueError("ITM negatives need at least two images")
    index = int(torch.randint(num_images - 1, (1,), generator=generator))
    return index + (index >= positive)
