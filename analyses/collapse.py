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
from pathlib import Path

import torch

from analyses.errors import as_input_error
from uniter_core.cli import exit_with, run_command, warn
from uniter_core.data.dataset import ImageTextDataset, collate
from uniter_core.errors import UserError
from uniter_core.grounding import alignment_hits, state_cosines
from uniter_core.io import write_json
from uniter_core.model import SequenceLayout
from uniter_core.outputs import check_output_file, first_line
from uniter_core.runs import initial_model, load_finite_model, load_run
from uniter_core.train_state import CheckpointError

COLUMNS = ("word_word", "region_region", "word_region", "word_to_regions", "cls_to_regions", "region_to_text",
           "word_box_ot")


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
            for name, value in state_cosines(hidden, layout, k).items():
                values[name].append(value)
            if probs is not None:
                values["word_to_regions"].append(float(probs[k, :, words, regions].sum(-1).mean()))
                values["cls_to_regions"].append(float(probs[k, :, cls, regions].sum(-1).mean()))
                values["region_to_text"].append(float(probs[k, :, regions, text].sum(-1).mean()))
        row = {"layer": layer, **{c: sum(v) / len(v) for c, v in values.items() if v}}
        if grounded:
            row.update(word_box_ot=hits / grounded, grounded_words=grounded, word_box_chance=chance / grounded)
        rows.append(row)
    return rows


def layer_rows(run_dir: Path, *, checkpoint: str | None = None, split: str = "val", examples: int = 48,
               warn=None) -> tuple[list[dict], int]:
    """(layer_geometry rows, number of examples measured) of the first `examples` examples of a run's split, for
    its newest checkpoint, the named one under RUN/checkpoints, or "init" (the run's seeded initialisation).
    `warn(message)` hears about damaged checkpoints passed over."""
    if examples < 1:
        raise UserError("--examples must be at least 1")
    with as_input_error():
        run = load_run(run_dir, warn=warn)
        model, corpus, config = run.model, run.corpus, run.config
        if checkpoint == "init":
            model = initial_model(config, corpus)
        elif checkpoint:
            model = _checkpoint_model(Path(run_dir) / "checkpoints" / checkpoint)
        dataset = ImageTextDataset(corpus, split, run.max_text_len, run.max_regions)
        dataset.check_fits(model.config)
    if len(dataset) == 0:
        raise UserError(f"--split {split}: the split {dataset.text_file} holds no examples; choose another --split")
    chosen = [dataset[i] for i in range(min(examples, len(dataset)))]
    return layer_geometry(model.uniter.eval(), collate(chosen), chosen), len(chosen)


def _checkpoint_model(folder: Path):
    try:
        return load_finite_model(folder)
    except CheckpointError as error:  # its message does not name the folder
        raise CheckpointError(f"--checkpoint {folder}: {error}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="run folder written by uniter_core.train")
    p.add_argument("--checkpoint", help="checkpoint name under RUN/checkpoints, e.g. step_00000100 (default: newest), "
                                        "or init: the run's initialisation (its config and seed, before step 1)")
    p.add_argument("--split", default="val")
    p.add_argument("--examples", type=int, default=48, help="the first N examples of the split")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.json:  # refused before the model is loaded, not after
        check_output_file(args.json, "analyses.collapse", lambda f: first_line(f).startswith(("[", "{")) and
                          '"layer"' in f.read_text(encoding="utf-8")[:2000], what="--json")
    return args


def _cli(argv=None) -> None:
    args = parse_args(argv)
    rows, count = layer_rows(args.run, checkpoint=args.checkpoint, split=args.split, examples=args.examples,
                             warn=warn)
    grounded = (f", {rows[0]['grounded_words']} grounded word-pieces (word_box_ot chance level "
                f"{rows[0]['word_box_chance']:.3f})" if "grounded_words" in rows[0] else "")
    print(f"{args.run} {args.checkpoint or '(newest checkpoint)'}, {count} {args.split} examples{grounded}")
    print("layer " + " ".join(f"{c:>15}" for c in COLUMNS))
    for row in rows:
        print(f"{row['layer']:>5} " + " ".join(f"{row[c]:>15.3f}" if c in row else f"{'':>15}" for c in COLUMNS))
    if args.json:
        write_json(args.json, rows)


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
