"""Grounding measures (uniter_core.grounding) and the evaluation built on them: the own-box and covering rules,
the attention pointing game, the collapse cosines, MLM on object words apart from the rest, and the MLM head
fitted by cross-entropy at the MiniLM start."""
from __future__ import annotations

import math

import pytest
import torch

from tests.factories import tiny_overrides
from uniter_core import evaluate
from uniter_core.config import UniterConfig
from uniter_core.data.dataset import ImageTextDataset, alignment_by_position
from uniter_core.grounding import Tally, add_layer, truth_sets
from uniter_core.runs import build_model
from uniter_core.tasks import MlmDataset
from uniter_core.train_config import load_config

CONFIG = UniterConfig.from_preset("uniter-mini")


def _one_example(hidden_words: dict[int, torch.Tensor], regions: torch.Tensor) -> torch.Tensor:
    """States [1, 4 + K, H]: [CLS], two word-pieces, [SEP], then the K regions; words given by position."""
    states = torch.randn(1, 4 + len(regions), regions.size(1), generator=torch.Generator().manual_seed(1))
    states[0, 4:] = regions
    for position, state in hidden_words.items():
        states[0, position] = state
    return states


def test_covering_rule_counts_a_proposal_over_the_object_and_the_box_rule_does_not():
    regions = torch.eye(6, 16) * 5  # far apart; region 0 is object 0's box, region 3 a proposal covering it
    owners = [0, 1, -1, 0, -1, -1]
    item = {"alignment": [(1, 0), (2, 1)]}  # word 1 names object 0, word 2 names object 1
    hidden = _one_example({1: regions[3], 2: regions[1]}, regions)
    batch = {"txt_lens": [4], "num_bbs": [6]}
    tally = Tally()
    add_layer(tally, 0, hidden, None, batch, [truth_sets(item, owners, 6)], CONFIG)
    assert tally.accuracy((0, "plan", "box")) == (0.5, pytest.approx((1 / 6 + 1 / 6) / 2), 2)
    assert tally.accuracy((0, "plan", "covering")) == (1.0, pytest.approx((2 / 6 + 1 / 6) / 2), 2)
    assert math.isnan(tally.accuracy((0, "attention", "box"))[0])  # the embeddings have no attention
    # without region_object only the own-box rule exists
    assert set(truth_sets(item, None, 6)[1]) == {"box"}


def test_pointing_game_reads_the_word_rows_attention_argmax():
    regions = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))
    hidden = _one_example({}, regions)
    attention = torch.full((1, 9, 9), 0.01)
    attention[0, 1, 4 + 2] = 0.5  # word 1 looks at region 2, which covers its object
    attention[0, 2, 4 + 0] = 0.5  # word 2 looks at region 0, object 0's box, not its object's
    attention[0, 1, 0] = attention[0, 2, 3] = 0.9  # text positions never count, however large
    owners = [0, 1, 0, -1, -1]  # regions 0 and 1: the boxes of objects 0 and 1; region 2 covers object 0
    truth = truth_sets({"alignment": [(1, 0), (2, 1)]}, owners, 5)
    tally = Tally()
    add_layer(tally, 1, hidden, attention, {"txt_lens": [4], "num_bbs": [5]}, [truth], CONFIG)
    assert tally.accuracy((1, "attention", "covering"))[:2] == (0.5, pytest.approx((2 / 5 + 1 / 5) / 2))
    assert tally.accuracy((1, "attention", "box"))[0] == 0.0  # neither looks at its own box


def test_collapsed_states_have_cosines_of_one():
    state = torch.randn(16)
    hidden = state.expand(1, 9, 16).clone()
    tally = Tally()
    add_layer(tally, 0, hidden, None, {"txt_lens": [4], "num_bbs": [5]}, [{}], CONFIG)
    for name in ("word_word", "region_region", "word_region"):
        assert tally.mean_cosine(0, name) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def minilm_start(tiny_corpus):
    """The MiniLM start of a one-layer uniter-mini on the tiny corpus (MLM head fitted to its captions)."""
    config = load_config(None, [*tiny_overrides(tiny_corpus), "model.init=minilm",
                                "model.overrides={num_hidden_layers: 1}", "data.center_features=true"])
    torch.manual_seed(0)
    return build_model(config).eval(), config


def test_the_minilm_start_fits_its_mlm_head_by_cross_entropy(minilm_start, tiny_corpus):
    model, config = minilm_start
    report = model.mlm_head_report
    assert report["examples"] > 0 and report["probe_sentences"] > 200
    assert report["cross_entropy_fitted"] < 0.8 * report["cross_entropy_start"]
    dataset = ImageTextDataset(tiny_corpus, "test", config.data.max_text_len, config.data.max_regions)
    results = evaluate.masked_modelling(model, dataset)
    assert results["mlm_loss"] < math.log(model.config.vocab_size) - 2  # far from a uniform guess (10.3)
    # without the fit (the random transform the heads start with) the same masks score far worse
    torch.manual_seed(0)
    unfitted = type(model)(model.config).eval()
    unfitted.uniter.load_state_dict(model.uniter.state_dict())
    assert evaluate.masked_modelling(unfitted, dataset)["mlm_loss"] > results["mlm_loss"] + 2


def test_evaluation_reports_mlm_by_word_kind_grounding_by_rule_and_collapse(minilm_start, tiny_corpus):
    model, config = minilm_start
    dataset = ImageTextDataset(tiny_corpus, "test", config.data.max_text_len, config.data.max_regions)
    results = evaluate.masked_modelling(model, dataset)
    c = model.config
    masks = MlmDataset(dataset, c.mask_token_id, (c.first_word_piece_id, c.vocab_size), c.mlm_prob, seed=0)
    objects = sum(int(masks[i]["txt_labels"][p] != -1) for i in range(len(dataset))
                  for p in alignment_by_position(masks[i]))
    assert results["mlm_object_targets"] == objects > 0
    rest = results["mlm_targets"] - objects
    assert results["mlm_accuracy"] == pytest.approx(
        (results["mlm_accuracy_objects"] * objects + results["mlm_accuracy_rest"] * rest) / results["mlm_targets"])

    found = evaluate.grounding(model, dataset)
    assert found["aligned_words"] > 0 and found["pointing_rule"] == "covering"
    # a region covering the object includes the object's own box, so the covering rule never scores lower
    assert found["alignment_covering"] >= found["alignment_accuracy"]
    assert found["alignment_covering_chance"] > found["alignment_chance"] > 0
    assert [k for k in found if k.startswith("pointing_layer")] == ["pointing_layer1"]
    for name in ("word_word", "region_region", "word_region"):
        assert -1 <= found[f"cosine_{name}"] <= 1


@pytest.mark.slow
def test_a_fresh_minilm_run_logs_its_head_fit_once(tiny_corpus, tmp_path):
    from uniter_core import train
    from uniter_core.train_state import read_metrics
    out = tmp_path / "run"
    overrides = [*tiny_overrides(tiny_corpus, steps=2), "model.init=minilm", "model.overrides={num_hidden_layers: 1}"]
    assert train.main(["--out", str(out), *overrides]) == 0
    fits = [r["mlm_head_fit"] for r in read_metrics(out / "metrics.jsonl")[0] if "mlm_head_fit" in r]
    assert len(fits) == 1 and fits[0]["cross_entropy_fitted"] < fits[0]["cross_entropy_start"]
    assert train.main(["--out", str(out), *overrides[:-2], "run.num_steps=4", "model.init=minilm",
                       "model.overrides={num_hidden_layers: 1}", "--resume"]) == 0
    records = read_metrics(out / "metrics.jsonl")[0]
    assert sum("mlm_head_fit" in r for r in records) == 1  # a resumed run does not fit again
