"""Official checkpoint loading (strict, module./gamma-beta variants, encoder-only) and our save/load round trip."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from factories import make_examples, tiny_config
from uniter_core.checkpoint import CheckpointMismatchError
from uniter_core.model import UniterModel
from uniter_core.pretrain import UniterForPretraining
from uniter_core.tasks import itm_collate


def official_format(model, module_prefix=False, gamma_beta=False) -> dict:
    """The state dict as the official code saves it: every name, tied ones included, optionally with
    DistributedDataParallel's 'module.' and the old LayerNorm gamma/beta names."""
    out = {}
    for key, value in model.state_dict().items():
        is_norm = any(n in key for n in ("LayerNorm", "layer_norm", "net.2"))
        if gamma_beta and is_norm:
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        out[("module." if module_prefix else "") + key] = value.clone()
    return out


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("module_prefix,gamma_beta", [(False, False), (True, False), (False, True), (True, True)])
def test_official_pretraining_checkpoint_loads_strictly(tmp_path, module_prefix, gamma_beta):
    config = tiny_config()
    source = UniterForPretraining(config)
    path = tmp_path / "uniter-tiny.pt"
    torch.save(official_format(source, module_prefix, gamma_beta), path)
    loaded = UniterForPretraining.from_official_state_dict(path, config)
    assert loaded.heads_initialised == []
    assert_same_weights(source, loaded)
    assert loaded.cls.predictions.decoder.weight is loaded.uniter.embeddings.word_embeddings.weight


def test_encoder_only_checkpoint_leaves_the_heads_initialised(caplog):
    config = tiny_config()
    source = UniterForPretraining(config)
    encoder = {k[len("uniter."):]: v for k, v in source.state_dict().items() if k.startswith("uniter.")}
    encoder["embeddings.position_ids"] = torch.arange(64)[None]  # a buffer newer BERT files carry: ignored
    for state_dict in (encoder, {f"uniter.{k}": v for k, v in encoder.items()}):
        loaded = UniterForPretraining.from_official_state_dict(state_dict, config)
        assert_same_weights(source.uniter, loaded.uniter)
        assert "cls.predictions.transform.dense.weight" in loaded.heads_initialised
        assert "itm_output.weight" in loaded.heads_initialised
        assert "cls.predictions.decoder.weight" not in loaded.heads_initialised  # tied to the loaded embeddings
        assert loaded.cls.predictions.decoder.weight is loaded.uniter.embeddings.word_embeddings.weight
        assert not torch.equal(loaded.itm_output.weight, source.itm_output.weight)
    assert "heads left at their initialisation" in caplog.text


def test_checkpoint_that_does_not_fit_gets_one_error_listing_every_key():
    config = tiny_config()
    state_dict = official_format(UniterForPretraining(config))
    state_dict["itm_output.weight"] = torch.zeros(3, config.hidden_size)  # wrong shape
    del state_dict["region_classifier.net.3.bias"]  # missing
    state_dict["uniter.encoder.layer.7.output.dense.weight"] = torch.zeros(1)  # unexpected
    with pytest.raises(CheckpointMismatchError) as error:
        UniterForPretraining.from_official_state_dict(state_dict, config)
    message = str(error.value)
    assert "itm_output.weight (checkpoint [3, 32], model [2, 32])" in message
    assert "region_classifier.net.3.bias" in message and "uniter.encoder.layer.7.output.dense.weight" in message
    assert error.value.missing == ["region_classifier.net.3.bias"]
    assert error.value.unexpected == ["uniter.encoder.layer.7.output.dense.weight"]
    assert len(error.value.mismatched) == 1

    bigger = tiny_config(hidden_size=48, num_attention_heads=4)
    with pytest.raises(CheckpointMismatchError, match="shape-mismatched"):
        UniterForPretraining.from_official_state_dict(official_format(UniterForPretraining(config)), bigger)

    tied_apart = official_format(UniterForPretraining(config))
    tied_apart["feat_regress.weight"] = tied_apart["feat_regress.weight"] + 1.0
    with pytest.raises(CheckpointMismatchError, match="feat_regress.weight"):
        UniterForPretraining.from_official_state_dict(tied_apart, config)


def test_save_pretrained_round_trip_keeps_ties_and_outputs(tmp_path):
    config = tiny_config()
    model = UniterForPretraining(config).eval()
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
        model.uniter.img_embeddings.feat_mean.uniform_()  # a buffer, saved with the weights
    model.save_pretrained(tmp_path / "run")
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert "cls.predictions.decoder.weight" not in saved and "feat_regress.weight" not in saved
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model_type"] == "uniter"

    loaded = UniterForPretraining.from_pretrained(tmp_path / "run").eval()
    assert_same_weights(model, loaded)
    assert loaded.cls.predictions.decoder.weight is loaded.uniter.embeddings.word_embeddings.weight
    assert loaded.feat_regress.weight is loaded.uniter.img_embeddings.img_linear.weight
    batch = itm_collate([{**e, "target": 1} for e in make_examples(config)])
    with torch.no_grad():
        torch.testing.assert_close(model(batch, "itm", compute_loss=False)[0],
                                   loaded(batch, "itm", compute_loss=False)[0])

    encoder = UniterModel.from_pretrained(tmp_path / "run")  # the encoder alone out of a pre-training run
    assert_same_weights(model.uniter, encoder)
    encoder.save_pretrained(tmp_path / "encoder")
    assert_same_weights(encoder, UniterModel.from_pretrained(tmp_path / "encoder"))


def test_from_pretrained_refuses_folders_that_do_not_fit(tmp_path):
    config = tiny_config()
    UniterForPretraining(config).save_pretrained(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="config.json"):
        UniterForPretraining.from_pretrained(tmp_path)
    values = json.loads((tmp_path / "run" / "config.json").read_text())
    values["num_region_classes"] = 5
    (tmp_path / "run" / "config.json").write_text(json.dumps(values))
    with pytest.raises(CheckpointMismatchError, match="region_classifier.net.3.weight"):
        UniterForPretraining.from_pretrained(tmp_path / "run")


def test_checkpoints_without_a_feature_mean_load_with_zeros(tmp_path):
    """Official checkpoints and folders saved before feat_mean existed: the buffer stays at zeros (no centring).
    That it travels with the weights otherwise is part of the round-trip test above."""
    config = tiny_config()
    model = UniterForPretraining(config)
    model.save_pretrained(tmp_path / "run")
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    del weights["uniter.img_embeddings.feat_mean"]
    save_file(weights, str(tmp_path / "run" / "model.safetensors"))
    with torch.no_grad():
        model.uniter.img_embeddings.feat_mean.fill_(1.0)  # must not leak into what is loaded
    older = UniterForPretraining.from_pretrained(tmp_path / "run")
    assert torch.count_nonzero(older.uniter.img_embeddings.feat_mean) == 0
    official = {k: v for k, v in model.state_dict().items() if not k.endswith("feat_mean")}
    assert torch.count_nonzero(UniterForPretraining.from_official_state_dict(
        official, config).uniter.img_embeddings.feat_mean) == 0
