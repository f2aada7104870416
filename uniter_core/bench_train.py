"""Training throughput of UniterForPretraining against a plain transformers BertModel of the same size.

    python -m uniter_core.bench_train [--preset uniter-base] [--batch 256] [--text 20] [--regions 70] [--device cuda]

Both models take optimisation steps (forward, loss, backward, AdamW) on batches holding the same number of real
tokens: the BertModel gets [batch, text + regions] word-pieces; UNITER gets `batch` examples of `text` word-pieces
and `regions` region features (lengths jittered per example, as in real data, and packed by the gather index).
Prints median tokens/s of each and the ratio, measured in the same run. On CUDA the steps use bf16 autocast
and the fused AdamW (both models alike).

UNITER is timed in several variants: padded (every position of the [batch, longest] packing goes through
every layer), unpadded (`UniterModel.unpad_tokens`: position-wise layers on real tokens only, attention on the
padded view), varlen (`UniterModel.varlen_attention`: attention on the packed tokens too, variable-length flash
attention on CUDA), and with `--compile` the last two again with torch.compile of the encoder; `--compile`
compiles the BertModel too, so both compiled numbers are printed beside the plain ones. `--profile` prints
each variant's most expensive kernels (torch.profiler, 3 steps) to show where the time goes.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import BertConfig, BertModel

from uniter_core.cli import at_least, device_arg, exit_with, run_command
from uniter_core.config import PRESETS, UniterConfig
from uniter_core.data.dataset import collate
from uniter_core.masking import mask_text
from uniter_core.optim import build_optimizer
from uniter_core.pretrain import UniterForPretraining, task_loss
from uniter_core.runs import to_device
from uniter_core.tasks import itm_collate, mlm_collate


def uniter_batch(config: UniterConfig, batch: int, text: int, regions: int, task: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(batch):
        t = max(3, text + int(torch.randint(-text // 4, text // 4 + 1, (1,), generator=g)))
        k = max(1, regions + int(torch.randint(-regions // 4, regions // 4 + 1, (1,), generator=g)))
        ids = torch.randint(config.first_word_piece_id, config.vocab_size, (t,), generator=g)
        ids[0], ids[-1] = config.cls_token_id, config.sep_token_id
        example = {"input_ids": ids, "img_feat": torch.randn(k, config.img_dim, generator=g),
                   "norm_bb": torch.rand(k, 6, generator=g), "soft_labels": torch.rand(k, config.num_region_classes,
                                                                                         generator=g),
                   "image_id": str(i), "text_id": str(i), "target": i % 2}
        if task == "mlm":
            example["input_ids"], example["txt_labels"] = mask_text(
                ids, g, config.mask_token_id, (config.first_word_piece_id, config.vocab_size))
        examples.append(example)
    return {"mlm": mlm_collate, "itm": itm_collate}.get(task, collate)(examples)


def time_steps(step, warmup: int, repeats: int, device: torch.device) -> float:
    """Median seconds of one call of `step`."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def one_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


@torch.no_grad()
def check_variants(uniter: UniterForPretraining, batch: dict, autocast, tolerance: float) -> bool:
    """Eval-mode final states of the unpadded and varlen encoders against the padded one, on real positions."""
    model, real = uniter.uniter, batch["attn_masks"].bool()
    was_training = uniter.training
    uniter.eval()
    states = {}
    for label, unpad, varlen in (("padded", False, False), ("unpadded", True, False), ("varlen", True, True)):
        model.unpad_tokens, model.varlen_attention = unpad, varlen
        with autocast:
            states[label] = model.forward_batch(batch).last_hidden_state[real].float()
    uniter.train(was_training)
    ok = True
    for label in ("unpadded", "varlen"):
        error = float((states[label] - states["padded"]).abs().max())
        ok &= error <= tolerance
        print(f"check: {label} vs padded, max abs difference of the final states {error:.2e} "
              f"({'ok' if error <= tolerance else 'FAILED'}, tolerance {tolerance:.0e})")
    return ok


def profile_steps(label: str, step, device: torch.device, rows: int = 12) -> None:
    """Print the `rows` kernels (CUDA) or operators (CPU) that take the most time over 3 steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"--- profile: {label} (3 steps) ---")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60))


def bench_train_command(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="uniter-base", choices=sorted(PRESETS))
    p.add_argument("--batch", type=at_least(1), default=256)
    p.add_argument("--text", type=at_least(3), default=20, help="mean word-pieces per example")
    p.add_argument("--regions", type=at_least(1), default=70, help="mean regions per example")
    p.add_argument("--task", default="mlm", choices=("mlm", "itm"))
    p.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=at_least(0), default=3)
    p.add_argument("--repeats", type=at_least(1), default=10)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd encoders (both models)")
    p.add_argument("--profile", action="store_true", help="print each variant's most expensive kernels")
    p.add_argument("--check", action="store_true",
                   help="first check that the unpadded and varlen encoders give the padded one's states")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    config = UniterConfig.from_preset(args.preset)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)

    batch = to_device(uniter_batch(config, args.batch, args.text, args.regions, args.task), device)
    real_tokens = int(batch["attn_masks"].sum())
    uniter = UniterForPretraining(config).to(device)
    uniter_opt = build_optimizer(uniter, 1e-5)
    checked = True
    if args.check:  # a failed check is reported and sets the exit status; the timings still run
        try:
            checked = check_variants(uniter, batch, autocast, 5e-2 if device.type == "cuda" else 1e-4)
        except Exception as error:  # noqa: BLE001
            print(f"check: FAILED ({one_line(error)})")
            checked = False

    def uniter_step():
        with autocast:
            loss, _ = task_loss(args.task, uniter(batch, args.task), config.itm_ot_lambda)
        loss.backward()
        uniter_opt.step()
        uniter_opt.zero_grad(set_to_none=True)

    bert_config = BertConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                             num_hidden_layers=config.num_hidden_layers,
                             num_attention_heads=config.num_attention_heads,
                             intermediate_size=config.intermediate_size, attn_implementation="sdpa")
    bert = BertModel(bert_config).to(device)
    bert_opt = build_optimizer(bert, 1e-5)
    seq = -(-real_tokens // args.batch)  # the same number of tokens, as full rows
    ids = torch.randint(1000, config.vocab_size, (args.batch, seq), device=device)

    def bert_step():
        with autocast:
            loss = bert(input_ids=ids).last_hidden_state.float().pow(2).mean()
        loss.backward()
        bert_opt.step()
        bert_opt.zero_grad(set_to_none=True)

    results = {}  # name -> median seconds per step
    failed = {}  # name -> error: one variant failing (say, a compiler error on one device) keeps the others

    def measure(label: str, step, unpad: bool = False, varlen: bool = False) -> None:
        uniter.uniter.unpad_tokens, uniter.uniter.varlen_attention = unpad, varlen
        try:
            results[label] = time_steps(step, args.warmup, args.repeats, device)
            if args.profile:
                profile_steps(label, step, device)
        except Exception as error:  # noqa: BLE001 - reported below, and the exit status says so
            failed[label] = one_line(error)
            uniter_opt.zero_grad(set_to_none=True)
            bert_opt.zero_grad(set_to_none=True)

    measure("BertModel (SDPA)", bert_step)
    measure("UNITER padded", uniter_step)
    measure("UNITER unpadded", uniter_step, unpad=True)
    measure("UNITER varlen", uniter_step, unpad=True, varlen=True)
    if args.compile:
        bert.encoder.compile()
        measure("BertModel compiled", bert_step)
        uniter.uniter.encoder.compile(dynamic=True)  # dynamic: the number of real tokens changes per batch
        measure("UNITER unpadded compiled", uniter_step, unpad=True)
        measure("UNITER varlen compiled", uniter_step, unpad=True, varlen=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}, preset {args.preset}, task {args.task}, batch {args.batch}, "
          f"{real_tokens} real tokens per step (UNITER packs {batch['attn_masks'].numel()} positions; "
          f"BertModel: {args.batch} x {seq} = {args.batch * seq})")
    bert_s = results["BertModel (SDPA)"]
    print(f"{'model':<28}{'median step (ms)':>18}{'tokens/s':>14}{'vs BertModel':>14}")
    for label, seconds in results.items():
        print(f"{label:<28}{seconds * 1e3:>18.1f}{real_tokens / seconds:>14.0f}{bert_s / seconds:>13.2f}x")
    for label, error in failed.items():
        print(f"{label:<28} FAILED ({error})")
    best = min((v for k, v in results.items() if k.startswith("UNITER")), default=None)
    if best is not None:
        print(f"ratio UNITER (best variant) / BertModel tokens/s: {bert_s / best:.2f}x")
    return 1 if failed or not checked else 0


def main(argv=None) -> int:
    return run_command(bench_train_command, argv)


if __name__ == "__main__":
    exit_with(main())
