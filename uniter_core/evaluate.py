"""Evaluate a pre-trained UNITER: retrieval by ITM score, MLM, MRC-kl, word-region grounding and collapse.

    python -m uniter_core.evaluate --run runs/pretrain-mini [--split test] [--which pretrained|baseline|both]

- Retrieval: the first caption of each of up to 100 images of the split, all caption x image pairs scored by
  the ITM head (probability of "match"); text->image and image->text recall at 1, 5 and 10.
- MLM: cross-entropy and accuracy on masked word-pieces (fixed masks, seed 0), and the accuracy apart for
  grounded object words (the caption links them to a box: predicting them needs the image) and the rest.
- MRC-kl: mean KL(detector soft labels || prediction) per masked region (fixed masks).
- Grounding (uniter_core.grounding), for every word-piece with a ground-truth box: WRA alignment, does the
  region receiving most of its transport mass (IPOT plan over the final-layer states of the true pair) belong
  to that box (alignment_accuracy), or cover its object with IoU >= 0.5 (alignment_covering, where the corpus
  records region_object); the attention pointing game per layer (pointing_layerN: the region with the largest
  head-averaged attention from the word-piece covers its object). Chance levels beside each.
- Collapse: mean cosine between final states of different word-pieces, regions, and word-piece vs region.
Results go to runs/NAME/eval_<split>.json (and the baseline, the un-pretrained initialisation, to
eval_<split>_baseline.json).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from uniter_core.cli import exit_with, run_command, warn
from uniter_core.data.dataset import ImageTextDataset, alignment_by_position, collate
from uniter_core.errors import UserError
from uniter_core.io import write_json
from uniter_core.grounding import COSINES, grounding_tally
from uniter_core.pretrain import UniterForPretraining
from uniter_core.runs import apply_speed_settings, initial_model, newest_loadable_model, read_run_config, run_corpus, to_device
from uniter_core.tasks import MlmDataset, MrmDataset, mlm_collate, mrm_collate
from uniter_core.train_config import TrainConfig


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.inference_mode()
def itm_score_matrix(model, dataset: ImageTextDataset, text_indices: list[int], image_ids: list[str],
                     batch_size: int = 128) -> torch.Tensor:
    """S[t, i] = ITM probability that caption t matches image i."""
    images = {image_id: dataset.get_image(image_id) for image_id in image_ids}
    pairs = [(t, i) for t in range(len(text_indices)) for i in range(len(image_ids))]
    texts = {t: dataset[text_indices[t]] for t in range(len(text_indices))}
    scores = torch.empty(len(text_indices), len(image_ids))
    for chunk in _batches(pairs, batch_size):
        examples = [{**texts[t], **images[image_ids[i]]} for t, i in chunk]
        batch = to_device(collate(examples), model.device)
        hidden = model.uniter.forward_batch(batch).last_hidden_state
        probs = model.itm_output(model.uniter.pooler(hidden)).float().softmax(-1)[:, 1].cpu()
        for (t, i), p in zip(chunk, probs):
            scores[t, i] = p
    return scores


def recall_at(scores: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """scores[q, c] with the right candidate of query q at c = q."""
    truth = scores.diagonal().unsqueeze(1)
    rank = (scores > truth).sum(dim=1)  # ties count in the query's favour
    return {f"r{k}": float((rank < k).float().mean()) for k in ks}


def retrieval(model, dataset: ImageTextDataset, n_candidates: int = 100) -> dict:
    first_caption: dict[str, int] = {}
    for index, text in enumerate(dataset.texts):
        first_caption.setdefault(text["image_id"], index)
    image_ids = list(first_caption)[:n_candidates]
    scores = itm_score_matrix(model, dataset, [first_caption[i] for i in image_ids], image_ids)
    t2i, i2t = recall_at(scores), recall_at(scores.T)
    return {"candidates": len(image_ids), **{f"t2i_{k}": v for k, v in t2i.items()},
            **{f"i2t_{k}": v for k, v in i2t.items()}}


@torch.inference_mode()
def masked_modelling(model, dataset: ImageTextDataset, max_examples: int = 500, batch_size: int = 64) -> dict:
    """MLM loss and accuracy on fixed masks, apart for grounded word-pieces (those the caption links to an
    object: predicting them needs the image) and the rest; MRC-kl on fixed region masks."""
    config = model.config
    indices = list(range(min(len(dataset), max_examples)))
    mlm = MlmDataset(dataset, config.mask_token_id, (config.first_word_piece_id, config.vocab_size),
                     config.mlm_prob, seed=0)
    mrm = MrmDataset(dataset, config.mrm_prob, seed=0)
    correct = {"objects": 0, "rest": 0}
    total = {"objects": 0, "rest": 0}
    loss_sum = kl_sum = regions = 0.0
    for chunk in _batches(indices, batch_size):
        examples = [mlm[i] for i in chunk]
        batch = to_device(mlm_collate(examples), model.device)
        scores = model(batch, "mlm", compute_loss=False).float()
        masked = batch["txt_labels"] != -1
        grounded = torch.zeros_like(masked)
        for b, example in enumerate(examples):
            for position in alignment_by_position(example):
                grounded[b, position] = True
        labels, is_object = batch["txt_labels"][masked], grounded[masked]
        right = scores.argmax(-1) == labels
        loss_sum += float(F.cross_entropy(scores, labels, reduction="sum"))
        for part, selected in (("objects", is_object), ("rest", ~is_object)):
            correct[part] += int(right[selected].sum())
            total[part] += int(selected.sum())
        batch = to_device(mrm_collate([mrm[i] for i in chunk]), model.device)
        kl = model(batch, "mrckl")
        kl_sum += float(kl.sum())
        regions += kl.size(0)
    targets = total["objects"] + total["rest"]
    return {"mlm_loss": loss_sum / max(targets, 1),
            "mlm_accuracy": (correct["objects"] + correct["rest"]) / max(targets, 1), "mlm_targets": targets,
            "mlm_accuracy_objects": correct["objects"] / max(total["objects"], 1),
            "mlm_object_targets": total["objects"],
            "mlm_accuracy_rest": correct["rest"] / max(total["rest"], 1),
            "mrckl_kl": kl_sum / max(regions, 1), "mrm_regions": int(regions)}


@torch.inference_mode()
def grounding(model, dataset: ImageTextDataset, max_examples: int = 500, batch_size: int = 64) -> dict:
    """Word-region grounding of the true pairs (uniter_core.grounding): WRA's plan on the final states under the
    own-box rule (alignment_accuracy) and, where the corpus records region_object, the covering rule; the
    attention pointing game per encoder layer (covering rule where available, else own box); and the mean
    cosines of the final states (collapse). Captions without an alignment count only for the cosines."""
    grounded = [i for i, t in enumerate(dataset.texts) if t.get("alignment")][:max_examples]
    tally = grounding_tally(model, dataset, grounded or list(range(min(len(dataset), max_examples))),
                            batch_size)
    last = model.config.num_hidden_layers
    accuracy, chance, words = tally.accuracy((last, "plan", "box"))
    results = {"alignment_accuracy": accuracy if words else 0.0, "alignment_chance": chance if words else 0.0,
               "aligned_words": words}
    accuracy, chance, words = tally.accuracy((last, "plan", "covering"))
    if words:
        results.update(alignment_covering=accuracy, alignment_covering_chance=chance)
    rule = "covering" if words else "box"
    for layer in range(1, last + 1):
        accuracy, chance, words = tally.accuracy((layer, "attention", rule))
        if words:
            results[f"pointing_layer{layer}"] = accuracy
            results.update(pointing_chance=chance, pointing_rule=rule)
    for name in COSINES:  # absent when no example has two states of a kind (a NaN would block the file)
        value = tally.mean_cosine(last, name)
        if not math.isnan(value):
            results[f"cosine_{name}"] = value
    return results


def evaluate_model(model: UniterForPretraining, corpus: Path, split: str, config: TrainConfig | None = None,
                   n_candidates: int = 100) -> dict:
    config = config or TrainConfig()
    dataset = ImageTextDataset(corpus, split, config.data.max_text_len, config.data.max_regions)
    dataset.check_fits(model.config)
    if not len(dataset):
        raise ResultsError(f"{dataset.text_file}: the split holds no captions to evaluate")
    dataset.store.check_finite(dataset.image_ids)  # NaN features would only show up as NaN results
    was_training = model.training
    model.eval()
    try:
        return {**retrieval(model, dataset, n_candidates), **masked_modelling(model, dataset),
                **grounding(model, dataset)}
    finally:
        model.train(was_training)


def write_results(path: Path, results: dict) -> None:
    """Write evaluation results only when every number is finite; otherwise the earlier file stays."""
    bad = [k for k, v in results.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ResultsError(f"{path} not written: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} "
                           f"{results[bad[0]]} (an empty split, or a model with non-finite weights?)")
    write_json(path, results)


class ResultsError(UserError):
    """Results that must not replace a good file (NaN, incomplete)."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="run folder written by uniter_core.train")
    p.add_argument("--split", default="test")
    p.add_argument("--which", choices=("pretrained", "baseline", "both"), default="pretrained",
                   help="the run's newest checkpoint, the un-pretrained initialisation of its config, or both")
    p.add_argument("--candidates", type=int, default=100, help="retrieval candidates (default 100)")
    args = p.parse_args(argv)
    if args.candidates < 1:
        p.error("--candidates must be at least 1")
    return args


def evaluate_run(run_dir: Path, split: str = "test", which: str = "pretrained", candidates: int = 100,
                 warn=None) -> dict[str, dict]:
    """Evaluate a run folder's newest intact checkpoint ("pretrained"), its initialisation ("baseline") or
    both, writing eval_<split>.json / eval_<split>_baseline.json into it; returns {name: results}.
    `warn(message)` hears about damaged checkpoints passed over."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"--run {run_dir} is not a folder")
    if not (run_dir / "train_config.json").exists():
        raise UserError(f"--run {run_dir} is not a run folder (no train_config.json); train one with "
                        f"python -m uniter_core.train")
    config = read_run_config(run_dir)
    latest, trained = newest_loadable_model(run_dir, warn) if which != "baseline" else (None, None)
    if which != "baseline" and latest is None:
        raise UserError(f"--run {run_dir} holds no intact checkpoint (run uniter_core.train first, or "
                        f"--resume it)")
    corpus = run_corpus(run_dir, config)
    split_file = corpus / "txt_db" / f"{split}.jsonl"
    if not split_file.exists():
        known = sorted(p.stem for p in (corpus / "txt_db").glob("*.jsonl"))
        raise UserError(f"--split {split}: {split_file} does not exist (splits: {', '.join(known) or 'none'})")
    results = {}
    models = {"pretrained": lambda: trained,
              "baseline": lambda: initial_model(config, corpus)}
    for name, make in models.items():
        if which not in (name, "both"):
            continue
        model = make()  # the baseline: the run's own initialisation (its seed, its corpus)
        torch.manual_seed(0)  # the evaluation's own randomness (ITM negatives are drawn by their own generators)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = apply_speed_settings(model.to(device), config)  # as in the evaluation at the end of training
        result = evaluate_model(model, corpus, split, config, candidates)
        suffix = "" if name == "pretrained" else "_baseline"
        source = latest.name if name == "pretrained" else f"initialisation ({config.model.init})"
        write_results(run_dir / f"eval_{split}{suffix}.json", {"checkpoint": source, **result})
        results[name] = result
    return results


def _cli(argv=None) -> int:
    args = parse_args(argv)
    results = evaluate_run(args.run, args.split, args.which, args.candidates,
                           warn=warn)
    print(json.dumps(results, indent=1))
    return 0


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
