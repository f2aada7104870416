"""A run folder on disk: checkpoints that resume exactly (weights, optimiser, schedule, data position and every
RNG), the metrics log, and what a fresh run, --resume and --force do with an existing folder.

    runs/NAME/checkpoints/step_00001000/model/      save_pretrained output (safetensors + config.json)
    runs/NAME/checkpoints/step_00001000/state.pt    optimiser, scheduler, step, sampler position, RNG states
    runs/NAME/checkpoints/latest                    name of the newest complete checkpoint (for people)
    runs/NAME/metrics.jsonl                         one JSON object per logged step or evaluation
    runs/NAME/train_config.json                     the config the run was trained with

Each checkpoint is written into a hidden temporary folder and renamed when complete, then `latest` is replaced
atomically, so a run killed at any instant (even with SIGKILL) leaves only complete checkpoints behind. Readers
do not trust that alone: they scan the step_* folders and take the newest one that passes `damage`, saying which
they skipped (a disk may still truncate or lose a file after the fact).
"""
from __future__ import annotations

import contextlib
import io
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from uniter_core.cli import warn
from uniter_core.errors import UserError
from uniter_core.io import remove_stale_temporaries, write_jsonl, write_text
from uniter_core.outputs import check_writable_location, lock_folder


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointError(UserError):
    """A checkpoint that cannot be used (damaged, incomplete, non-finite); the message names its folder."""


def _step_of(path: Path) -> int | None:
    match = re.fullmatch(r"step_(\d+)", path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def damage(checkpoint: Path, need_state: bool = True) -> str | None:
    """Why `checkpoint` cannot be loaded (None when it looks whole): files missing, weights truncated or
    unreadable. Cheap: the safetensors header is checked against the file size, tensors are not read."""
    model = checkpoint / "model"
    for name in ("config.json", "model.safetensors") + (("../state.pt",) if need_state else ()):
        if not (model / name).is_file():
            return f"{(model / name).resolve().relative_to(checkpoint.resolve().parent)} is missing"
    try:
        json.loads((model / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"model/config.json is not readable JSON ({e})"
    try:
        with safe_open(str(model / "model.safetensors"), "pt"):
            pass
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for every kind of damage
        return f"model/model.safetensors is damaged ({e})"
    if need_state and (checkpoint / "state.pt").stat().st_size == 0:
        return "state.pt is empty"
    return None


class CheckpointManager:
    """The checkpoints of one run folder: found by scanning step_* folders (the `latest` pointer is only a
    convenience for people), validated before use, written atomically, pruned oldest first."""

    def __init__(self, run_dir: str | Path, keep_last: int = 3):
        self.directory = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def steps(self) -> list[Path]:
        """Every checkpoint folder, oldest first (by step number)."""
        if not self.directory.is_dir():
            return []
        found = [(step, p) for p in self.directory.iterdir() if (step := _step_of(p)) is not None]
        return [p for _, p in sorted(found)]

    def save(self, step: int, model, optimizer, scheduler, extra: dict) -> Path:
        """Write checkpoint `step`; `extra` holds the trainer's own state (sampler position, generators...).
        Any failure (a full disk, a second Ctrl-C) removes the partial folder and leaves older checkpoints as
        they were."""
        bad = non_finite_weights(model)
        if bad:
            raise CheckpointError(f"checkpoint step_{step:08d} not written: {len(bad)} weight tensors hold NaN or "
                                  f"infinite values (e.g. {bad[0]})")
        def write(work: Path) -> None:
            work.mkdir()
            model.save_pretrained(work / "model")
            buffer = io.BytesIO()  # torch.save reports a full disk as a RuntimeError; a plain write says ENOSPC
            torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": rng_state(), "extra": extra}, buffer)
            (work / "state.pt").write_bytes(buffer.getbuffer())

        final = write_step_folder(self.directory, step, write)
        write_text(self.directory / "latest", final.name + "\n")
        self._prune(step)
        return final

    def _prune(self, step: int) -> None:
        """Keep the `keep_last` newest checkpoints up to `step`; never touch a later one."""
        older = [p for p in self.steps() if _step_of(p) <= step]
        for old in older[: max(0, len(older) - self.keep_last)]:
            shutil.rmtree(old)

    def remove_partials(self) -> None:
        """Partial folders of checkpoint writes that were killed (SIGKILL leaves them)."""
        if self.directory.is_dir():
            for p in self.directory.glob(".step_*.partial"):
                shutil.rmtree(p, ignore_errors=True)

    def intact(self, need_state: bool = True, warn=None) -> list[Path]:
        """Checkpoints that look whole, newest first; `warn(message)` hears about each one skipped."""
        good = []
        for path in reversed(self.steps()):
            reason = damage(path, need_state)
            if reason is None:
                good.append(path)
            elif warn is not None:
                warn(f"skipping checkpoint {path}: {reason}")
        return good

    def latest(self, need_state: bool = False, warn=None) -> Path | None:
        """The newest intact checkpoint (by default: whose model loads; need_state: whose training state too)."""
        good = self.intact(need_state, warn)
        return good[0] if good else None

    @staticmethod
    def read_state(checkpoint: Path) -> dict:
        """state.pt as a dict; CheckpointError naming the file when it cannot be read."""
        path = checkpoint / "state.pt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError... for damage
            raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        missing = [k for k in ("step", "optimizer", "scheduler", "rng", "extra") if not isinstance(state, dict) or k not in state]
        if missing:
            raise CheckpointError(f"{path} lacks {missing}: not a training state of this project")
        return state

    @staticmethod
    def apply_state(state: dict, optimizer, scheduler) -> None:
        """Restore optimiser, scheduler and RNGs from read_state's dict."""
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])

    @classmethod
    def load_state(cls, checkpoint: Path, optimizer, scheduler) -> dict:
        """Restore optimiser, scheduler and RNGs; returns the state dict (step, extra)."""
        state = cls.read_state(checkpoint)
        cls.apply_state(state, optimizer, scheduler)
        return state


def non_finite_weights(model) -> list[str]:
    """Names of the floating-point tensors of `model` that hold NaN or infinite values."""
    return [n for n, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]


def _reason(error: Exception) -> str:
    """The last line of an error's message (validators wrap theirs in several lines), or its type."""
    text = str(error).strip()
    return text.splitlines()[-1].strip() if text else type(error).__name__


def newest_loadable(run_dir: str | Path, load, need_state: bool = False, warn=None):
    """(checkpoint folder, load(folder)) of the newest checkpoint of a run that `load` accepts, trying older ones
    after a damaged one (`warn(message)` hears why each was skipped); (None, None) when the run has none;
    CheckpointError naming each one's problem when none loads. Whatever `load` raises counts as damage."""
    reasons: list[str] = []

    def skipped(message: str) -> None:
        reasons.append(message.removeprefix("skipping checkpoint "))
        if warn is not None:
            warn(message)

    for path in CheckpointManager(run_dir).intact(need_state, warn=skipped):
        try:
            return path, load(path)
        except Exception as error:  # noqa: BLE001 - see the docstring
            skipped(f"skipping checkpoint {path}: {_reason(error)}")
    if reasons:
        raise CheckpointError(f"{Path(run_dir) / 'checkpoints'}: no checkpoint can be loaded ({'; '.join(reasons)})")
    return None, None


# ------------------------------------------------------------------------------------------ the run folder
# What a training run writes beside its checkpoints, and how a fresh run, --resume and --force treat it.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "train_config.json")  # what a run writes (and --force replaces)
SNAPSHOTS = "snapshots"


def snapshot_due(step: int, keep_every: int, keep_steps) -> bool:
    """Whether training keeps a snapshot of the weights at `step` (run.keep_every, run.keep_steps)."""
    return step in keep_steps or (keep_every > 0 and step % keep_every == 0)


def write_step_folder(directory: Path, step: int, write) -> Path:
    """directory/step_N, built by `write(work)` in directory/.step_N.partial and renamed into place (an earlier
    folder of the step is replaced); any failure, a second Ctrl-C included, removes the partial folder."""
    directory.mkdir(parents=True, exist_ok=True)
    final, work = directory / f"step_{step:08d}", directory / f".step_{step:08d}.partial"
    try:
        if work.exists():
            shutil.rmtree(work)
        write(work)
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def save_snapshot(run_dir: str | Path, step: int, model) -> Path:
    """RUN/snapshots/step_N/ (config.json + model.safetensors), written atomically; an earlier snapshot of the
    same step (a resumed run passing it again) is replaced by the same weights."""
    return write_step_folder(Path(run_dir) / SNAPSHOTS, step, model.save_pretrained)


def snapshots(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every whole snapshot of a run, by step."""
    folder = Path(run_dir) / SNAPSHOTS
    if not folder.is_dir():
        return []
    found = [(step, p) for p in folder.iterdir() if (step := _step_of(p)) is not None
             and (p / "config.json").is_file() and (p / "model.safetensors").is_file()]
    return sorted(found)



def metrics_lines(path: Path):
    """(line number, record) per non-blank line of a metrics.jsonl; the record is None for a damaged line (cut
    short by a kill, not a JSON object, a step that is not an integer). The one reader of the log: the trainer
    repairs it on resume, the app draws its curves."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                yield number, None
                continue
            good = isinstance(record, dict) and _is_step(record.get("step", 0))
            yield number, record if good else None


def read_metrics(path: Path) -> tuple[list[dict], list[int]]:
    """The records of a metrics.jsonl and the numbers of its damaged lines (see metrics_lines)."""
    records, damaged = [], []
    for number, record in metrics_lines(path):
        if record is None:
            damaged.append(number)
        else:
            records.append(record)
    return records, damaged


def _is_step(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop the lines of steps after the checkpoint (they are about to be recomputed) and repair a
    half-written last line, saying what was dropped."""
    if not path.exists():
        return
    records, damaged = read_metrics(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    if damaged or len(kept) < len(records):
        warn(f"{path}: kept the {len(kept)} records up to step {step}"
              + (f", dropped {len(records) - len(kept)} of later steps (they are recomputed)" if len(kept) < len(records) else "")
              + (f", dropped {len(damaged)} damaged line(s)" if damaged else ""))
        write_jsonl(path, kept)


def own_evaluation(path: Path) -> bool:
    """An eval_<split>[_baseline].json written by uniter_core.evaluate or the trainer (they name a checkpoint)."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(result, dict) and "checkpoint" in result and "t2i_r1" in result


def prepare_run_folder(out: Path, resume: bool, force: bool) -> None:
    """Refuse to start a fresh run over an existing one unless asked; --force removes only the run's own files
    (checkpoint folders, the latest pointer, metrics, config and the evaluations it wrote)."""
    check_writable_location(out)
    if (out / "checkpoints").exists() and not (out / "checkpoints").is_dir():
        raise UserError(f"--out {out}: {out / 'checkpoints'} is a file; a run keeps its checkpoints in that folder")
    checkpoints = CheckpointManager(out)
    existing = [p.name for p in checkpoints.steps()]
    has_run = existing or any((out / name).exists() for name in RUN_OUTPUTS[1:])
    if force and has_run:
        for path in checkpoints.steps():
            shutil.rmtree(path)
        for _, path in snapshots(out):
            shutil.rmtree(path)
        for path in (out / SNAPSHOTS).glob(".step_*.partial"):
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            (out / SNAPSHOTS).rmdir()
        checkpoints.remove_partials()
        (out / "checkpoints" / "latest").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (out / "checkpoints").rmdir()  # only when nothing of yours is left in it
        for name in RUN_OUTPUTS[1:]:
            (out / name).unlink(missing_ok=True)
        for path in out.glob("eval_*.json"):
            if own_evaluation(path):
                path.unlink()
        warn(f"--force: removed the earlier run in {out} (checkpoints {', '.join(existing) or 'none'}, snapshots, "
              f"metrics, config, evaluations)")
    elif has_run and not resume:
        held = f"checkpoints {', '.join(existing)}" if existing else "a run without checkpoints"
        raise UserError(f"--out {out} already holds {held}; add --resume to continue it or --force to start "
                        f"over (removes them)")
    checkpoints.remove_partials()
    remove_stale_temporaries(out, names=RUN_OUTPUTS[1:])  # what a killed run was writing (the folder is locked)
    remove_stale_temporaries(out / "checkpoints", names=["latest"])


def lock_run_folder(out: Path):
    """An advisory lock on the run folder for the life of the process: two trainers never write one run."""
    out.mkdir(parents=True, exist_ok=True)
    return lock_folder(out, f"--out {out} is being trained by another process right now; wait for it or choose "
                            f"another --out")
