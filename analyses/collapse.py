"""How alike the hidden states are, layer by layer, and how much attention crosses between the modalities.

    python -m analyses.collapse --run runs/pretrain-mini [--checkpoint step_00000100|init] [--split val] [--examples 48]

The diagnostics of image-text matching's plateau (BENCHMARKS.md, the demo pre-training run). Per layer (0 is the
embedding output), averaged over examples, within each example:

  word_word, region_region, word_region   mean cosine between the states of different word-pieces ([CLS] and
                                          [SEP] excluded), of different regions, and of a word-piece and a region
  word_to_regions, cls_to_regions,        share of the attention of word-piece rows, of the [CLS] row and of
  region_to_text                          region rows that lands on the other modality (all heads averaged)
  word_box_ot                             WRA's transport plan computed on this layer's states: share of the
                                          grounded word-pieces whose largest mass lands on their own box (as
                                          the evaluation's alignment accuracy does on the last layer; chance
                                          level printed in the header)

Cosines near 1 in the last layers mean the states have collapsed to one direction: WRA's cosine costs are then
about zero for matching and mismatched pairs alike, and ITM's [CLS] barely changes between examples.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from uniter_core.cli import exit_with, run_command
from uniter_core.data.dataset import ImageTextDataset, collate
from uniter_core.evaluate import alignment_hits
from uniter_core.io import write_json
from uniter_core.outputs import check_output_file, first_line
from uniter_core.model import SequenceLayout
from uniter_core.pretrain import UniterForPretraining
from uniter_core.runs import build_model, load_run

COLUMNS = ("word_word", "region_region", "word_region", "word_to_regions", "cls_to_regions", "region_to_text",
           "word_box_ot")


def _mean_off_diagonal(similarity: torch.Tensor) -> float:
    n = similarity.size(0)
    return float((similarity.sum() - similarity.diagonal().sum()) / (n * n - n)) if n > 1 else float("nan")


@torch.inference_mode()
def layer_geometry(uniter, batch: dict, examples: list[dict] | None = None) -> list[dict[str, float]]:
    """One row per layer (embeddings first) with the COLUMNS averaged over the batch's examples; the attention
    columns are absent from the embeddings row, word_box_ot without `examples` (the collated ones, whose
    'alignment' gives the grounded word-pieces) or when none is grounded."""
    output = uniter.forward_batch(batch, output_hidden_states=True, output_attentions=True)
    layout = SequenceLayout.from_batch(batch)
    rows = []
    for layer, hidden in enumerate(output.hidden_states):
        hits, grounded, chance = alignment_hits(hidden, batch, examples, uniter.config) if examples else (0, 0, 0.0)
        values: dict[str, list[float]] = {c: [] for c in COLUMNS}
        probs = output.attentions[layer - 1].float() if layer else None
        for k in range(len(layout)):
            cls, text = layout.cls_index(k), layout.text_slice(k)
            words, regions = layout.word_slice(k), layout.region_slice(k)
            word_states = F.normalize(hidden[k, words].float(), dim=-1)
            region_states = F.normalize(hidden[k, regions].float(), dim=-1)
            values["word_word"].append(_mean_off_diagonal(word_states @ word_states.T))
            values["region_region"].append(_mean_off_diagonal(region_states @ region_states.T))
            values["word_region"].append(float((word_states @ region_states.T).mean()))
            if probs is not None:
                values["word_to_regions"].append(float(probs[k, :, words, regions].sum(-1).mean()))
                values["cls_to_regions"].append(float(probs[k, :, cls, regions].sum(-1).mean()))
                values["region_to_text"].append(float(probs[k, :, regions, text].sum(-1).mean()))
        row = {"layer": layer, **{c: sum(v) / len(v) for c, v in values.items() if v}}
        if grounded:
            row.update(word_box_ot=hits / grounded, grounded_words=grounded, word_box_chance=chance / grounded)
        rows.append(row)
    return rows


def collapse_command(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="run folder written by uniter_core.train")
    p.add_argument("--checkpoint", help="checkpoint name under RUN/checkpoints, e.g. step_00000100 (default: newest), "
                                        "or init: the run's initialisation (its config and seed, before step 1)")
    p.add_argument("--split", default="val")
    p.add_argument("--examples", type=int, default=48, help="the first N examples of the split")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.json:
        check_output_file(args.json, "analyses.collapse", lambda f: first_line(f).startswith(("[", "{")) and
                          '"layer"' in f.read_text(encoding="utf-8")[:2000], what="--json")
    if args.examples < 1:
        print("error: --examples must be at least 1", file=sys.stderr)
        return 2
    try:
        run = load_run(args.run, warn=lambda message: print(message, file=sys.stderr))
        model, corpus, config = run.model, run.corpus, run.config
        if args.checkpoint == "init":
            config.data.corpus = str(corpus)
            torch.manual_seed(config.run.seed)  # as uniter_core.train seeds before it builds the model
            model = build_model(config)
        elif args.checkpoint:
            model = UniterForPretraining.from_pretrained(args.run / "checkpoints" / args.checkpoint / "model")
        dataset = ImageTextDataset(corpus, args.split, config.data.max_text_len, config.data.max_regions)
        dataset.check_fits(model.config)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if len(dataset) == 0:
        print(f"error: --split {args.split}: the split {dataset.text_file} holds no examples; choose another "
              f"--split", file=sys.stderr)
        return 2
    examples = [dataset[i] for i in range(min(args.examples, len(dataset)))]
    rows = layer_geometry(model.uniter.eval(), collate(examples), examples)
    grounded = (f", {rows[0]['grounded_words']} grounded word-pieces (word_box_ot chance level "
                f"{rows[0]['word_box_chance']:.3f})" if "grounded_words" in rows[0] else "")
    print(f"{args.run} {args.checkpoint or '(newest checkpoint)'}, {len(examples)} {args.split} examples{grounded}")
    print("layer " + " ".join(f"{c:>15}" for c in COLUMNS))
    for row in rows:
        print(f"{row['layer']:>5} " + " ".join(f"{row[c]:>15.3f}" if c in row else f"{'':>15}" for c in COLUMNS))
    if args.json:
        write_json(args.json, rows)
    return 0


def main(argv=None) -> int:
    return run_command(collapse_command, argv)


if __name__ == "__main__":
    exit_with(main())
