"""Training checkpoints that resume exactly: weights, optimiser, schedule, data position and every RNG.

    runs/NAME/checkpoints/step_00001000/model/      save_pretrained output (safetensors + config.json)
    runs/NAME/checkpoints/step_00001000/state.pt    optimiser, scheduler, step, sampler position, RNG states
    runs/NAME/checkpoints/latest                    name of the newest complete checkpoint

Each checkpoint is written into a hidden temporary folder and renamed when complete, then `latest` is replaced
atomically, so a run killed at any instant (even with SIGKILL) leaves only complete checkpoints behind.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

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


class CheckpointManager:
    def __init__(self, run_dir: str | Path, keep_last: int = 3):
        self.directory = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def save(self, step: int, model, optimizer, scheduler, extra: dict) -> Path:
        """Write checkpoint `step`; `extra` holds the trainer's own state (sampler position, generators...)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"step_{step:08d}"
        work = self.directory / f".step_{step:08d}.partial"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        model.save_pretrained(work / "model")
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state(), "extra": extra}, work / "state.pt")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
        write_text(self.directory / "latest", final.name + "\n")
        self._prune()
        return final

    def _prune(self) -> None:
        checkpoints = sorted(self.directory.glob("step_*"))
        for old in checkpoints[: max(0, len(checkpoints) - self.keep_last)]:
            shutil.rmtree(old)

    def latest(self) -> Path | None:
        pointer = self.directory / "latest"
        if not pointer.exists():
            return None
        path = self.directory / pointer.read_text().strip()
        return path if (path / "state.pt").exists() else None

    @staticmethod
    def load_state(checkpoint: Path, optimizer, scheduler) -> dict:
        """Restore optimiser, scheduler and RNGs; returns the state dict (step, extra)."""
        state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        return state
