"""Small inputs shared by the tests: a tiny model config and examples shaped like dataset items, the overrides
of a tiny training run and readers of what it wrote, and caption files for the extraction command. Fixtures
that build on these live in conftest.py; fault-injection helpers in faults.py."""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from safetensors.torch import load_file

from uniter_core.config import UniterConfig
from uniter_core.data.dataset import collate
from uniter_core.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ model inputs
def tiny_config(**overrides) -> UniterConfig:
    values = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, img_dim=16, num_region_classes=9, cls_token_id=1, sep_token_id=2,
                  mask_token_id=3, first_word_piece_id=5)
    return UniterConfig(**{**values, **overrides})


def make_examples(config: UniterConfig, txt_lens=(5, 8, 3), num_bbs=(4, 2, 6), seed: int = 0) -> list[dict]:
    """Examples shaped like ImageTextDataset items: [CLS] pieces [SEP], regions with boxes and soft labels."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for i, (tl, nbb) in enumerate(zip(txt_lens, num_bbs)):
        pieces = torch.randint(config.first_word_piece_id, config.vocab_size, (tl - 2,), generator=g)
        xy = torch.rand(nbb, 2, generator=g) * 0.5
        wh = torch.rand(nbb, 2, generator=g) * 0.5 + 0.05
        examples.append({
            "input_ids": torch.cat([torch.tensor([config.cls_token_id]), pieces, torch.tensor([config.sep_token_id])]),
            "img_feat": torch.randn(nbb, config.img_dim, generator=g).abs(),
            "norm_bb": torch.cat([xy, xy + wh, wh], dim=1),
            "soft_labels": torch.softmax(3 * torch.randn(nbb, config.num_region_classes, generator=g), dim=-1),
            "image_id": f"img{i}", "text_id": f"txt{i}"})
    return examples


def make_batch(config: UniterConfig, **kwargs) -> dict:
    return collate(make_examples(config, **kwargs))


# ------------------------------------------------------------------------------------------ tiny training runs
TINY_MODEL = ("model.init=random", "model.overrides={num_hidden_layers: 2, hidden_size: 32, "
              "num_attention_heads: 4, intermediate_size: 64}")


def tiny_overrides(corpus: Path, steps: int = 8, **run) -> list[str]:
    """Config overrides of a seconds-long CPU run of a 2-layer model on `corpus`."""
    settings = {"num_steps": steps, "save_every": 2, "log_every": 1, "keep_last": 2, **run}
    return [*TINY_MODEL, f"data.corpus={corpus}", "optim.warmup_steps=2", "optim.lr=0.001",
            "batch.max_tokens=400", "batch.size_multiple=2", "batch.bucket_size=64",
            *(f"run.{k}={v}" for k, v in settings.items())]


def losses(run: Path) -> dict[int, tuple[str, float]]:
    """step -> (task, loss) of a run's metrics.jsonl."""
    return {r["step"]: (r["task"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl") if "loss" in r}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(run / "checkpoints" / latest / "model" / "model.safetensors")


# ------------------------------------------------------------------------------------------ user data
CORPUS_ARGS = ["--n-train", "4", "--n-val", "1", "--n-test", "1", "--shard-size", "2", "--seed", "3"]  # 6 images
IMAGES = {"astronaut.png": ("astronaut", (96, 96), "PNG"), "cat.jpg": ("chelsea", (120, 80), "JPEG"),
          "camera.png": ("camera", (96, 96), "PNG"), "sub/coffee.jpg": ("coffee", (700, 350), "JPEG")}
CAPTIONS = [("astronaut.png", "an astronaut in front of a flag"), ("cat.jpg", "a cat lying on a blanket"),
            ("cat.jpg", "a ginger cat"), ("camera.png", "a man with a camera"),
            ("sub/coffee.jpg", "a cup of coffee on a saucer")]


def write_csv(path, captions=CAPTIONS, header=("image", "caption")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(captions)
    return path


# ------------------------------------------------------------------------------------------ attention maps
def sharp_records(n=12, seed=9):
    """(MapRecords, true labels) of n synthetic maps with sharp patterns, as a maps file holds them."""
    from analyses.mapfile import MapRecord
    from analyses.synthetic import generate

    maps = list(generate(n, seed=seed, sharpness="sharp"))
    return [MapRecord(i, m.map, m.n_text, m.n_regions) for i, m in enumerate(maps)], [m.label for m in maps]
