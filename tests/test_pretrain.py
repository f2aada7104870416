"""UniterForPretraining: every loss against a hand-computed reference, gradients, tied weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from factories import make_examples, tiny_config
from uniter_core.model import SequenceLayout
from uniter_core.pretrain import UniterForPretraining, task_loss
from uniter_core.tasks import itm_collate, mlm_collate, mrm_collate


def mlm_batch(config):
    examples = make_examples(config)
    for e, positions in zip(examples, ([1, 3], [2], [1])):
        e["txt_labels"] = torch.full_like(e["input_ids"], -1)
        e["txt_labels"][positions] = e["input_ids"][positions]
        e["input_ids"] = e["input_ids"].clone()
        e["input_ids"][positions] = config.mask_token_id
    return mlm_collate(examples)


def mrm_batch(config):
    examples = make_examples(config)
    for e, positions in zip(examples, ([0, 2], [1], [0, 4, 5])):
        e["img_mask"] = torch.zeros(len(e["img_feat"]), dtype=torch.bool)
        e["img_mask"][positions] = True
    return mrm_collate(examples)


def itm_batch(config, targets=(1, 0, 1)):
    examples = make_examples(config)
    for e, t in zip(examples, targets):
        e["target"] = t
    return itm_collate(examples)


def hidden(model, batch):
    return model.uniter.forward_batch(batch).last_hidden_state


@torch.no_grad()
def test_mlm_loss_is_cross_entropy_on_masked_positions_only():
    config = tiny_config()
    model = UniterForPretraining(config).eval()
    batch = mlm_batch(config)
    loss = model(batch, "mlm")
    h = hidden(model, batch)
    positions = [(0, 1), (0, 3), (1, 2), (2, 1)]
    head = model.cls.predictions
    rows = torch.stack([h[b, p] for b, p in positions])
    logits = head.transform(rows) @ model.uniter.embeddings.word_embeddings.weight.T + head.bias
    labels = torch.stack([batch["txt_labels"][b, p] for b, p in positions])
    reference = -logits.double().log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
    assert loss.shape == (4,)
    torch.testing.assert_close(loss.double(), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(batch, "mlm", compute_loss=False), logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_mrfr_loss_is_squared_error_against_the_original_features():
    config = tiny_config()
    model = UniterForPretraining(config).eval()
    batch = mrm_batch(config)
    loss = model(batch, "mrfr")
    h = hidden(model, batch)
    layout = SequenceLayout.from_batch(batch)
    rows = torch.stack([h[b, layout.txt_lens[b] + r] for b, r in torch.nonzero(batch["img_masks"]).tolist()])
    weight = model.uniter.img_embeddings.img_linear.weight
    prediction = model.feat_regress.net(rows) @ weight + model.feat_regress.bias
    examples = make_examples(config)
    targets = torch.stack([examples[b]["img_feat"][r] for b, r in torch.nonzero(batch["img_masks"]).tolist()])
    assert loss.shape == (6, config.img_dim)
    torch.testing.assert_close(loss, (prediction - targets) ** 2, atol=1e-5, rtol=1e-5)
    assert torch.all(batch["img_feat"][batch["img_masks"]] == 0)  # the model never sees masked features


@pytest.mark.parametrize("background", [True, False])
@torch.no_grad()
def test_mrc_cross_entropy_excludes_background_only_when_there_is_one(background):
    config = tiny_config(region_class_has_background=background)
    model = UniterForPretraining(config).eval()
    batch = mrm_batch(config)
    batch["label_targets"][:, 0] = 1.0  # background dominates every soft label
    loss = model(batch, "mrc")
    logits = model(batch, "mrc", compute_loss=False)
    target = batch["label_targets"][:, 1:].argmax(-1) + 1 if background else torch.zeros(6, dtype=torch.long)
    reference = -logits.double().log_softmax(-1).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(loss.double(), reference, atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_mrckl_is_the_kl_divergence_per_masked_region_and_class():
    config = tiny_config()
    model = UniterForPretraining(config).eval()
    batch = mrm_batch(config)
    loss = model(batch, "mrckl")
    p = batch["label_targets"].double()
    log_q = model(batch, "mrckl", compute_loss=False).double().log_softmax(-1)
    elementwise = p * (p.log() - log_q)
    assert loss.shape == (6, config.num_region_classes)
    torch.testing.assert_close(loss.double(), elementwise, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(loss.double().sum(-1), (p * (p / log_q.exp()).log()).sum(-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(task_loss("mrckl", loss, 0.1)[0].double(), elementwise.mean(), atol=1e-7, rtol=1e-5)


@torch.no_grad()
def test_itm_loss_and_official_wra_formula():
    from uniter_core.ot import optimal_transport_dist
    config = tiny_config()
    model = UniterForPretraining(config).eval()
    batch = itm_batch(config, targets=(1, 0, 1))
    itm_loss, ot_loss = model(batch, "itm")
    scores, distances = model(batch, "itm", compute_loss=False)
    h = hidden(model, batch)
    pooled = torch.tanh(model.uniter.pooler.dense(h[:, 0]))
    torch.testing.assert_close(scores, model.itm_output(pooled))
    torch.testing.assert_close(itm_loss, F.cross_entropy(scores, batch["targets"], reduction="none"))
    layout = SequenceLayout.from_batch(batch)
    alone = torch.cat([optimal_transport_dist(h[b:b + 1, layout.text_slice(b)], h[b:b + 1, layout.region_slice(b)],
                                              None, None) for b in range(3)])
    torch.testing.assert_close(distances, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ot_loss, (alone[0] + alone[2] - alone[1]) / 3, atol=1e-5, rtol=1e-4)
    loss, parts = task_loss("itm", (itm_loss, ot_loss), 0.1)
    torch.testing.assert_close(loss, itm_loss.mean() + 0.1 * ot_loss)
    assert set(parts) == {"itm", "itm_xe", "itm_ot"}


@torch.no_grad()
def test_itm_without_wra():
    config = tiny_config(itm_ot_lambda=0.0)
    model = UniterForPretraining(config).eval()
    assert model(itm_batch(config), "itm")[1] is None
    model.config.itm_ot_lambda = 0.1
    plain = itm_collate([{**e, "target": 1} for e in make_examples(config)], ot=False)
    assert "txt_pad" not in plain and model(plain, "itm")[1] is None
    official = dict(itm_batch(config))
    official["ot_inputs"] = {"txt_pad": official.pop("txt_pad"), "img_pad": official.pop("img_pad")}
    assert model(official, "itm")[1] is not None  # the official nested layout is understood too


GRADIENTS = {  # task: (parameter prefixes that must get a gradient, prefixes that must not)
    "mlm": (("cls.predictions.", "uniter.embeddings.", "uniter.encoder.", "uniter.img_embeddings.img_linear"),
            ("feat_regress.net", "feat_regress.bias", "region_classifier", "itm_output", "uniter.pooler",
             "uniter.img_embeddings.mask_embedding")),
    "mrfr": (("feat_regress.", "uniter.img_embeddings.", "uniter.encoder."),
             ("cls.predictions.transform", "cls.predictions.bias", "region_classifier", "itm_output",
              "uniter.pooler")),
    "mrckl": (("region_classifier.", "uniter.img_embeddings.mask_embedding", "uniter.encoder."),
              ("cls.predictions.transform", "feat_regress.net", "feat_regress.bias", "itm_output",
               "uniter.pooler")),
    "itm": (("itm_output.", "uniter.pooler.", "uniter.encoder.", "uniter.img_embeddings.img_linear"),
            ("cls.predictions.transform", "feat_regress.net", "region_classifier",
             "uniter.img_embeddings.mask_embedding")),
}


@pytest.mark.parametrize("task", sorted(GRADIENTS))
def test_gradients_reach_exactly_the_task_parameters(task):
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = UniterForPretraining(config).train()
    batch = {"mlm": mlm_batch, "mrfr": mrm_batch, "mrckl": mrm_batch, "itm": itm_batch}[task](config)
    loss, _ = task_loss(task, model(batch, task), config.itm_ot_lambda)
    loss.backward()
    must, must_not = GRADIENTS[task]
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if name.startswith(must):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        if name.startswith(must_not):
            assert parameter.grad is None or parameter.grad.abs().sum() == 0, name
    mask_row0 = model.uniter.img_embeddings.mask_embedding.weight.grad
    assert mask_row0 is None or mask_row0[0].abs().sum() == 0


def test_tied_weights_share_storage_and_both_uses_contribute_gradient():
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = UniterForPretraining(config)
    word = model.uniter.embeddings.word_embeddings.weight
    img_linear = model.uniter.img_embeddings.img_linear.weight
    assert model.cls.predictions.decoder.weight is word and model.feat_regress.weight is img_linear
    assert model.cls.predictions.decoder.weight.data_ptr() == word.data_ptr()
    assert len({id(p) for p in model.parameters()}) == len(list(model.parameters()))
    batch = mlm_batch(config)
    model(batch, "mlm").sum().backward()
    unused_rows = torch.ones(config.vocab_size, dtype=torch.bool)
    unused_rows[batch["input_ids"].unique()] = False
    assert word.grad[unused_rows].abs().sum() > 0  # only the decoder use reaches these rows
    model.zero_grad()
    batch = mrm_batch(config)
    model.feat_regress(torch.randn(4, config.hidden_size)).sum().backward()
    assert img_linear.grad.abs().sum() > 0  # the transposed use in feat_regress reaches the embedding weight
    model.zero_grad()
    model(batch, "mrfr").sum().backward()
    with torch.no_grad():
        word[:] = 0.5
    assert torch.all(model.cls.predictions.decoder.weight == 0.5)


def test_unknown_task_is_refused():
    config = tiny_config()
    with pytest.raises(ValueError, match="unknown pre-training task 'wra'"):
        UniterForPretraining(config)(mlm_batch(config), "wra")


@pytest.mark.parametrize("task", ["mlm", "mrfr", "mrc", "mrckl", "itm"])
def test_every_task_runs_under_bf16_autocast(task):
    """The trainer's mixed precision: losses (and WRA) come out in fp32 and back-propagate."""
    config = tiny_config()
    model = UniterForPretraining(config)
    batch = {"mlm": mlm_batch, "itm": itm_batch}.get(task, mrm_batch)(config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(batch, task)
        loss, _ = task_loss(task, output, config.itm_ot_lambda)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    if task == "itm":
        assert output[1].dtype == torch.float32
    loss.backward()
    assert model.uniter.encoder.layer[0].attention.self.query.weight.grad is not None


@pytest.mark.parametrize("varlen", [False, True], ids=["padded-attention", "varlen-attention"])
@pytest.mark.parametrize("task", ["mlm", "mrfr", "mrc", "mrckl", "itm"])
def test_every_task_loss_is_unchanged_by_the_unpadded_encoder(task, varlen):
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = UniterForPretraining(config).train()
    batch = {"mlm": mlm_batch, "itm": itm_batch}.get(task, mrm_batch)(config)
    padded, _ = task_loss(task, model(batch, task), config.itm_ot_lambda)
    model.uniter.unpad_tokens, model.uniter.varlen_attention = True, varlen
    unpadded, _ = task_loss(task, model(batch, task), config.itm_ot_lambda)
    torch.testing.assert_close(unpadded, padded, atol=1e-5, rtol=1e-5)
