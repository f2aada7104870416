"""Pre-train UNITER from a YAML config, on a CPU, a GPU or many (torchrun).

    python -m uniter_core.train --config configs/pretrain-mini.yaml --out runs/pretrain-mini [--resume] [k=v ...]
    torchrun --nproc_per_node 2 -m uniter_core.train --config ... --out ...

One task per optimisation step, drawn from the mix ratios by a sampler that depends only on (seed, step), so every
rank and every micro-batch of a gradient-accumulation cycle runs the same task. Each task reads its own
token-bucketed stream of batches. Checkpoints (uniter_core.train_state) hold everything needed to continue
exactly where the run stopped; metrics go to runs/NAME/metrics.jsonl, one JSON object per line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from uniter_core.config import UniterConfig
from uniter_core.data.dataset import ImageTextDataset
from uniter_core.cli import StopRequest, describe_os_error, exit_with, output_path, run_command, warn as cli_warn
from uniter_core.errors import EnvironmentFailure, Interrupted, UserError
from uniter_core.io import write_json
from uniter_core.optim import build_optimizer, build_scheduler
from uniter_core.outputs import check_writable_location
from uniter_core.pretrain import task_loss
from uniter_core.tasks import TaskSampler, TaskStream, build_task_dataset
from uniter_core.train_config import ConfigError, TrainConfig, load_config, wra_weight_at
from uniter_core.evaluate import evaluate_model, write_results
from uniter_core.runs import apply_speed_settings, build_model, load_finite_model, model_config, to_device
from uniter_core.train_state import (CheckpointError, CheckpointManager, lock_run_folder, newest_loadable,
                                     prepare_run_folder, save_snapshot, snapshot_due, truncate_metrics)


def check_data(config: TrainConfig, uniter_config: UniterConfig, where: str) -> ImageTextDataset:
    """Open the training split and check it fits the model before any training work starts."""
    corpus = Path(config.data.corpus)
    if not (corpus / "manifest.json").exists():
        raise ConfigError(f"{where}: data.corpus {corpus} is not a built corpus (no manifest.json); build it "
                          f"with `python -m uniter_core.data.build_corpus --out {corpus}`")
    dataset = ImageTextDataset(corpus, config.data.train_split, config.data.max_text_len, config.data.max_regions)
    if not len(dataset):
        raise ConfigError(f"{where}: data.train_split {config.data.train_split}: {dataset.text_file} holds no "
                          f"captions")
    longest = max(dataset.lengths())
    if config.batch.max_tokens < longest * config.batch.size_multiple:
        raise ConfigError(f"{where}: batch.max_tokens {config.batch.max_tokens} cannot hold batch.size_multiple "
                          f"{config.batch.size_multiple} examples of the longest length {longest}")
    if dataset.img_dim != uniter_config.img_dim:
        raise ConfigError(f"{where}: the features in {corpus} have dimension {dataset.img_dim} but the model "
                          f"expects img_dim {uniter_config.img_dim}")
    classes = len(dataset.store.class_names)
    if classes != uniter_config.num_region_classes:
        raise ConfigError(f"{where}: the soft labels in {corpus} have {classes} classes but the model expects "
                          f"num_region_classes {uniter_config.num_region_classes}")
    if dataset.vocab_size > uniter_config.vocab_size:
        raise ConfigError(f"{where}: the captions in {corpus} use a vocabulary of {dataset.vocab_size} but the "
                          f"model has vocab_size {uniter_config.vocab_size}")
    # NaN/inf features would train silently into NaN weights; the scan reads the split's rows once (seconds)
    dataset.store.check_finite(dataset.image_ids, progress=len(dataset.image_ids) > 20000)
    return dataset


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; a plain run is rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return rank, world_size, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


class TrainingDiverged(UserError):
    """A non-finite loss or gradient: the step is not applied and nothing of it is saved."""

    exit_code = 1


class Trainer:
    def __init__(self, config: TrainConfig, out: Path, resume: bool, where: str = "config", force: bool = False):
        self.config, self.out = config, out
        self.rank, self.world_size, device = setup_distributed()
        if config.run.device == "cpu" or (config.run.device == "auto" and device.type != "cuda"):
            device = torch.device("cpu")
        elif config.run.device == "cuda" and device.type != "cuda":
            raise ConfigError(f"{where}: run.device is cuda but no GPU is available")
        self.device = device
        if config.run.threads > 0:  # CPU results depend on the thread count (the order of float sums)
            torch.set_num_threads(config.run.threads)
        torch.manual_seed(config.run.seed + self.rank)
        self.where = where
        check_writable_location(out)
        uniter_config = model_config(config)  # config and data are checked before the run folder is touched
        self.train_set = check_data(config, uniter_config, where)
        if self.rank == 0:
            self._lock = lock_run_folder(out)
            prepare_run_folder(out, resume, force)
        if self.world_size > 1:
            dist.barrier()
        self.checkpoints = CheckpointManager(out, config.run.keep_last)
        latest, state, model = self._newest_checkpoint() if resume else (None, None, None)
        self.model = model or build_model(config, self.train_set)
        self.model.to(device)
        apply_speed_settings(self.model, config)
        if config.run.compile:  # in place: parameter names and checkpoints stay as they are
            self.model.uniter.encoder.compile(dynamic=True)  # dynamic: token counts change every batch
        self.ddp = None
        self._last_sync_check = None  # run.sync_check's latest collective (see params_in_sync)
        if self.world_size > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True)  # each task uses only its own head
        self.optimizer = build_optimizer(self.model, config.optim.lr, config.optim.betas, config.optim.weight_decay,
                                         config.optim.image_lr_scale)
        self.scheduler = build_scheduler(self.optimizer, config.optim.warmup_steps, config.run.num_steps)
        self.task_sampler = TaskSampler(config.tasks.mix, seed=config.run.seed)
        self.streams: dict[str, TaskStream] = {}
        for task, ratio in config.tasks.mix.items():
            if float(ratio) > 0:
                dataset, collate_fn = build_task_dataset(task, self.train_set, self.model.config, config.run.seed)
                try:
                    self.streams[task] = TaskStream(
                        task, dataset, collate_fn, config.batch.max_tokens, config.batch.bucket_size,
                        config.batch.size_multiple, config.run.seed, config.data.num_workers, self.rank,
                        self.world_size)
                except ValueError as error:  # the sampler's check that batch.max_tokens fits the longest example
                    raise ConfigError(f"{where}: batch.max_tokens / batch.size_multiple: {error}") from None
        self.step = 0
        self.metrics_path = out / "metrics.jsonl"
        fit = getattr(self.model, "mlm_head_report", None) if model is None else None
        if fit:  # a fresh MiniLM start: its fitted MLM head (heads.fit_mlm_head), logged once
            self.log([{"step": 0, "mlm_head_fit": fit}])
        if latest is not None:
            try:  # a config changed since the checkpoint (task mix, parameter groups) cannot continue it exactly
                CheckpointManager.apply_state(state, self.optimizer, self.scheduler)
                self.step = state["step"]
                self.task_sampler.load_state_dict(state["extra"]["task_sampler"])
                for task, stream_state in state["extra"]["streams"].items():
                    self.streams[task].load_state_dict(stream_state)
            except (ValueError, KeyError, TypeError) as error:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise UserError(f"--resume: {latest} does not fit this config ({reason}); resume with the run's "
                                f"own settings ({out / 'train_config.json'}) or start over with --force") from None
            if self.rank == 0:
                truncate_metrics(self.metrics_path, self.step)
        elif self.rank == 0:
            truncate_metrics(self.metrics_path, 0)  # --resume without a checkpoint: the log restarts too
        if self.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "train_config.json", config.to_dict())
            if latest is None:
                self.keep_snapshot()  # step 0: the initialisation

    def _newest_checkpoint(self):
        """(folder, training state, model) of the newest checkpoint that loads, skipping damaged ones (said on
        stderr); (None, None, None) when the run has none yet; UserError when none of them loads."""
        warn = cli_warn if self.rank == 0 else None

        def load(path: Path):
            state = CheckpointManager.read_state(path)
            missing = {"task_sampler", "streams"} - set(state["extra"] if isinstance(state["extra"], dict) else ())
            if missing:
                raise CheckpointError(f"state.pt lacks the trainer's {sorted(missing)}")
            return state, load_finite_model(path)

        try:
            path, loaded = newest_loadable(self.out, load, need_state=True, warn=warn)
        except CheckpointError as error:
            raise UserError(f"--resume: {error}; add --force to start the run over") from None
        if path is None:
            if warn:
                warn(f"--resume: no checkpoint in {self.out} yet, starting at step 0")
            return None, None, None
        if warn and path != self.checkpoints.steps()[-1]:
            warn(f"--resume: continuing from {path.name}, the newest intact checkpoint")
        return path, *loaded

    def autocast(self):
        if self.device.type == "cuda" and self.config.run.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> dict:
        """One optimisation step of one task over grad_accum micro-batches; returns the step's log record."""
        task = self.task_sampler.task_at(self.step)
        self.task_sampler.step = self.step + 1
        module = self.ddp or self.model
        module.train()
        accum = self.config.optim.grad_accum
        wra_weight = wra_weight_at(self.config.tasks, self.step)
        parts_sum: dict[str, float] = {}
        examples = tokens = 0
        for micro in range(accum):
            batch = to_device(self.streams[task].next_batch(), self.device, non_blocking=True)
            sync = self.ddp is None or micro == accum - 1
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()), self.autocast():
                loss, parts = task_loss(task, module(batch, task), wra_weight)
                if self.ddp is None and not torch.isfinite(loss):  # under DDP the gradient check below decides
                    self._diverged(task, f"the loss is {float(loss.detach())}")
                (loss / accum).backward()
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + float(value) / accum
            examples += len(batch["txt_lens"])
            tokens += int(batch["attn_masks"].sum())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        if not torch.isfinite(grad_norm):  # the same on every rank (gradients are all-reduced)
            self.optimizer.zero_grad(set_to_none=True)
            self._diverged(task, f"the gradient norm is {float(grad_norm)}")
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        record = {"params_in_sync": self.params_in_sync()} if self.config.run.sync_check else {}
        if task == "itm" and "itm_ot" in parts_sum:
            record["wra_weight"] = wra_weight
        return {**record, "step": self.step, "task": task, "loss": parts_sum[task], **{f"loss_{k}": v for k, v in
                parts_sum.items() if k != task}, "lr": lr, "grad_norm": float(grad_norm),
                "examples": examples * self.world_size, "tokens": tokens * self.world_size}

    def _diverged(self, task: str, what: str) -> None:
        newest = self.checkpoints.latest()
        raise TrainingDiverged(
            f"training stopped at step {self.step + 1} (task {task}): {what}; the step was not applied and nothing "
            f"was saved; " + (f"the newest checkpoint {newest} is intact" if newest else "no checkpoint was written yet")
            + " (check the data, or lower optim.lr)")

    resume_command: str | None = None  # the command line that resumes this run (set by train_run)

    def resume_hint(self) -> str:
        config = f" --config {self.where}" if self.where != "config" else ""
        return "resume with: " + (self.resume_command or f"python -m uniter_core.train{config} --out {self.out} --resume")

    @torch.no_grad()
    def params_in_sync(self) -> bool:
        """Whether every rank holds bit-identical weights (a checksum per tensor, compared across ranks)."""
        checksums = torch.stack([p.detach().double().sum() for p in self.model.parameters()])
        if self.world_size == 1:
            return True
        gathered = [torch.empty_like(checksums) for _ in range(self.world_size)]
        work = dist.all_gather(gathered, checksums, async_op=True)
        work.wait()
        # Keep the collective (and so its tensors) alive until the next check. Otherwise a gloo worker thread may
        # drop the last reference after we return and free tensors that Python created, which takes the GIL;
        # if that thread is late, the main thread can already hold the GIL while it joins the worker threads at
        # shutdown, and the process hangs after its last step.
        self._last_sync_check = work
        return all(torch.equal(gathered[0], g) for g in gathered[1:])

    saved_step: int | None = None  # the step of the last checkpoint this process wrote

    def save(self) -> None:
        self.saved_step = self.step
        if self.rank == 0:
            extra = {"task_sampler": self.task_sampler.state_dict(),
                     "streams": {t: s.state_dict() for t, s in self.streams.items()}}
            try:
                self.checkpoints.save(self.step, self.model, self.optimizer, self.scheduler, extra)
            except OSError as error:
                newest = self.checkpoints.latest()
                raise EnvironmentFailure(
                    f"checkpoint step_{self.step:08d} not written ({describe_os_error(error)}); "
                    + (f"the newest checkpoint {newest} is intact" if newest else "no earlier checkpoint exists")
                ) from None
        if self.world_size > 1:
            dist.barrier()

    def keep_snapshot(self) -> None:
        """The weights alone at this step, when run.keep_every / run.keep_steps ask for it (rank 0)."""
        run = self.config.run
        if self.rank == 0 and snapshot_due(self.step, run.keep_every, run.keep_steps):
            try:
                save_snapshot(self.out, self.step, self.model)
            except OSError as error:
                raise EnvironmentFailure(f"snapshot step_{self.step:08d} not written ({describe_os_error(error)})"
                                         f"; {self.resume_hint()}") from None

    def log(self, records: list[dict]) -> None:
        if self.rank == 0 and records:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in records))

    def train(self) -> None:
        run = self.config.run
        pending: list[dict] = []
        bar = tqdm(total=run.num_steps, initial=self.step, desc="pre-training", disable=self.rank != 0,
                   dynamic_ncols=True)
        # A single process finishes its step on SIGINT/SIGTERM and saves; ranks of a distributed run cannot agree
        # on where to stop, so they stop at once and keep the last checkpoint.
        with (StopRequest() if self.world_size == 1 else contextlib.nullcontext()) as stop:
            try:
                self._train_loop(run, bar, pending, stop)
            except (Interrupted, KeyboardInterrupt) as error:
                if isinstance(error, Interrupted) and error.message:
                    raise  # the loop stopped on request and said where
                bar.close()
                newest = self.checkpoints.latest()
                kept = f"the newest checkpoint is {newest.name}" if newest else "no checkpoint was written yet"
                raise Interrupted(getattr(error, "signum", 2), f"{kept}; {self.resume_hint()}") from None
            finally:
                bar.close()  # before any message, so that the message is the last line
        if stop is not None and stop.signum is not None:
            raise Interrupted(stop.signum, f"training finished and saved; the evaluation was skipped (run python "
                                           f"-m uniter_core.evaluate --run {self.out})")

    def _train_loop(self, run, bar, pending: list[dict], stop) -> None:
        while self.step < run.num_steps:
            if stop is not None and stop.signum is not None:
                self.log(pending)
                if self.saved_step != self.step:
                    self.save()
                bar.close()
                raise Interrupted(stop.signum, f"stopped after step {self.step}, saved as checkpoint "
                                               f"step_{self.step:08d}; {self.resume_hint()}")
            start = time.perf_counter()
            record = self.train_step()
            seconds = time.perf_counter() - start
            record.update(seconds=round(seconds, 4), examples_per_s=round(record["examples"] / seconds, 2),
                          tokens_per_s=round(record["tokens"] / seconds, 1))
            pending.append(record)
            bar.update(1)
            bar.set_postfix(task=record["task"], loss=f"{record['loss']:.3f}", ex_s=record["examples_per_s"])
            if self.step % run.log_every == 0 or self.step == run.num_steps:
                self.log(pending)
                pending.clear()
            self.keep_snapshot()
            if run.eval_every and self.step % run.eval_every == 0 and self.step < run.num_steps:
                self.evaluate(self.config.data.val_split)
            if self.step % run.save_every == 0 or self.step == run.num_steps:
                self.log(pending)
                pending.clear()
                self.save()

    def evaluate(self, split: str, final: bool = False) -> dict | None:
        """Evaluation on rank 0 (small splits; other ranks wait); the final one also goes to eval_<split>.json."""
        result = None
        if self.rank == 0:
            result = evaluate_model(self.model, Path(self.config.data.corpus), split, self.config)
            self.log([{"step": self.step, "eval": {split: result}}])
            if final:
                write_results(self.out / f"eval_{split}.json", {"checkpoint": f"step_{self.step:08d}", **result})
        if self.world_size > 1:
            dist.barrier()
        return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML config (see configs/); omitted: all defaults")
    p.add_argument("--out", required=True, type=output_path, help="run folder, e.g. runs/pretrain-mini")
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in --out")
    p.add_argument("--force", action="store_true",
                   help="start over in an --out that holds a run (removes its checkpoints, metrics and evaluations)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. optim.lr=1e-4 run.num_steps=50")
    args = p.parse_intermixed_args(argv)  # overrides may come before or after the flags
    if args.resume and args.force:
        p.error("--resume and --force exclude each other")
    return args


def resume_command_line(args: argparse.Namespace) -> str:
    """The command that continues this run: the same interpreter, config and overrides, with --resume."""
    python = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("..") else sys.executable
    parts = [python, "-m", "uniter_core.train"] + (["--config", str(args.config)] if args.config else [])
    parts += ["--out", str(args.out), "--resume"] + (["--no-eval"] if args.no_eval else []) + list(args.overrides)
    return shlex.join(parts)


def train_run(config: TrainConfig, out: Path, resume: bool = False, force: bool = False, evaluate: bool = True,
              where: str = "config", resume_command: str | None = None) -> Trainer:
    """Train (or, with resume, continue) the run of `config` in the folder `out`, then evaluate it on the test
    split (eval_<split>.json); returns the finished Trainer. `where` names the config in messages and
    `resume_command` is the command line an interruption tells the user to run."""
    try:
        trainer = Trainer(config, out, resume, where=where, force=force)
        trainer.resume_command = resume_command
        trainer.train()
        if evaluate:
            trainer.evaluate(config.data.test_split, final=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return trainer


def _cli(argv=None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    trainer = train_run(config, args.out, args.resume, args.force, evaluate=not args.no_eval,
                        where=str(args.config or "config"), resume_command=resume_command_line(args))
    if trainer.rank == 0:
        print(f"run ready: {args.out}")
    return 0


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
