"""How heads formed during training, and two runs side by side: patterns, importance, grounding and the probe's
metrics at every kept step.

    python -m analyses.dynamics --run runs/pretrain-mini --out behaviour/pretrain-mini/dynamics \
        [--compare runs/pretrain-mini-nowra]

A run keeps the weights of chosen steps when its config asks (run.keep_steps, run.keep_every: RUN/snapshots/,
step 0 = the initialisation); the newest checkpoint is measured too. At every step, on one probe
(analyses.probe, the same captions, candidates and masks for every step and both runs):

  metrics     the probe's METRICS (R@1 among the candidates, margin, MLM, WRA alignment)
  patterns    each layer's pattern fractions and each head's dominant pattern (the classifier over the probe's
              true pairs' maps)
  importance  each head's ablation effect on the margin, the MLM loss and WRA alignment (analyses.head_importance)
              and its gradient importance
  grounding   each head's word -> region and region -> word hit rates over --grounding-examples grounded
              captions, its cross-modal attention share, and per layer the pointing game and WRA's plan

OUT gets steps, layers and heads tables (one row per run x step [x layer [x head]]), figures and summary.json.
Each (run, step) is written to OUT.partial as it is finished, so an interrupted job resumes where it stopped.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

from analyses import behaviour_figures
from analyses.export_stats import aggregate, per_map_table
from analyses.attention import iter_example_attention
from analyses.grounding import measure as measure_grounding
from analyses.grounding import layer_table
from analyses.head_importance import ablation_table, gradient_importance
from analyses.patterns import PATTERNS
from analyses.probe import METRIC_NAMES, METRICS, build_probe, probe_metrics, probe_states
from analyses.results import Progress, read_results, results_folder, table_entries, write_results
from analyses.sources import DEFAULT_DEVICE, add_output_arguments, check_at_least, check_device, open_split
from analyses.train_classifier import load_classifier
from uniter_core.cli import exit_with, run_command, warn
from uniter_core.errors import UserError
from uniter_core.pretrain import UniterForPretraining
from uniter_core.runs import Run, load_run
from uniter_core.train_state import CheckpointError, non_finite_weights, snapshots

COMMAND = "dynamics"
TABLES = ("steps", "layers", "heads")
IMPORTANCE = ("margin", "mlm_loss", "wra_alignment")


def run_label(run_dir: Path) -> str:
    return Path(run_dir).name


def kept_steps(loaded: Run, run_dir: Path) -> list[tuple[int, Path | None]]:
    """(step, snapshot folder) of a run's snapshots, then its newest checkpoint (folder None: loaded.model)
    when no snapshot has its step."""
    steps = snapshots(run_dir)
    final = int(loaded.checkpoint.name.removeprefix("step_"))
    if final not in {s for s, _ in steps}:
        steps.append((final, None))
    return steps


def snapshot_model(folder: Path) -> UniterForPretraining:
    try:
        model = UniterForPretraining.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001 - safetensors and json raise their own types for damage
        raise CheckpointError(f"{folder} cannot be read ({type(error).__name__}: {str(error).splitlines()[0]})")
    if non_finite_weights(model):
        raise CheckpointError(f"{folder}: the weights hold NaN or infinite values")
    return model


def measure_step(run: Run, corpus: Path, dataset, probe, grounding_indices: list[int], classifier, device,
                 label: str, step: int) -> dict[str, pd.DataFrame]:
    """The three tables' rows of one (run, step)."""
    model = run.model.to(device).eval()
    states = probe_states(model.uniter, probe)
    base = probe_metrics(model, probe, [s[-1] for s in states])
    heads = ablation_table(model, probe, states, base)
    heads = heads[["layer", "head"] + [f"effect_{m}" for m in IMPORTANCE]]
    for loss, values in gradient_importance(model, probe).items():
        heads[f"grad_{loss}"] = values[heads["layer"], heads["head"]]
    examples = iter_example_attention(model, corpus, dataset.split, batch_size=16, device=device,
                                      max_text_len=run.max_text_len, max_regions=run.max_regions, progress=False,
                                      indices=probe.text_indices)
    maps = per_map_table(examples, classifier)
    patterns = aggregate(maps, ["layer", "head"])[["layer", "head", "dominant_pattern"]]
    layer_patterns = aggregate(maps, ["layer"])[["layer"] + [f"frac_{c}" for c in PATTERNS]]
    head_tally, layer_tally = measure_grounding(model, dataset, grounding_indices)
    grounded = head_tally.table()[["layer", "head", "word_to_region", "region_to_word", "cross_modal"]]
    heads = patterns.merge(heads, on=["layer", "head"]).merge(grounded, on=["layer", "head"])
    layers = layer_table(layer_tally, model.config.num_hidden_layers)
    layers = layers[layers["layer"] > 0].assign(layer=lambda t: t["layer"] - 1)  # encoder layers, from 0
    layers = layer_patterns.merge(layers[["layer", "attention_covering", "attention_box", "plan_covering",
                                          "plan_box"]], on="layer")
    count = head_tally.count["word_to_region"]
    chance = head_tally.chance["word_to_region"].flat[0] / count if count else float("nan")
    steps = pd.DataFrame([{**base, "cross_modal_heads": float((grounded["cross_modal"] > 0.5).mean()),
                           "best_word_to_region": float(grounded["word_to_region"].max()),
                           "word_to_region_chance": float(chance)}])
    tag = {"run": label, "step": step}
    return {name: table.assign(**tag)[["run", "step"] + list(table.columns)]
            for name, table in (("steps", steps), ("layers", layers), ("heads", heads))}


COLUMNS = {
    "steps": {"run": "run folder name", "step": "training step (0: the initialisation)",
              **{m: METRIC_NAMES[m] + " on the probe" for m in METRICS},
              "cross_modal_heads": "share of heads whose cross-modal attention exceeds 0.5",
              "best_word_to_region": "the best head's word -> region hit rate",
              "word_to_region_chance": "its chance level"},
    "layers": {"run": "run folder name", "step": "training step", "layer": "encoder layer, from 0",
               **{f"frac_{c}": f"share of the layer's probe maps classified {c}" for c in PATTERNS},
               "attention_covering": "pointing game of the head-averaged attention (covering rule)",
               "attention_box": "pointing game (own-box rule)",
               "plan_covering": "WRA plan on this layer's output states (covering rule)",
               "plan_box": "WRA plan on this layer's output states (own-box rule)"},
    "heads": {"run": "run folder name", "step": "training step", "layer": "encoder layer, from 0",
              "head": "attention head, from 0", "dominant_pattern": "the head's most frequent pattern on the probe",
              **{f"effect_{m}": f"ablation effect on {METRIC_NAMES[m]} (positive: the head helps)"
                 for m in IMPORTANCE},
              **{f"grad_{loss}": f"gradient importance for the {loss} loss" for loss in ("retrieval", "mlm", "wra")},
              "word_to_region": "share of grounded word-pieces whose largest region attention lands on their object",
              "region_to_word": "share of named regions whose largest word attention lands on a naming word-piece",
              "cross_modal": "mean attention mass to the other modality"},
}


def dynamics(*, out: Path, run: Path, compare: Path | None = None, split: str = "test", queries: int = 25,
             candidates: int = 10, grounding_examples: int = 150, classifier: Path | None = None,
             device: str = "cpu", progress=True, force: bool = True, warn=None) -> dict:
    """Measure every kept step of `run` (and of `compare`) and write the module docstring's outputs."""
    folder = results_folder(out, COMMAND, table_entries(TABLES) + ("steps",), force=force)
    folder.check()
    runs = [run] + ([compare] if compare else [])
    if compare and run_label(compare) == run_label(run):
        raise UserError(f"--compare {compare}: both runs are called {run_label(run)}; give folders of other names")
    loaded = {r: load_run(r, warn=warn) for r in runs}
    corpus = Path(loaded[run].corpus)
    dataset = open_split(loaded[run], corpus, split)
    for other in runs[1:]:
        if Path(loaded[other].corpus).resolve() != corpus.resolve():
            raise UserError(f"--compare {other}: it reads the corpus {loaded[other].corpus}, {run} reads {corpus}; "
                            f"runs are compared on one probe of one corpus")
    patterns_from = load_classifier(classifier)
    probe = build_probe(dataset, loaded[run].model.config, queries, candidates, 128, device)
    grounded = [i for i, t in enumerate(dataset.texts) if t.get("alignment")][:grounding_examples]
    plan = [(r, step, snapshot) for r in runs for step, snapshot in kept_steps(loaded[r], r)]
    settings = {"runs": [str(r) for r in runs], "steps": [[str(r), s] for r, s, _ in plan], "split": split,
                "queries": queries, "candidates": candidates, "grounding_examples": grounding_examples,
                "classifier_data_hash": patterns_from.metadata.get("data_hash", "")}
    work = folder.start({"settings": settings})
    parts = work / "steps"
    with folder.building():
        parts.mkdir(exist_ok=True)
        report = Progress(progress)
        for done, (r, step, snapshot) in enumerate(plan):
            report("kept steps", done, len(plan))
            piece = parts / f"{run_label(r)}-{step:08d}"
            if (piece / "done").exists():
                continue
            model = loaded[r].model if snapshot is None else snapshot_model(snapshot)
            measured = measure_step(Run(model, corpus, loaded[r].config, loaded[r].checkpoint), corpus, dataset,
                                    probe, grounded, patterns_from, device, run_label(r), step)
            piece.mkdir(exist_ok=True)
            for name, table in measured.items():
                table.to_parquet(piece / f"{name}.parquet", index=False)
            (piece / "done").write_text("")
        report("kept steps", len(plan), len(plan))
    tables = {name: pd.concat([pd.read_parquet(parts / f"{run_label(r)}-{s:08d}" / f"{name}.parquet")
                               for r, s, _ in plan], ignore_index=True) for name in TABLES}
    summary = {"source": {"runs": [str(r) for r in runs], "checkpoints": [loaded[r].checkpoint.name for r in runs],
                          "corpus": str(corpus), "split": split, "classifier": str(classifier or "default")},
               "settings": settings, "steps": {run_label(r): [s for rr, s, _ in plan if rr == r] for r in runs},
               "final": {run_label(r): {k: (None if isinstance(v, float) and v != v else v) for k, v in
                                        tables["steps"][tables["steps"]["run"] == run_label(r)].iloc[-1].drop(
                                            ["run"]).to_dict().items()} for r in runs}}
    write_results(folder, tables, COLUMNS, summary, lambda figures: behaviour_figures.write_dynamics(tables, figures),
                  may_be_nan=lambda table, column: table != "steps" or column.startswith(("word_to_region",
                                                                                         "best_word_to_region")),
                  started=True)
    shutil.rmtree(folder.out / "steps", ignore_errors=True)  # the pieces are in the tables now
    return summary


def read_dynamics(folder: Path) -> tuple[dict, dict[str, pd.DataFrame]]:
    return read_results(folder, TABLES)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run folder written by uniter_core.train")
    p.add_argument("--compare", type=Path, help="a second run folder on the same corpus, e.g. one without WRA")
    p.add_argument("--split", default="test")
    add_output_arguments(p)
    p.add_argument("--queries", type=int, default=25, help="captions in the probe (half of head_importance's 50: "
                                                          "the ablation sweep runs at every kept step)")
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--grounding-examples", type=int, default=150, help="grounded captions for the grounding")
    p.add_argument("--device", default=DEFAULT_DEVICE)
    args = p.parse_args(argv)
    check_at_least(p, args, 1, "queries", "candidates", "grounding_examples")
    check_device(p, args.device)
    return args


def _cli(argv=None) -> None:
    args = parse_args(argv)
    summary = dynamics(out=args.out, run=args.run, compare=args.compare, split=args.split, queries=args.queries,
                       candidates=args.candidates, grounding_examples=args.grounding_examples,
                       classifier=args.model, device=args.device, progress=not args.no_progress, warn=warn)
    for label, steps in summary["steps"].items():
        final = summary["final"][label]
        print(f"{label}: steps {', '.join(map(str, steps))}; at step {int(final['step'])}: R@1 {final['r1']:.3f}, "
              f"WRA alignment {final['wra_alignment']:.3f}, cross-modal heads {final['cross_modal_heads']:.0%}")
    print(f"{args.out}: written")


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
