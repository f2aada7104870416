"""Pre-training heads (official names and shapes) and the MLM-head initialisation used for the MiniLM start.

- `UniterMLMHead` (`cls`): BERT's transform (dense, GELU, LayerNorm), then a decoder tied to the word
  embeddings plus an output bias.
- `RegionFeatureRegression` (`feat_regress`): Linear, GELU, LayerNorm, then a linear map with the transposed
  `img_linear` weight (tied) and its own bias, back to region-feature space.
- `RegionClassification` (`region_classifier`): Linear, GELU, LayerNorm, Linear to the region classes.

`fit_mlm_head` explains how a sentence-transformer without MLM weights gets a calibrated MLM head.
"""
from __future__ import annotations

from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform

from uniter_core.config import UniterConfig
from uniter_core.data.dataset import collate
from uniter_core.masking import mask_text


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
PROBE_PASSES = 8  # maskings of each probe sentence (its pieces are few; the corpus's captions are many)
SAMPLED_OTHER_PIECES = 512  # word-pieces outside the fit's targets that the fitted softmax also ranks
RIVALS_PER_ROW = 8  # and each row's best-scoring wrong pieces, found over the whole vocabulary
FIT_ROUNDS = 2  # fits, each after adding the rivals of the head as it then is
UNSEEN_PSEUDO_COUNT = 0.01  # additive smoothing of the unigram prior that starts the output bias


def probe_examples(tokenizer, sentences=PROBE_SENTENCES) -> list[dict]:
    """The probe sentences as text-only examples ([CLS] pieces [SEP], no regions) for `fit_mlm_head`; examples
    are read text-only when they have no img_feat (a batch holds examples of one kind)."""
    return [{"input_ids": torch.tensor(ids, dtype=torch.long)} for ids in tokenizer(list(sentences))["input_ids"]]


@torch.no_grad()
def masked_states(model, examples: list[dict], passes: int = 1, seed: int = 0,
                  batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(final hidden states [N, H] at the masked word-pieces, their original pieces [N]) of the encoder in eval
    mode, masking every example `passes` times as MLM does (15 %: 80 % [MASK], 10 % random, 10 % kept).
    Examples with regions (img_feat, norm_bb) are read with them, so the states are the ones MLM will see."""
    config, encoder = model.config, model.uniter
    generator = torch.Generator().manual_seed(seed)
    masked = []
    for _ in range(passes):
        for example in examples:
            input_ids, labels = mask_text(example["input_ids"], generator, config.mask_token_id,
                                          (config.first_word_piece_id, config.vocab_size), config.mlm_prob)
            regions = {k: example[k] for k in ("img_feat", "norm_bb")} if "img_feat" in example else {}
            masked.append({"input_ids": input_ids, "txt_labels": labels, **regions, "image_id": "", "text_id": ""})
    masked.sort(key=lambda e: (len(e["input_ids"]), len(e.get("img_feat", ()))))  # little padding per batch
    was_training = encoder.training
    encoder.eval()
    states, targets = [], []
    try:
        for start in range(0, len(masked), batch_size):
            chunk = masked[start:start + batch_size]
            batch = collate(chunk) if "img_feat" in chunk[0] else _text_batch(chunk)
            batch = {k: v.to(encoder.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            labels = pad_sequence([e["txt_labels"] for e in chunk], batch_first=True,
                                                     padding_value=-1).to(encoder.device)
            hidden = encoder.forward_batch(batch).last_hidden_state[:, :labels.size(1)]
            states.append(hidden[labels != -1].float().cpu())
            targets.append(labels[labels != -1].cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(states), torch.cat(targets)


def _text_batch(examples: list[dict]) -> dict:
    """A text-only batch (no region keys: the encoder then reads text alone)."""
    input_ids = pad_sequence([e["input_ids"] for e in examples], batch_first=True, padding_value=0)
    attn_masks = pad_sequence([torch.ones(len(e["input_ids"]), dtype=torch.long) for e in examples],
                              batch_first=True, padding_value=0)
    return {"input_ids": input_ids, "position_ids": torch.arange(input_ids.size(1)).unsqueeze(0),
            "attn_masks": attn_masks}


def fit_mlm_head(model, examples: list[dict], probe: list[dict] = (), ridge: float = 10.0, max_iter: int = 40,
                 seed: int = 0) -> dict:
    """Initialise `model.cls` from the frozen encoder by cross-entropy, deterministic and offline.

    Why: the MiniLM we start from is a sentence-transformer; it ships no MLM head, and a random transform
    in front of the tied decoder predicts nothing. A head fitted only to match embeddings gets the argmax
    right but leaves the logits nearly flat (MLM loss near that of a uniform guess), so it is then refined
    by the loss MLM itself uses. `examples`: what MLM will read, e.g. the training split's captions with
    their regions; `probe`: text-only sentences (masked PROBE_PASSES times) that keep the head general.
    1. masked_states: the encoder's final states h at masked pieces and their original pieces y.
    2. Start: ridge regression (bias not penalised) h -> LayerNorm-standardised embedding of y, then per
       dimension the affine map back to the raw embedding (LayerNorm's gamma, beta), with one constant in
       the dense bias that keeps every pre-activation where GELU is the identity (LayerNorm removes it):
       the transform then estimates the masked piece's embedding, which the tied decoder scores.
    3. Output bias: the smoothed log unigram frequency of the targets (UNSEEN_PSEUDO_COUNT per piece).
    4. Refine transform and output bias by L-BFGS on the mean cross-entropy. A softmax over all 30k pieces
       costs too much per step on a CPU, so it runs over the pieces that matter: the targets, SAMPLED_OTHER_
       PIECES others drawn at random, and the rivals (each row's best-scoring wrong pieces over the whole
       vocabulary), found again after each of FIT_ROUNDS fits so that no piece the fit never ranks can win.
       The word embeddings (the decoder) stay as they are.
    Returns a report: rows, pieces ranked, ridge, and the cross-entropy over the whole vocabulary on the
    fit's rows at the start of step 4 and after it.
    """
    parts = [masked_states(model, list(rows), passes, seed + offset)
             for offset, (rows, passes) in enumerate(((examples, 1), (probe, PROBE_PASSES))) if rows]
    if not parts:
        raise ValueError("fit_mlm_head needs examples or probe sentences to fit on")
    states, targets = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    head = model.cls.predictions
    embedding = model.uniter.embeddings.word_embeddings.weight.detach().float().cpu()
    _ridge_start(head, states, embedding[targets], ridge)

    vocab_size = embedding.size(0)
    pieces = torch.cat([row["input_ids"][1:-1] for rows in (examples, probe) for row in rows])
    counts = torch.bincount(pieces, minlength=vocab_size).float()
    with torch.no_grad():
        head.bias.copy_(torch.log((counts + UNSEEN_PSEUDO_COUNT) / (counts.sum() + UNSEEN_PSEUDO_COUNT * vocab_size)))
    generator = torch.Generator().manual_seed(seed)
    others = torch.nonzero(counts == 0).squeeze(1)
    ranked = torch.cat([torch.nonzero(counts).squeeze(1),
                        others[torch.randperm(len(others), generator=generator)[:SAMPLED_OTHER_PIECES]]])
    device = head.bias.device
    h, y = states.to(device), targets.to(device)
    before, rivals = _full_softmax(head, h, y)
    for _ in range(FIT_ROUNDS):
        ranked = torch.unique(torch.cat([ranked, rivals.cpu()]))
        _fit_ranked(head, h, y, ranked.to(device), max_iter)
        after, rivals = _full_softmax(head, h, y)
    return {"examples": len(examples), "probe_sentences": len(probe), "masked_pieces": len(targets),
            "pieces_ranked": len(ranked), "ridge": ridge, "cross_entropy_start": before,
            "cross_entropy_fitted": after}


@torch.no_grad()
def _full_softmax(head, h: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> tuple[float, torch.Tensor]:
    """(mean cross-entropy over the whole vocabulary, the pieces that are some row's RIVALS_PER_ROW best
    wrong guesses) of the head on states h [N, H] with targets y [N]."""
    total, rivals = 0.0, []
    for start in range(0, len(h), chunk):
        logits = head(h[start:start + chunk]).float()
        target = y[start:start + chunk]
        total += float(F.cross_entropy(logits, target, reduction="sum"))
        logits[torch.arange(len(target)), target] = float("-inf")
        rivals.append(logits.topk(RIVALS_PER_ROW, dim=-1).indices.flatten())
    return total / len(h), torch.unique(torch.cat(rivals))


def _fit_ranked(head, h: torch.Tensor, y: torch.Tensor, ranked: torch.Tensor, max_iter: int) -> None:
    """L-BFGS on the cross-entropy of a softmax over the `ranked` pieces (which include every target)."""
    position = torch.full((head.bias.numel(),), -1, dtype=torch.long, device=h.device)
    position[ranked] = torch.arange(len(ranked), device=h.device)
    decoder, target = head.decoder.weight.detach()[ranked], position[y]
    parameters = list(head.transform.parameters())
    optimiser = torch.optim.LBFGS(parameters, lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        value = F.cross_entropy(head.transform(h) @ decoder.T + head.bias[ranked], target)
        value.backward()
        return value

    with torch.enable_grad():
        optimiser.step(closure)
    for p in parameters:
        p.grad = None


@torch.no_grad()
def _ridge_start(head, states: torch.Tensor, embeddings: torch.Tensor, ridge: float) -> None:
    """Step 2 of fit_mlm_head: the transform as a ridge-fitted estimate of the masked piece's embedding."""
    hidden, embeddings = states.double(), embeddings.double()
    standardised = F.layer_norm(embeddings, embeddings.shape[-1:])
    features = torch.cat([hidden, torch.ones(len(hidden), 1, dtype=torch.float64)], dim=1)
    penalty = ridge * torch.eye(features.size(1), dtype=torch.float64)
    penalty[-1, -1] = 0.0
    solution = torch.linalg.solve(features.T @ features + penalty, features.T @ standardised)
    weight, bias = solution[:-1].T, solution[-1]
    u = standardised - standardised.mean(0)
    gamma = (u * (embeddings - embeddings.mean(0))).sum(0) / (u * u).sum(0)
    beta = embeddings.mean(0) - gamma * standardised.mean(0)
    shift = max(0.0, GELU_IDENTITY_FLOOR - (features @ solution).min().item())
    transform = head.transform
    transform.dense.weight.copy_(weight)
    transform.dense.bias.copy_(bias + shift)
    transform.LayerNorm.weight.copy_(gamma)
    transform.LayerNorm.bias.copy_(beta)
