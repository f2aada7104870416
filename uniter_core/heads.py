"""Pre-training heads (official names and shapes) and the MLM-head initialisation used for the MiniLM start.

- `UniterMLMHead` (`cls`): BERT's transform (dense, GELU, LayerNorm), then a decoder tied to the word
  embeddings plus an output bias.
- `RegionFeatureRegression` (`feat_regress`): Linear, GELU, LayerNorm, then a linear map with the transposed
  `img_linear` weight (tied) and its own bias, back to region-feature space.
- `RegionClassification` (`region_classifier`): Linear, GELU, LayerNorm, Linear to the region classes.

`fit_mlm_head` explains how a sentence-transformer without MLM weights gets a working MLM head.
"""
from __future__ import annotations

from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform

from uniter_core.config import UniterConfig


class UniterLMPredictionHead(nn.Module):
    def __init__(self, config: UniterConfig, word_embedding_weight: nn.Parameter):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.weight = word_embedding_weight  # the same Parameter: tied, one storage, one gradient
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states)) + self.bias


class UniterMLMHead(nn.Module):
    def __init__(self, config: UniterConfig, word_embedding_weight: nn.Parameter):
        super().__init__()
        self.predictions = UniterLMPredictionHead(config, word_embedding_weight)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden_states)


class RegionFeatureRegression(nn.Module):
    """MRFR: hidden state of a masked region -> its original feature vector."""

    def __init__(self, config: UniterConfig, img_linear_weight: nn.Parameter):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.GELU(),
                                 nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps))
        self.weight = img_linear_weight  # [hidden, img_dim], shared with the image embedding, used transposed
        self.bias = nn.Parameter(torch.zeros(config.img_dim))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.linear(self.net(hidden_states), self.weight.t(), self.bias)


class RegionClassification(nn.Module):
    """MRC / MRC-kl: hidden state of a masked region -> logits over the detector's region classes."""

    def __init__(self, config: UniterConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.GELU(),
                                 nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
                                 nn.Linear(config.hidden_size, config.num_region_classes))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.net(hidden_states)


# Caption-style sentences (written for this project, none of them about mats) on which `fit_mlm_head` fits
# its probe. No final full stop, like most image captions. One a line in probe_sentences.txt; their order and
# exact text fix the fitted head bit for bit.
PROBE_SENTENCES = tuple(
    resources.files("uniter_core").joinpath("probe_sentences.txt").read_text(encoding="utf-8").splitlines())

GELU_IDENTITY_FLOOR = 10.0  # GELU(x) = x * Phi(x) equals x to float precision for x above this


@torch.no_grad()
def fit_mlm_head(model, tokenizer, sentences=PROBE_SENTENCES, ridge: float = 10.0, batch_size: int = 256) -> dict:
    """Initialise `model.cls` from the encoder itself: a closed-form linear probe, deterministic and offline.

    Why: the MiniLM we start from is a sentence-transformer; it ships no MLM head, and a random transform
    in front of the tied decoder predicts nothing. Procedure:
    1. For every word-piece of every probe sentence, run the encoder (text only, eval mode) with that one
       piece replaced by [MASK], and keep the final hidden state h at the masked position; its target is
       the LayerNorm-standardised embedding u of the original piece (the decoder is the embedding matrix).
    2. Ridge regression (bias not penalised) h -> u, solved in float64: weight W, bias b.
    3. Per embedding dimension, the least-squares affine map u -> e (the raw embedding): gamma, beta.
    4. transform.dense = (W, b + s) with one constant s that puts every fitted pre-activation above
       GELU_IDENTITY_FLOOR, where GELU is the identity; LayerNorm removes the constant s again, so
       transform(h) = gamma * standardise(W h + b) + beta, i.e. the probe's estimate of the masked piece's
       embedding, which the tied decoder scores against every word. Output bias: zero.
    Nothing is trained by gradient; the probe is a starting point that pre-training then refines.
    Returns a small report (counts, ridge, mean squared error of the fit).
    """
    mask_id = tokenizer.mask_token_id
    rows, positions, targets = [], [], []
    for ids in tokenizer(list(sentences))["input_ids"]:
        for j in range(1, len(ids) - 1):
            row = list(ids)
            row[j] = mask_id
            rows.append(row)
            positions.append(j)
            targets.append(ids[j])

    encoder = model.uniter
    was_training = encoder.training
    encoder.eval()
    device = encoder.device
    hidden = torch.empty(len(rows), model.config.hidden_size, dtype=torch.float64)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths per batch, little padding
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(rows[i]) for i in chunk)
        input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
        attn = torch.zeros(len(chunk), width, dtype=torch.long)
        for k, i in enumerate(chunk):
            input_ids[k, :len(rows[i])] = torch.tensor(rows[i])
            attn[k, :len(rows[i])] = 1
        out = encoder(input_ids.to(device), None, None, None, attn.to(device)).last_hidden_state
        picked = out[torch.arange(len(chunk)), torch.tensor([positions[i] for i in chunk])]
        hidden[torch.tensor(chunk)] = picked.double().cpu()
    encoder.train(was_training)

    embeddings = encoder.embeddings.word_embeddings.weight.detach().double().cpu()[torch.tensor(targets)]
    standardised = F.layer_norm(embeddings, embeddings.shape[-1:])
    features = torch.cat([hidden, torch.ones(len(hidden), 1, dtype=torch.float64)], dim=1)
    penalty = ridge * torch.eye(features.size(1), dtype=torch.float64)
    penalty[-1, -1] = 0.0
    solution = torch.linalg.solve(features.T @ features + penalty, features.T @ standardised)
    weight, bias = solution[:-1].T, solution[-1]

    u = standardised - standardised.mean(0)
    gamma = (u * (embeddings - embeddings.mean(0))).sum(0) / (u * u).sum(0)
    beta = embeddings.mean(0) - gamma * standardised.mean(0)

    pre_activation = features @ solution
    shift = max(0.0, GELU_IDENTITY_FLOOR - pre_activation.min().item())
    transform = model.cls.predictions.transform
    transform.dense.weight.copy_(weight)
    transform.dense.bias.copy_(bias + shift)
    transform.LayerNorm.weight.copy_(gamma)
    transform.LayerNorm.bias.copy_(beta)
    model.cls.predictions.bias.zero_()
    fitted = F.layer_norm(pre_activation, pre_activation.shape[-1:]) * gamma + beta
    return {"sentences": len(sentences), "masked_pieces": len(rows), "ridge": ridge,
            "mse": (fitted - embeddings).pow(2).mean().item()}
