"""The evaluation's word-region alignment: the transport plan's argmax against the ground-truth boxes."""
import torch

from uniter_core.config import UniterConfig
from uniter_core.grounding import alignment_hits


def test_alignment_hits_finds_a_word_whose_state_is_its_box_and_reports_chance():
    config = UniterConfig.from_preset("uniter-mini")
    txt_lens, num_bbs = [5, 4], [3, 6]
    hidden = torch.randn(2, 10, 16, generator=torch.Generator().manual_seed(0))
    # example 0: word 1 is box 2; word 3 is box 0 or 1 (two boxes); example 1: word 2 is box 5
    examples = [{"alignment": [(1, 2), (3, 0), (3, 1)]}, {"alignment": [(2, 5)]}]
    batch = {"txt_lens": txt_lens, "num_bbs": num_bbs}
    grounded = hidden.clone()
    grounded[0, 1], grounded[0, 3], grounded[1, 2] = hidden[0, 5 + 2], hidden[0, 5 + 1], hidden[1, 4 + 5]
    hits, words, chance = alignment_hits(grounded, batch, examples, config)
    assert (hits, words) == (3, 3)
    assert chance == 1 / 3 + 2 / 3 + 1 / 6
    wrong = hidden.clone()  # each grounded word made identical to a box that is not its own
    wrong[0, 1], wrong[0, 3], wrong[1, 2] = hidden[0, 5 + 0], hidden[0, 5 + 2], hidden[1, 4 + 0]
    assert alignment_hits(wrong, batch, examples, config)[:2] == (0, 3)
    assert alignment_hits(hidden, batch, [{}, {"alignment": []}], config) == (0, 0, 0.0)  # nothing grounded
