"""Training checkpoints that resume exactly: weights, optimiser, schedule, data position and every RNG.

    runs/NAME/checkpoints/step_00001000/model/      save_pretrained output (safetensors + config.json)
    runs/NAME/checkpoints/step_00001000/state.pt    optimiser, scheduler, step, sampler position, RNG states
    runs/NAME/checkpoints/latest                    name of the newest complete checkpoint (for people)

Each checkpoint is written into a hidden temporary folder and renamed when complete, then `latest` is replaced
atomically, so a run killed at any instant (even with SIGKILL) leaves only complete checkpoints behind. Readers
do not trust that alone: they scan the step_* folders and take the newest one that passes `damage`, saying which
they skipped (a disk may still truncate or lose a file after the fact).
"""
from __future__ import annotations

import io
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from uniter_core.errors import UserError
from uniter_core.io import write_text


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
        bad = [name for name, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
        if bad:
            raise CheckpointError(f"checkpoint step_{step:08d} not written: {len(bad)} weight tensors hold NaN or "
                                  f"infinite values (e.g. {bad[0]})")
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"step_{step:08d}"
        work = self.directory / f".step_{step:08d}.partial"
        try:
            if work.exists():
                shutil.rmtree(work)
            work.mkdir()
            model.save_pretrained(work / "model")
            buffer = io.BytesIO()  # torch.save reports a full disk as a RuntimeError; a plain write says ENOSPC
            torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": rng_state(), "extra": extra}, buffer)
            (work / "state.pt").write_bytes(buffer.getbuffer())
            del buffer
            if final.exists():
                shutil.rmtree(final)
            work.rename(final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
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


def load_finite_model(checkpoint: Path):
    """The UniterForPretraining of a checkpoint; CheckpointError when its weights are not all finite."""
    from uniter_core.pretrain import UniterForPretraining

    model = UniterForPretraining.from_pretrained(checkpoint / "model")
    bad = non_finite_weights(model)
    if bad:
        raise CheckpointError(f"weights hold NaN or infinite values (e.g. {bad[0]})")
    return model


def newest_loadable_model(run_dir: str | Path, warn=None):
    """(checkpoint folder, model) of the newest checkpoint whose model loads with finite weights (see
    newest_loadable)."""
    return newest_loadable(run_dir, load_finite_model, warn=warn)
