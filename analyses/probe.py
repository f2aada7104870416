"""The fixed inputs that the behaviour analyses measure a model on, and what they measure.

    probe = build_probe(dataset, model.config, queries=50, candidates=10)
    states = probe_states(model.uniter, probe)                       # every chunk's hidden states, once
    base = probe_metrics(model, probe, [s[-1] for s in states])      # R@1, margin, MLM, WRA alignment
    final = [model.uniter.encode_from(layer, s[layer], c.batch["attn_masks"], gate) ...]

A probe holds three kinds of chunk (collated batches), built once so that every variant of a model (a head
removed, heads pruned, a checkpoint of another step) is measured on the same examples and the same masks:

  true      the first caption of each of the first `queries` images of the split, with its own image
  negative  the same captions, each with the images of the next `candidates - 1` queries (cyclically)
  mlm       the same captions with fixed word-piece masks (seed 0), with their own images

and METRICS, each higher-is-better or not:

  r1             share of captions whose own image has the largest match logit among its candidates; a tie with
                 k other candidates counts 1 / (k + 1), the chance a random tie-break picks the own image (a model
                 whose heads are all removed scores every candidate alike: chance, not a perfect R@1)
  margin         mean over captions of the own image's match logit minus the mean over the other candidates
                 (match logit: the ITM head's log-odds of "match")
  mlm_accuracy   share of masked word-pieces predicted right
  mlm_loss       cross-entropy per masked word-piece (lower is better)
  wra_alignment  WRA's transport plan over the final states of the true pairs: share of grounded word-pieces
                 whose largest mass lands on their own box (uniter_core.grounding's own-box rule)

GRADIENT_LOSSES say which differentiable loss stands behind each metric for gradient importance: the
cross-entropy of the own image among the candidates' match logits (retrieval), the MLM cross-entropy, and the OT
distance of the true pair (WRA).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from uniter_core.data.dataset import ImageTextDataset, collate
from uniter_core.errors import UserError
from uniter_core.grounding import alignment_hits
from uniter_core.runs import to_device
from uniter_core.tasks import MlmDataset, mlm_collate

# name -> +1 when higher is better, -1 when lower is better
METRICS = {"r1": 1, "margin": 1, "mlm_accuracy": 1, "mlm_loss": -1, "wra_alignment": 1}
METRIC_NAMES = {"r1": "retrieval R@1", "margin": "match-logit margin", "mlm_accuracy": "MLM accuracy",
                "mlm_loss": "MLM loss", "wra_alignment": "WRA alignment (own box)"}
GRADIENT_LOSSES = {"r1": "retrieval", "margin": "retrieval", "mlm_accuracy": "mlm", "mlm_loss": "mlm",
                   "wra_alignment": "wra"}


@dataclass
class Chunk:
    kind: str  # true | negative | mlm
    batch: dict  # collated (on the model's device)
    queries: list[int]  # the caption (query) of each row
    columns: list[int]  # the candidate column of each row (0: the caption's own image)
    examples: list[dict] = field(default_factory=list)  # the items (true chunks: for the alignment truth)


@dataclass
class Probe:
    split: str
    text_indices: list[int]  # dataset index of each query's caption
    image_ids: list[str]  # each query's own image
    candidates: int  # images per caption, its own included
    chunks: list[Chunk]

    @property
    def queries(self) -> int:
        return len(self.text_indices)

    @property
    def rows(self) -> int:
        return sum(len(c.queries) for c in self.chunks)


def first_captions(dataset: ImageTextDataset, limit: int) -> list[int]:
    """The first caption of each of the first `limit` images of the split (dataset order)."""
    first: dict[str, int] = {}
    for index, text in enumerate(dataset.texts):
        first.setdefault(text["image_id"], index)
    return list(first.values())[:limit]


def build_probe(dataset: ImageTextDataset, config, queries: int = 50, candidates: int = 10,
                batch_size: int = 128, device="cpu") -> Probe:
    """The probe of a split (module docstring): `queries` captions of different images, `candidates` images
    each (fewer when the split has fewer images), in chunks of at most `batch_size` rows."""
    if queries < 1 or candidates < 1 or batch_size < 1:
        raise UserError("--queries, --candidates and --batch-size must each be at least 1")
    text_indices = first_captions(dataset, queries)
    if not text_indices:
        raise UserError(f"{dataset.text_file}: the split holds no captions")
    n = len(text_indices)
    candidates = min(candidates, n)
    items = [dataset[i] for i in text_indices]
    image_ids = [str(item["image_id"]) for item in items]
    images = {image_id: dataset.get_image(image_id) for image_id in image_ids}
    mlm = MlmDataset(dataset, config.mask_token_id, (config.first_word_piece_id, config.vocab_size),
                     config.mlm_prob, seed=0)
    chunks = []
    for start in range(0, n, batch_size):
        rows = list(range(start, min(n, start + batch_size)))
        chunks.append(Chunk("true", to_device(collate([items[q] for q in rows]), device), rows, [0] * len(rows),
                            [items[q] for q in rows]))
        chunks.append(Chunk("mlm", to_device(mlm_collate([mlm[text_indices[q]] for q in rows]), device), rows,
                            [0] * len(rows)))
    negatives = [(q, c) for q in range(n) for c in range(1, candidates)]
    for start in range(0, len(negatives), batch_size):
        part = negatives[start:start + batch_size]
        examples = [{**items[q], **images[image_ids[(q + c) % n]]} for q, c in part]
        chunks.append(Chunk("negative", to_device(collate(examples), device), [q for q, _ in part],
                            [c for _, c in part]))
    return Probe(dataset.split, text_indices, image_ids, candidates, chunks)


def probe_states(uniter, probe: Probe) -> list[tuple[torch.Tensor, ...]]:
    """Per chunk, the hidden states (embeddings first, then every layer) of the unchanged model."""
    with torch.inference_mode():
        return [uniter.forward_batch(c.batch, output_hidden_states=True).hidden_states for c in probe.chunks]


def at_least_fp32(values: torch.Tensor) -> torch.Tensor:
    """fp16 / bf16 values as fp32 (what the metrics are summed in); fp32 and fp64 stay as they are."""
    return values.float() if values.dtype in (torch.float16, torch.bfloat16) else values


def match_logits(model, final: torch.Tensor) -> torch.Tensor:
    """The ITM head's log-odds of "match" [B] from final states [B, L, H]."""
    scores = at_least_fp32(model.itm_output(model.uniter.pooler(final)))
    return scores[:, 1] - scores[:, 0]


def candidate_logits(model, probe: Probe, finals: list[torch.Tensor]) -> torch.Tensor:
    """[queries, candidates] match logits, column 0 the caption's own image."""
    logits = at_least_fp32(finals[0].new_zeros(probe.queries, probe.candidates))
    for chunk, final in zip(probe.chunks, finals):
        if chunk.kind != "mlm":
            logits[chunk.queries, chunk.columns] = match_logits(model, final)
    return logits


def recall_at_1(logits: torch.Tensor) -> float:
    """R@1 of [queries, candidates] logits with the right candidate in column 0, ties broken at random (in
    expectation): 1 / (1 + ties) for a caption that no candidate beats."""
    own = logits[:, :1]
    beaten = (logits[:, 1:] > own).any(1)
    ties = (logits[:, 1:] == own).sum(1).double()
    return float(torch.where(beaten, 0.0, 1.0 / (1.0 + ties)).mean())


def mlm_scores(model, chunk: Chunk, final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores [n_masked, vocab], labels [n_masked], row of each masked piece) of an mlm chunk."""
    labels = chunk.batch["txt_labels"]
    masked = labels != -1
    scores = at_least_fp32(model.cls(final[:, :labels.size(1)][masked]))
    rows = masked.nonzero()[:, 0]
    return scores, labels[masked], rows


def probe_metrics(model, probe: Probe, finals: list[torch.Tensor]) -> dict[str, float]:
    """METRICS of the final states of every chunk (in probe.chunks order)."""
    with torch.inference_mode():
        logits = candidate_logits(model, probe, finals)
        r1 = recall_at_1(logits)
        margin = float((logits[:, 0] - logits[:, 1:].mean(1)).double().mean()) if probe.candidates > 1 else 0.0
        right = pieces = 0
        loss = 0.0
        hits = grounded = 0
        for chunk, final in zip(probe.chunks, finals):
            if chunk.kind == "mlm":
                scores, labels, _ = mlm_scores(model, chunk, final)
                right += int((scores.argmax(-1) == labels).sum())
                loss += float(F.cross_entropy(scores, labels, reduction="sum"))
                pieces += int(labels.numel())
            elif chunk.kind == "true":
                h, g, _ = alignment_hits(final, chunk.batch, chunk.examples, model.config)
                hits, grounded = hits + h, grounded + g
    return {"r1": r1, "margin": margin, "mlm_accuracy": right / max(pieces, 1), "mlm_loss": loss / max(pieces, 1),
            "wra_alignment": hits / max(grounded, 1)}


def retrieval_weights(logits: torch.Tensor) -> torch.Tensor:
    """d(retrieval loss of query q)/d(match logit [q, c]) for the cross-entropy of column 0 among a query's
    candidates: softmax minus one-hot. Multiplying a chunk's logits by these (held fixed) and back-propagating
    gives the retrieval loss's gradient through that chunk alone, so chunks need no common graph."""
    weights = at_least_fp32(logits).softmax(1)
    weights[:, 0] -= 1.0
    return weights


def bare_forward_seconds(model, dataset, indices: list[int], batch_size: int) -> float:
    """Seconds of one plain forward pass (the training path: no attention kept, no hidden states) over the
    dataset items `indices`, the faster of two after a warm-up batch: what an analysis's cost over the same
    examples is measured against."""
    import time

    from uniter_core.runs import to_device as on_device
    batches = [on_device(collate([dataset[i] for i in indices[s:s + batch_size]]), model.device)
               for s in range(0, len(indices), batch_size)]
    times = []
    with torch.inference_mode():
        model.uniter.forward_batch(batches[0])
        for _ in range(2):
            start = time.perf_counter()
            for batch in batches:
                model.uniter.forward_batch(batch)
            times.append(time.perf_counter() - start)
    return min(times)
