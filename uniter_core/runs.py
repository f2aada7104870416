"""Runs: the one place that builds a run's model and opens a run folder or an official checkpoint with its corpus.

    run = load_run("runs/pretrain-mini")                        # newest intact checkpoint of a trained run
    run.model, run.corpus, run.config, run.checkpoint          # UniterForPretraining, corpus folder, TrainConfig
    run = load_official_checkpoint("uniter-base.pt", "data/coco", "uniter-base")
    model = build_model(config)                                # a run's initialisation (what training starts from)

The trainer, the evaluation, the analyses and the workbench all come through here, so a model is always built
the same way from a config (preset, overrides, initial weights, centred region features) and a run folder is
always read the same way (its train_config.json, its newest checkpoint that loads, its corpus).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from uniter_core.config import UniterConfig
from uniter_core.data.dataset import ImageTextDataset
from uniter_core.errors import UserError
from uniter_core.io import read_json
from uniter_core.pretrain import UniterForPretraining
from uniter_core.train_config import ConfigError, TrainConfig, config_from_dict, wra_weight_max
from uniter_core.train_state import CheckpointError, newest_loadable, non_finite_weights

OFFICIAL_MAX_TEXT_LEN, OFFICIAL_MAX_REGIONS = 60, 100  # the official UNITER data limits (max_txt_len, max_bb)


# ------------------------------------------------------------------------------------------ building a model
def model_config(config: TrainConfig) -> UniterConfig:
    """The model's sizes of a training config: its preset with the task settings and model.overrides."""
    try:
        built = UniterConfig.from_preset(config.model.preset, **{
            "itm_neg_prob": config.tasks.itm_neg_prob, "itm_ot_lambda": wra_weight_max(config.tasks),
            **config.model.overrides})
    except Exception as error:  # noqa: BLE001 - the preset's own checks (sizes, known fields), whatever their type
        reason = str(error).strip().splitlines()[-1].strip()  # validators may wrap the reason in more lines
        raise ConfigError(f"config: model.preset / model.overrides: {reason}") from None
    return built


MLM_FIT_CAPTIONS = 2400  # training captions (spread over the split) the MiniLM start fits its MLM head on


def build_model(config: TrainConfig, train_set: ImageTextDataset | None = None) -> UniterForPretraining:
    """The initialisation of a run: the model named by model.init (MiniLM text weights, random, an official
    checkpoint or a run folder) and, with data.center_features, the training split's mean region feature
    (train_set: that split, already open). The MiniLM start fits its MLM head to the training captions with
    their regions, as MLM will read them."""
    needs_data = config.data.center_features or config.model.init == "minilm"
    if needs_data and train_set is None:
        train_set = ImageTextDataset(config.data.corpus, config.data.train_split, config.data.max_text_len,
                                     config.data.max_regions)
    mean = (torch.from_numpy(train_set.store.feature_mean(train_set.image_ids))
            if config.data.center_features else None)
    if config.model.init == "minilm":
        step = max(1, -(-len(train_set) // MLM_FIT_CAPTIONS))
        examples = [train_set[i] for i in range(0, len(train_set), step)]
        return UniterForPretraining.from_minilm(model_config(config), examples=examples, feature_mean=mean)
    model = _initial_weights(config)
    if mean is not None:
        model.uniter.img_embeddings.feat_mean.copy_(mean)
    return model


def initial_model(config: TrainConfig, corpus: str | Path | None = None) -> UniterForPretraining:
    """The model a run of `config` starts from, as the trainer builds it (on rank 0: the same seed, so the same
    random weights): what `evaluate --which baseline` and `collapse --checkpoint init` look at. `corpus`
    replaces data.corpus (a run's corpus as found by run_corpus); the config itself is not changed."""
    if corpus is not None:
        config = copy.deepcopy(config)
        config.data.corpus = str(corpus)
    torch.manual_seed(config.run.seed)
    return build_model(config)


def apply_speed_settings(model: UniterForPretraining, config: TrainConfig) -> UniterForPretraining:
    """The run's encoder speed switches (run.unpad, run.varlen_attention): the same outputs, no work on padding."""
    model.uniter.unpad_tokens = config.run.unpad
    model.uniter.varlen_attention = config.run.varlen_attention
    return model


def _initial_weights(config: TrainConfig) -> UniterForPretraining:
    init = config.model.init
    if init == "random":
        return UniterForPretraining(model_config(config))
    path = Path(init)
    if (path / "config.json").exists():
        return UniterForPretraining.from_pretrained(path)
    if path.is_file():
        return UniterForPretraining.from_official_state_dict(path, model_config(config))
    raise ConfigError(f"model.init {init!r} is neither minilm, random, an official checkpoint file nor a "
                      f"saved model folder")


def load_finite_model(checkpoint: Path) -> UniterForPretraining:
    """The UniterForPretraining of a checkpoint; CheckpointError when its weights are not all finite."""
    model = UniterForPretraining.from_pretrained(checkpoint / "model")
    bad = non_finite_weights(model)
    if bad:
        raise CheckpointError(f"weights hold NaN or infinite values (e.g. {bad[0]})")
    return model


# ------------------------------------------------------------------------------------------ opening a run
@dataclass
class Run:
    """A model with the corpus it reads: a run folder's newest checkpoint, or an official checkpoint."""

    model: UniterForPretraining
    corpus: Path
    config: TrainConfig | None  # the run's training config (None for an official checkpoint)
    checkpoint: Path  # the checkpoint folder (run) or file (official) the weights came from
    skipped: tuple[str, ...] = ()  # newer checkpoints passed over as damaged, with the reason

    @property
    def max_text_len(self) -> int:
        return self.config.data.max_text_len if self.config else OFFICIAL_MAX_TEXT_LEN

    @property
    def max_regions(self) -> int:
        return self.config.data.max_regions if self.config else OFFICIAL_MAX_REGIONS


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The training config a run folder was written with (its train_config.json)."""
    config_file = Path(run_dir) / "train_config.json"
    return config_from_dict(read_json(config_file, "run config"), str(config_file))


def run_corpus(run_dir: str | Path, config: TrainConfig) -> Path:
    """The corpus of a run: data.corpus as written, a relative one looked up from the working directory, then
    beside the run; UserError when it is not a built corpus."""
    run_dir = Path(run_dir)
    corpus = Path(config.data.corpus)
    if not corpus.is_absolute() and not corpus.exists() and (run_dir / corpus).exists():
        corpus = run_dir / corpus
    if not (corpus / "manifest.json").exists():
        raise UserError(f"{run_dir / 'train_config.json'}: data.corpus {corpus} is not a built corpus (no "
                        f"manifest.json)")
    return corpus


def newest_loadable_model(run_dir: str | Path, warn=None) -> tuple[Path | None, UniterForPretraining | None]:
    """(checkpoint folder, model) of the newest checkpoint whose model loads with finite weights; (None, None)
    when the run has none; `warn(message)` hears about each one skipped (see train_state.newest_loadable)."""
    return newest_loadable(run_dir, load_finite_model, warn=warn)


def load_run(run_dir: str | Path, warn=None, corpus: str | Path | None = None) -> Run:
    """The newest intact checkpoint of a run folder written by uniter_core.train, with its corpus and config;
    `warn(message)` hears about each damaged checkpoint skipped (they are also kept in Run.skipped). `corpus`
    replaces the run's own data.corpus (which may be relative to another working directory)."""
    run_dir = Path(run_dir)
    skipped: list[str] = []

    def note(message: str) -> None:
        skipped.append(message)
        if warn is not None:
            warn(message)

    config_file = run_dir / "train_config.json"
    latest, model = newest_loadable_model(run_dir, note) if config_file.exists() else (None, None)
    if latest is None:
        raise UserError(f"{run_dir} is not a run folder with a checkpoint (needs checkpoints/step_* and "
                        f"train_config.json; train with `python -m uniter_core.train`)")
    config = read_run_config(run_dir)
    if corpus is not None:
        if not (Path(corpus) / "manifest.json").exists():
            raise UserError(f"--corpus {corpus} is not a built corpus (no manifest.json)")
        return Run(model, Path(corpus), config, latest, tuple(skipped))
    return Run(model, run_corpus(run_dir, config), config, latest, tuple(skipped))


def load_official_checkpoint(checkpoint: str | Path, corpus_dir: str | Path, preset: str = "uniter-base",
                             **overrides) -> Run:
    """An official UNITER .pt file with a corpus whose features fit it (e.g. one converted from the official
    LMDB with uniter_core.data.official_db)."""
    try:
        config = UniterConfig.from_preset(preset, **overrides)
    except Exception as error:  # noqa: BLE001 - the config's own validators raise their own types
        reason = str(error).strip().splitlines()[-1].strip() if str(error).strip() else type(error).__name__
        raise UserError(f"--preset {preset}{' / --override' if overrides else ''}: {reason}") from None
    corpus_dir = Path(corpus_dir)
    # the checkpoint first: a damaged or foreign file must be named before any complaint about the corpus
    model = UniterForPretraining.from_official_state_dict(checkpoint, config)
    store_manifest = corpus_dir / "img_db" / "manifest.json"
    if not store_manifest.exists():
        raise UserError(f"{corpus_dir} is not a built corpus (no img_db/manifest.json)")
    feature_dim = read_json(store_manifest, "feature store manifest").get("feature_dim")
    if feature_dim != config.img_dim:
        raise UserError(f"{corpus_dir} has {feature_dim}-d region features but {preset} expects {config.img_dim}")
    return Run(model, corpus_dir, None, Path(checkpoint))


# ------------------------------------------------------------------------------------------ batches
def to_device(batch: dict, device: torch.device | str, non_blocking: bool = False) -> dict:
    """A collated batch with its tensors on `device` (lists and strings stay as they are)."""
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}
