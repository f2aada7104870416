"""UniterModel: packing, attention maps and layout, SDPA vs eager, hook points, parameter names."""
from __future__ import annotations

import pytest
import torch

from factories import make_batch, make_examples, tiny_config
from uniter_core.data.dataset import collate
from uniter_core.model import SequenceLayout, UniterModel
from uniter_core.pretrain import UniterForPretraining


def test_parameter_names_are_the_official_ones():
    model = UniterForPretraining(tiny_config())
    names = set(model.state_dict())
    layer = "uniter.encoder.layer.1."
    expected = {
        "uniter.embeddings.word_embeddings.weight", "uniter.embeddings.position_embeddings.weight",
        "uniter.embeddings.token_type_embeddings.weight", "uniter.embeddings.LayerNorm.weight",
        "uniter.img_embeddings.img_linear.weight", "uniter.img_embeddings.img_layer_norm.bias",
        "uniter.img_embeddings.pos_layer_norm.weight", "uniter.img_embeddings.pos_linear.weight",
        "uniter.img_embeddings.mask_embedding.weight", "uniter.img_embeddings.LayerNorm.bias",
        layer + "attention.self.query.weight", layer + "attention.self.key.bias", layer + "attention.self.value.weight",
        layer + "attention.output.dense.weight", layer + "attention.output.LayerNorm.weight",
        layer + "intermediate.dense.weight", layer + "output.dense.bias", layer + "output.LayerNorm.weight",
        "uniter.pooler.dense.weight", "cls.predictions.bias", "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.LayerNorm.weight", "cls.predictions.decoder.weight", "feat_regress.weight",
        "feat_regress.bias", "feat_regress.net.0.weight", "feat_regress.net.2.weight",
        "region_classifier.net.0.weight", "region_classifier.net.2.bias", "region_classifier.net.3.weight",
        "itm_output.weight", "itm_output.bias"}
    assert expected <= names
    assert not any("hook" in n or "position_ids" in n for n in names)
    assert model.uniter.img_embeddings.mask_embedding.weight[0].abs().sum() == 0


@torch.no_grad()
def test_packed_forward_equals_each_example_alone():
    config = tiny_config()
    model = UniterModel(config).eval()
    examples = make_examples(config)
    batch = collate(examples)
    img_masks = torch.zeros(batch["img_feat"].shape[:2], dtype=torch.bool)
    img_masks[0, 1] = img_masks[2, 5] = True
    packed = model.forward_batch({**batch, "img_masks": img_masks}).last_hidden_state
    for i, example in enumerate(examples):
        alone = collate([example])
        out = model.forward_batch({**alone, "img_masks": img_masks[i:i + 1, :len(example["img_feat"])]})
        n = alone["attn_masks"].size(1)
        torch.testing.assert_close(packed[i, :n], out.last_hidden_state[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_attention_maps_and_layout_agree():
    config = tiny_config()
    model = UniterModel(config).eval()
    batch = make_batch(config)
    out = model.forward_batch(batch, output_attentions=True)
    layout = out.layout
    assert layout == SequenceLayout.from_inputs(batch["attn_masks"], batch["gather_index"],
                                                batch["input_ids"].size(1))  # derived without the lists
    assert layout.txt_lens == (5, 8, 3) and layout.num_bbs == (4, 2, 6) and layout.seq_len == 10
    assert len(out.attentions) == config.num_hidden_layers
    masks = layout.masks()
    for probs in out.attentions:
        assert probs.shape == (3, config.num_attention_heads, 10, 10)
        keys_real = masks["real"][:, None, None, :]
        assert torch.all(probs.masked_select(~keys_real) == 0)  # exactly zero on padded keys
        torch.testing.assert_close(probs.sum(-1), torch.ones(3, config.num_attention_heads, 10))
    for i in range(3):
        kinds = layout.kinds(i)
        assert kinds[layout.cls_index(i)] == "cls" and kinds[layout.sep_index(i)] == "sep"
        assert kinds[layout.word_slice(i)] == ["word"] * (layout.txt_lens[i] - 2)
        assert kinds[layout.region_slice(i)] == ["region"] * layout.num_bbs[i]
        assert kinds[layout.pad_slice(i)] == ["pad"] * (10 - layout.total_len(i))
        assert [k for k, m in zip(kinds, masks["region"][i]) if m] == ["region"] * layout.num_bbs[i]
        # the packed positions of the regions are exactly where gather_index points into the image block
        assert torch.all(batch["gather_index"][i, layout.region_slice(i)] >= batch["input_ids"].size(1))


@torch.no_grad()
def test_sdpa_and_eager_give_the_same_hidden_states():
    config = tiny_config()
    model = UniterModel(config).eval()
    batch = make_batch(config)
    sdpa = model.forward_batch(batch, output_hidden_states=True)
    eager = model.forward_batch(batch, output_hidden_states=True, output_attentions=True)
    assert sdpa.attentions is None and sdpa.layout is None
    assert len(sdpa.hidden_states) == config.num_hidden_layers + 1
    for a, b in zip(sdpa.hidden_states, eager.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sdpa_and_eager_agree_in_training_mode_without_dropout():
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = UniterModel(config).train()
    batch = make_batch(config)
    a = model.forward_batch(batch).last_hidden_state
    b = model.forward_batch(batch, output_attentions=True).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    a.sum().backward()
    assert model.encoder.layer[0].attention.self.query.weight.grad is not None


@torch.no_grad()
def test_attention_mask_is_the_official_additive_minus_10000():
    """Recompute layer 0's attention by hand, the official way: softmax(QK^T/sqrt(d) + (1 - mask) * -10000)."""
    config = tiny_config()
    model = UniterModel(config).eval()
    batch = make_batch(config)
    out, cache = model.run_with_cache(*[batch[k] for k in ("input_ids", "position_ids", "img_feat",
                                                              "img_pos_feat", "attn_masks", "gather_index")],
                                      output_attentions=True)
    _, only = model.run_with_cache(batch, names={"encoder.layer.1.hook_out"})
    assert list(only) == ["encoder.layer.1.hook_out"]
    torch.testing.assert_close(only["encoder.layer.1.hook_out"], out.last_hidden_state, atol=1e-5, rtol=1e-5)
    attention = model.encoder.layer[0].attention.self
    x = cache["hook_embeddings"]
    b, n, _ = x.shape
    q, k = (lin(x).view(b, n, 4, 8).transpose(1, 2) for lin in (attention.query, attention.key))
    scores = q @ k.transpose(-1, -2) / 8 ** 0.5 + (1.0 - batch["attn_masks"][:, None, None, :].float()) * -10000.0
    torch.testing.assert_close(out.attentions[0], scores.softmax(-1))
    torch.testing.assert_close(cache["encoder.layer.0.attention.self.hook_pattern"], out.attentions[0])
    torch.testing.assert_close(cache["encoder.layer.1.hook_out"], out.last_hidden_state)
    assert {"encoder.layer.0.hook_attn_out", "encoder.layer.1.attention.self.hook_pattern"} <= set(cache)


@torch.no_grad()
def test_region_masking_adds_only_row_one_of_the_mask_embedding():
    config = tiny_config()
    model = UniterModel(config).eval()
    emb = model.img_embeddings
    emb.mask_embedding.weight.data[0].fill_(5.0)  # must be ignored, as the official code zeroes row 0
    feat, pos = torch.randn(1, 3, config.img_dim), torch.rand(1, 3, 7)
    types = model.embeddings.token_type_embeddings(torch.ones(1, 3, dtype=torch.long))
    masks = torch.tensor([[False, True, False]])
    expected = emb(feat + masks.unsqueeze(-1) * emb.mask_embedding.weight[1], pos, types)
    torch.testing.assert_close(emb(feat, pos, types, masks), expected)
    torch.testing.assert_close(emb(feat, pos, types, torch.zeros_like(masks)), emb(feat, pos, types))


@torch.no_grad()
def test_text_only_and_image_only_inputs():
    config = tiny_config()
    model = UniterModel(config).eval()
    batch = make_batch(config)
    txt_mask = (batch["input_ids"] != 0).long()
    text = model(batch["input_ids"], batch["position_ids"], None, None, txt_mask, output_attentions=True)
    assert text.last_hidden_state.shape == (3, 8, 32) and text.layout.num_bbs == (0, 0, 0)
    img_mask = (batch["img_feat"].abs().sum(-1) > 0).long()
    image = model(None, None, batch["img_feat"], batch["img_pos_feat"], img_mask, output_attentions=True)
    assert image.last_hidden_state.shape == (3, 6, 32) and image.layout.txt_lens == (0, 0, 0)
    with pytest.raises(ValueError, match="gather_index"):
        model(batch["input_ids"], batch["position_ids"], batch["img_feat"], batch["img_pos_feat"],
              batch["attn_masks"])


@pytest.mark.parametrize("varlen", [False, True], ids=["padded-attention", "varlen-attention"])
def test_unpadded_encoder_matches_the_padded_one_on_real_positions_and_gradients(varlen):
    """In float64 and with seeded weights: the two paths sum in different orders, and in float32 a gradient
    summed over many positions (pos_linear.bias) can differ by more than a fixed tolerance for some weights."""
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = UniterModel(config).double().train()
    batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
             for k, v in make_batch(config).items()}
    real = batch["attn_masks"].bool()
    padded = model.forward_batch(batch).last_hidden_state
    # A random read-out, not pow(2).sum(): the final LayerNorm makes each row's sum of squares constant, so that
    # loss has near-zero gradients made of rounding noise.
    probe = torch.randn(padded[real].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (padded[real] * probe).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.unpad_tokens, model.varlen_attention = True, varlen
    unpadded = model.forward_batch(batch).last_hidden_state
    assert unpadded.shape == padded.shape
    torch.testing.assert_close(unpadded[real], padded[real], atol=1e-10, rtol=1e-10)
    assert unpadded[~real].abs().max() == 0  # padding rows come back as zeros
    (unpadded[real] * probe).sum().backward()
    for name, parameter in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(parameter.grad, grads[name], atol=1e-10, rtol=1e-8, msg=name)


def test_varlen_attention_applies_dropout_in_training_and_refuses_non_prefix_masks():
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    model = UniterModel(config)
    model.unpad_tokens = model.varlen_attention = True
    batch = make_batch(config)
    real = batch["attn_masks"].bool()
    model.eval()
    reference = model.forward_batch(batch).last_hidden_state
    model.varlen_attention = False
    torch.testing.assert_close(model.forward_batch(batch).last_hidden_state, reference, atol=1e-5, rtol=1e-5)
    model.varlen_attention = True
    model.train()
    torch.manual_seed(0)
    dropped = model.forward_batch(batch).last_hidden_state
    assert torch.isfinite(dropped).all()
    assert (dropped[real] - reference[real]).abs().max() > 1e-3  # attention dropout is active
    torch.manual_seed(0)
    torch.testing.assert_close(model.forward_batch(batch).last_hidden_state, dropped)  # and seeded
    holes = batch["attn_masks"].clone()
    holes[0, 1] = 0  # a gap inside the first row: not UNITER's packing
    with pytest.raises(ValueError, match="padding last"):
        model(batch["input_ids"], batch["position_ids"], batch["img_feat"], batch["img_pos_feat"], holes,
              batch["gather_index"])


def test_unpadded_switch_keeps_hooks_and_attentions_in_the_padded_layout():
    config = tiny_config()
    model = UniterModel(config).eval()
    model.unpad_tokens = True
    batch = make_batch(config)
    b, n = batch["attn_masks"].shape
    _, cache = model.run_with_cache(batch)
    assert cache["encoder.layer.0.hook_out"].shape == (b, n, config.hidden_size)
    assert model.unpad_tokens  # restored after the cached run
    out = model.forward_batch(batch, output_attentions=True, output_hidden_states=True)
    assert out.attentions[0].shape == (b, config.num_attention_heads, n, n)
    assert all(h.shape == (b, n, config.hidden_size) for h in out.hidden_states)


def test_feature_mean_is_subtracted_before_the_image_embedding():
    """feat_mean = m on features f computes what the official embedding (zeros) computes on f - m."""
    config = tiny_config()
    official = UniterModel(config).eval()
    centred = UniterModel(config).eval()
    centred.load_state_dict(official.state_dict())
    mean = torch.rand(config.img_dim)
    centred.img_embeddings.feat_mean.copy_(mean)
    batch = make_batch(config)
    shifted = {**batch, "img_feat": batch["img_feat"] - mean}
    with torch.no_grad():
        torch.testing.assert_close(centred.forward_batch(batch).last_hidden_state,
                                   official.forward_batch(shifted).last_hidden_state)
        assert not torch.allclose(centred.forward_batch(batch).last_hidden_state,
                                  official.forward_batch(batch).last_hidden_state)
    assert "img_embeddings.feat_mean" in centred.state_dict()  # saved with the weights
