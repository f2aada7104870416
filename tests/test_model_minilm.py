"""uniter-mini from the offline MiniLM: the text side equals BertModel, and the fitted MLM head fills in words
from context before any pre-training."""
from __future__ import annotations

import os

import pytest
import torch

from uniter_core.config import UniterConfig
from uniter_core.data.tokenizer import minilm_path
from uniter_core.pretrain import UniterForPretraining

ANIMALS = {"cat", "cats", "dog", "dogs", "kitten", "puppy", "animal", "animals", "horse", "bird", "rabbit", "pet"}


@pytest.fixture(scope="module")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertTokenizerFast
    tokenizer = BertTokenizerFast.from_pretrained(str(minilm_path()))
    return UniterForPretraining.from_minilm().eval(), tokenizer


@torch.no_grad()
def top5(model, tokenizer, text: str) -> list[str]:
    encoding = tokenizer(text, return_tensors="pt")
    input_ids = encoding["input_ids"]
    labels = torch.where(input_ids == tokenizer.mask_token_id, 0, -1)  # the label value is not used for scores
    batch = {"input_ids": input_ids, "position_ids": torch.arange(input_ids.size(1))[None],
             "attn_masks": encoding["attention_mask"], "txt_labels": labels}
    scores = model(batch, "mlm", compute_loss=False)  # text only: the image side is untrained
    return tokenizer.convert_ids_to_tokens(scores[0].topk(5).indices)


@pytest.mark.slow
def test_mlm_head_fills_an_animal_before_pretraining(minilm):
    model, tokenizer = minilm
    words = top5(model, tokenizer, "a [MASK] is sitting on the mat")
    print("top-5 for 'a [MASK] is sitting on the mat':", words)
    assert ANIMALS & set(words), words
    # controls: the head reads the context, it does not just favour animals
    assert {"tea", "coffee", "water", "milk", "juice"} & set(top5(model, tokenizer, "he drank a cup of [MASK]"))
    assert {"bicycle", "bike", "horse", "motorcycle", "scooter"} & set(
        top5(model, tokenizer, "a man is riding a [MASK] down the street"))
    assert model.mlm_head_report["masked_pieces"] > 1000


@torch.no_grad()
def test_text_side_equals_the_minilm_bert_model(minilm):
    from transformers import BertModel
    model, tokenizer = minilm
    assert model.config.to_dict() == UniterConfig.from_preset("uniter-mini").to_dict()
    bert = BertModel.from_pretrained(str(minilm_path())).eval()
    encoding = tokenizer(["two dogs playing in the snow", "a red truck"], padding=True, return_tensors="pt")
    expected = bert(**encoding).last_hidden_state
    ours = model.uniter(encoding["input_ids"], None, None, None, encoding["attention_mask"]).last_hidden_state
    real = encoding["attention_mask"].bool()
    torch.testing.assert_close(ours[real], expected[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.uniter.pooler.dense.weight, bert.pooler.dense.weight)


def test_fewer_layers_take_the_first_ones_and_wider_configs_are_refused():
    from uniter_core.checkpoint import init_text_from_bert
    from uniter_core.model import UniterModel
    two = UniterModel(UniterConfig.from_preset("uniter-mini", num_hidden_layers=2))
    init_text_from_bert(two)
    with pytest.raises(ValueError, match="hidden_size 48 vs 384"):
        init_text_from_bert(UniterModel(UniterConfig.from_preset("uniter-mini", hidden_size=48,
                                                                    intermediate_size=64, num_hidden_layers=1)))
