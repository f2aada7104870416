"""Training throughput of UniterForPretraining against a plain transformers BertModel of the same size.

    python -m uniter_core.bench_train [--preset uniter-base] [--batch 256] [--text 20] [--regions 70] [--device cuda]

Both models take optimisation steps (forward, loss, backward, AdamW) on batches holding the same number of real
tokens: the BertModel gets [batch, text + regions] word-pieces; UNITER gets `batch` examples of `text` word-pieces
and `regions` region features (lengths jittered per example, as in real data, and packed by the gather index).
Prints median tokens/s of each and the ratio, measured in the same run. On CUDA the steps use bf16 autocast
and the fused AdamW (both models alike).

UNITER is timed in up to three variants: padded (every position of the [batch, longest] packing goes through
every layer), unpadded (`UniterModel.unpad_tokens`: position-wise layers on real tokens only), and with
`--compile` also unpadded + torch.compile of the encoder; `--compile` compiles the BertModel too, so both
compiled numbers are printed beside the plain ones.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import BertConfig, BertModel

from uniter_core.config import UniterConfig
from uniter_core.data.dataset import collate
from uniter_core.optim import build_optimizer
from uniter_core.pretrain import UniterForPretraining, task_loss
from uniter_core.tasks import itm_collate, mlm_collate
from uniter_core.masking import mask_text


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="uniter-base")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--text", type=int, default=20, help="mean word-pieces per example")
    p.add_argument("--regions", type=int, default=70, help="mean regions per example")
    p.add_argument("--task", default="mlm", choices=("mlm", "itm"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd encoders (both models)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    config = UniterConfig.from_preset(args.preset)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)

    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in
             uniter_batch(config, args.batch, args.text, args.regions, args.task).items()}
    real_tokens = int(batch["attn_masks"].sum())
    uniter = UniterForPretraining(config).to(device)
    uniter_opt = build_optimizer(uniter, 1e-5)

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
    results["BertModel (SDPA)"] = time_steps(bert_step, args.warmup, args.repeats, device)
    uniter.uniter.unpad_tokens = False
    results["UNITER padded"] = time_steps(uniter_step, args.warmup, args.repeats, device)
    uniter.uniter.unpad_tokens = True
    results["UNITER unpadded"] = time_steps(uniter_step, args.warmup, args.repeats, device)
    if args.compile:
        bert.encoder.compile()
        results["BertModel compiled"] = time_steps(bert_step, args.warmup, args.repeats, device)
        uniter.uniter.encoder.compile(dynamic=True)  # dynamic: the number of real tokens changes per batch
        results["UNITER unpadded compiled"] = time_steps(uniter_step, args.warmup, args.repeats, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}, preset {args.preset}, task {args.task}, batch {args.batch}, "
          f"{real_tokens} real tokens per step (UNITER packs {batch['attn_masks'].numel()} positions; "
          f"BertModel: {args.batch} x {seq} = {args.batch * seq})")
    bert_s = results["BertModel (SDPA)"]
    print(f"{'model':<28}{'median step (ms)':>18}{'tokens/s':>14}{'vs BertModel':>14}")
    for label, seconds in results.items():
        print(f"{label:<28}{seconds * 1e3:>18.1f}{real_tokens / seconds:>14.0f}{bert_s / seconds:>13.2f}x")
    best = min(v for k, v in results.items() if k.startswith("UNITER"))
    print(f"ratio UNITER (best variant) / BertModel tokens/s: {bert_s / best:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
