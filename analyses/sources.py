"""Where an analysis's model comes from: a run folder or an official checkpoint with a corpus, one way for every
command (the arguments, the checks, and the `source` record its output keeps).

    parser = argparse.ArgumentParser(); add_source_arguments(parser)
    args = parser.parse_args(); check_source_arguments(parser, args)
    loaded, source = open_source(run=args.run, checkpoint=args.checkpoint, corpus=args.corpus, preset=args.preset)
    dataset = open_split(loaded, args.corpus or loaded.corpus, "test")
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from analyses.errors import as_input_error
from uniter_core.data.dataset import ImageTextDataset
from uniter_core.errors import UserError
from uniter_core.runs import Run, load_official_checkpoint, load_run

DEFAULT_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def add_source_arguments(parser: argparse.ArgumentParser, split: str = "test") -> None:
    """--run | --checkpoint (with --corpus, --preset), --split and --device."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="run folder written by uniter_core.train")
    src.add_argument("--checkpoint", type=Path, help="official UNITER .pt checkpoint (needs --corpus)")
    parser.add_argument("--corpus", type=Path, help="corpus folder (default: the run's data.corpus; needed with "
                                                    "--checkpoint)")
    parser.add_argument("--preset", default="uniter-base", help="model preset of --checkpoint")
    parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE", type=preset_override,
                        help="a preset field of --checkpoint, e.g. num_hidden_layers=3 (repeatable)")
    parser.add_argument("--split", default=split)
    parser.add_argument("--device", default=DEFAULT_DEVICE)


def preset_override(text: str) -> tuple[str, object]:
    """argparse type of --override: FIELD=VALUE, the value read as JSON (3, 0.1, true) or else as text."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=VALUE")
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value


def check_source_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The checks that need no file read: --checkpoint with --corpus, a device that exists."""
    if args.checkpoint and not args.corpus:
        parser.error("--checkpoint needs --corpus")
    if args.override and not args.checkpoint:
        parser.error("--override applies to --checkpoint only (a run folder has its own config)")
    check_device(parser, args.device)


def check_device(parser: argparse.ArgumentParser, name: str) -> None:
    """parser.error unless `name` is a device of this machine."""
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...)")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: no GPU is available")


def open_source(*, run: Path | None = None, checkpoint: Path | None = None, corpus: Path | None = None,
                preset: str = "uniter-base", overrides=(), warn=None) -> tuple[Run, dict]:
    """(the Run, its `source` record: run folder and checkpoint name, or checkpoint file, preset and
    overrides: (field, value) pairs of the preset)."""
    if run:
        loaded = load_run(run, warn=warn, corpus=corpus)
        return loaded, {"run": str(run), "checkpoint": loaded.checkpoint.name}
    if checkpoint is None or corpus is None:
        raise UserError("give --run, or --checkpoint with --corpus")
    overrides = dict(overrides)
    source = {"checkpoint": str(checkpoint), "preset": preset, **({"overrides": overrides} if overrides else {})}
    try:
        return load_official_checkpoint(checkpoint, corpus, preset, **overrides), source
    except UserError:
        raise
    except (TypeError, ValueError, RuntimeError) as error:  # a value the config took but the model cannot use
        if not overrides:
            raise
        raise UserError(f"--override {' '.join(f'{k}={v}' for k, v in overrides.items())}: the model cannot be "
                        f"built with it ({str(error).strip().splitlines()[-1][:200]})") from None


def split_file(corpus: Path, split: str) -> Path:
    """The split's caption file; UserError listing the corpus's splits when it has no such split."""
    path = Path(corpus) / "txt_db" / f"{split}.jsonl"
    if not path.exists():
        known = sorted(p.stem for p in (Path(corpus) / "txt_db").glob("*.jsonl"))
        raise UserError(f"--split {split}: {path} does not exist (splits: {', '.join(known) or 'none'})")
    return path


def open_split(loaded: Run, corpus: Path, split: str) -> ImageTextDataset:
    """The split of `corpus` with the run's text and region limits, checked against the model."""
    split_file(corpus, split)
    with as_input_error():
        dataset = ImageTextDataset(corpus, split, loaded.max_text_len, loaded.max_regions)
        dataset.check_fits(loaded.model.config)
    if not len(dataset):
        raise UserError(f"--split {split}: {dataset.text_file} holds no captions; choose another --split")
    return dataset


def add_output_arguments(parser: argparse.ArgumentParser, classifier: bool = True) -> None:
    """--out, --no-progress and (`classifier`) --model, the pattern classifier."""
    from uniter_core.cli import output_path
    parser.add_argument("--out", required=True, type=output_path)
    if classifier:
        parser.add_argument("--model", type=Path, default=None, help="pattern classifier (default: the built-in one)")
    parser.add_argument("--no-progress", action="store_true")


def check_at_least(parser: argparse.ArgumentParser, args: argparse.Namespace, low: int, *names: str) -> None:
    """parser.error for the first of the options `names` (attribute names) below `low`; None passes."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} must be at least {low}")


def source_keywords(args: argparse.Namespace) -> dict:
    """The keyword arguments of open_analysis that add_source_arguments parsed."""
    return dict(run=args.run, checkpoint=args.checkpoint, corpus=args.corpus, preset=args.preset,
                overrides=args.override, split=args.split, device=args.device)


@dataclass
class Opened:
    """What an analysis works on: its output folder (checked), the model (in eval mode, on the device), the
    corpus and split, and the `source` record for its summary."""

    folder: object  # uniter_core.outputs.OutputFolder
    loaded: Run
    corpus: Path
    dataset: ImageTextDataset
    model: object
    source: dict


def open_analysis(out: Path, command: str, tables: tuple[str, ...], *, run: Path | None = None,
                  checkpoint: Path | None = None, corpus: Path | None = None, preset: str = "uniter-base",
                  overrides=(), split: str = "test", device: str = "cpu", force: bool = True, warn=None) -> Opened:
    """The output folder is refused before the model is read (a foreign --out costs nothing), then the source."""
    from analyses.results import results_folder, table_entries
    folder = results_folder(out, command, table_entries(tables), force=force)
    folder.check()
    loaded, source = open_source(run=run, checkpoint=checkpoint, corpus=corpus, preset=preset, overrides=overrides,
                                 warn=warn)
    corpus = Path(corpus or loaded.corpus)
    dataset = open_split(loaded, corpus, split)
    return Opened(folder, loaded, corpus, dataset, loaded.model.to(device).eval(),
                  {**source, "corpus": str(corpus), "split": split})
