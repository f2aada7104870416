"""Training configuration: one YAML file per experiment, validated before any work starts.

A config is a nested mapping with the sections below. Unknown keys, wrong types and missing data paths are
reported in one sentence naming the file and the key, so a typo never silently falls back to a default.
Command-line overrides use dotted keys: `optim.lr=1e-4 run.num_steps=200`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from uniter_core.errors import UserError
from uniter_core.io import read_text
from uniter_core.tasks import DEFAULT_MIX, mix_problem




class ConfigError(UserError, ValueError):
    """A training config that cannot be run."""


def wra_weight_at(tasks: "TaskSection", step: int) -> float:
    """The WRA weight of the step with index `step` (0-based): tasks.itm_ot_lambda, or its schedule."""
    points = [(0, tasks.itm_ot_lambda), *tasks.itm_ot_schedule]  # validate() made it (step, weight) pairs
    for (start, low), (end, high) in zip(points, points[1:]):
        if step < end:
            return low + (high - low) * (step - start) / (end - start)
    return points[-1][1]


def wra_weight_max(tasks: "TaskSection") -> float:
    """The largest WRA weight a run reaches: WRA's inputs are built whenever it is above 0."""
    return max([tasks.itm_ot_lambda] + [weight for _, weight in tasks.itm_ot_schedule])


@dataclass
class ModelSection:
    preset: str = "uniter-mini"  # uniter-mini | uniter-base | uniter-large
    init: str = "minilm"  # minilm (offline BERT weights) | random | path to an official .pt | run folder
    overrides: dict = field(default_factory=dict)  # any UniterConfig field, e.g. {num_hidden_layers: 2}


@dataclass
class DataSection:
    corpus: str = "data/collage"  # corpus folder (img_db/ + txt_db/)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    max_text_len: int = 60
    max_regions: int = 100
    num_workers: int = 0
    # Subtract the training split's mean region feature inside the model (saved with it: UniterImageEmbeddings.
    # feat_mean). Off by default, as in the official model; the demo turns it on (BENCHMARKS.md).
    center_features: bool = False


@dataclass
class TaskSection:
    mix: dict = field(default_factory=lambda: dict(DEFAULT_MIX))
    itm_neg_prob: float = 0.5
    itm_ot_lambda: float = 0.1  # weight of the WRA loss in ITM steps (the official value)
    # Optional: [[step, weight], ...] with increasing steps. The weight starts at itm_ot_lambda at step 0, moves
    # linearly from point to point and stays at the last weight. Empty: itm_ot_lambda throughout.
    itm_ot_schedule: tuple = ()


@dataclass
class OptimSection:
    lr: float = 5e-5
    betas: tuple = (0.9, 0.98)
    weight_decay: float = 0.01
    warmup_steps: int = 10000
    grad_clip: float = 5.0
    grad_accum: int = 1
    image_lr_scale: float = 1.0  # learning-rate multiplier of the image embedder (the part that starts random)


@dataclass
class BatchSection:
    max_tokens: int = 10240  # per micro-batch, counted as longest example x batch size
    bucket_size: int = 8192
    size_multiple: int = 8


@dataclass
class RunSection:
    num_steps: int = 100000
    seed: int = 42
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    save_every: int = 1000
    keep_last: int = 3
    # Snapshots of the weights alone (RUN/snapshots/step_N/), never pruned, for the training dynamics
    # (analyses.dynamics): every keep_every steps (0: none) and at the steps of keep_steps; step 0 is the
    # initialisation. They do not change the training.
    keep_every: int = 0
    keep_steps: tuple = ()
    device: str = "auto"  # auto | cpu | cuda
    bf16: bool = True  # bf16 autocast, used on CUDA only
    unpad: bool = True  # position-wise layers on real tokens only (UniterModel.unpad_tokens); same results
    # with unpad, attention on the packed tokens too (UniterModel.varlen_attention): variable-length flash
    # attention on CUDA; on CPU slower than the padded attention
    varlen_attention: bool = False
    threads: int = 0  # torch intra-op CPU threads (0: torch's default); fixing it makes CPU runs repeatable
    compile: bool = False  # torch.compile the encoder (GPU: 1.19x the eager step, BENCHMARKS.md; slow to start)
    sync_check: bool = False  # distributed runs: log whether all ranks hold identical weights after each step


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    tasks: TaskSection = field(default_factory=TaskSection)
    optim: OptimSection = field(default_factory=OptimSection)
    batch: BatchSection = field(default_factory=BatchSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict:
        return asdict(self)


def _merge(section, values: dict, where: str, prefix: str = "") -> None:
    """Copy `values` onto a config section; `where` names the file (or override) for error messages."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {prefix or 'the config'} must be a mapping, got {values!r}")
    known = {f.name: f for f in fields(section)}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{where}: unknown key {name!r} (known here: {', '.join(sorted(known))})")
        current = getattr(section, key)
        if is_dataclass(current):
            _merge(current, value, where, f"{name}.")
        else:
            setattr(section, key, _coerce(value, current, f"{where}: {name}"))


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Keep the default's type (ints accepted for floats, lists for tuples); refuse anything else."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, float) and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # YAML reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    elif isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(current, tuple) and isinstance(value, (list, tuple)):
        return tuple(value)
    elif isinstance(current, (str, dict)) and isinstance(value, type(current)):
        return copy.deepcopy(value)
    raise ConfigError(f"{where}: expected {type(current).__name__}, got {value!r}")


def _checked_schedule(schedule, where: str) -> tuple:
    """A WRA weight schedule as ((step, weight), ...): [step, weight] pairs with whole steps, each larger than the
    one before, and finite weights >= 0 (YAML's "1e-1", read as text, counts as the number it spells)."""
    key = f"{where}: tasks.itm_ot_schedule"
    checked, previous = [], 0
    for number, point in enumerate(schedule, 1):
        if not (isinstance(point, (list, tuple)) and len(point) == 2):
            raise ConfigError(f"{key} must be a list of [step, weight] pairs; point {number} is {point!r}")
        step, weight = point
        if not (isinstance(step, int) and not isinstance(step, bool) and step > previous):
            raise ConfigError(f"{key}: point {number} {list(point)!r} needs a whole step above {previous} (steps "
                              f"start above 0 and increase)")
        try:
            weight = _coerce(weight, 0.0, key)  # as any float key reads it (YAML's "1e-1" is text)
        except ConfigError:
            weight = math.nan
        if not (math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"{key}: point {number} {list(point)!r} needs a weight that is a number >= 0")
        checked.append((step, weight))
        previous = step
    return tuple(checked)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    try:
        return key.split("."), yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({_yaml_reason(error)})") from None


def _yaml_reason(error: yaml.YAMLError) -> str:
    """One line for a YAML error (its str() quotes the source over several lines)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem}, line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def config_from_dict(values: dict, where: str) -> TrainConfig:
    """A config from a mapping (e.g. a run's saved train_config.json), validated like a YAML file."""
    config = TrainConfig()
    _merge(config, values, where)
    validate(config, where)
    return config


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config (None: all defaults) and apply dotted overrides."""
    config = TrainConfig()
    if path is not None:
        path = Path(path)
        try:
            values = yaml.safe_load(read_text(path, "config file", ConfigError)) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_reason(error)})") from None
        _merge(config, values, str(path))
    for text in overrides:
        keys, value = _parse_override(text)
        nested: dict = value
        for key in reversed(keys):
            nested = {key: nested}
        _merge(config, nested, f"override {text!r}")
    validate(config, str(path) if path else "config")
    return config


def validate(config: TrainConfig, where: str) -> None:
    """Checks that need no data: positive sizes, known tasks and presets."""
    problem = mix_problem(config.tasks.mix)
    if problem:
        raise ConfigError(f"{where}: tasks.mix{problem}")
    at_least = {"run.num_steps": 1, "run.save_every": 1, "run.keep_last": 1, "run.log_every": 1,
                "run.eval_every": 0, "optim.grad_accum": 1, "optim.warmup_steps": 0, "batch.max_tokens": 1,
                "batch.bucket_size": 1, "batch.size_multiple": 1, "data.max_text_len": 1, "data.max_regions": 1,
                "data.num_workers": 0}
    for key, low in at_least.items():
        section, name = key.split(".")
        if getattr(getattr(config, section), name) < low:
            raise ConfigError(f"{where}: {key} must be >= {low}, got {getattr(getattr(config, section), name)}")
    if not 0 <= config.run.seed < 2 ** 31:
        raise ConfigError(f"{where}: run.seed must lie in [0, 2**31), got {config.run.seed}")
    positive = {"optim.lr": config.optim.lr, "optim.grad_clip": config.optim.grad_clip}
    for key, value in positive.items():
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{where}: {key} must be a finite number > 0, got {value}")
    if not (math.isfinite(config.optim.weight_decay) and config.optim.weight_decay >= 0):
        raise ConfigError(f"{where}: optim.weight_decay must be >= 0, got {config.optim.weight_decay}")
    betas = config.optim.betas
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ConfigError(f"{where}: optim.betas must be two numbers in [0, 1), got {list(betas)}")
    if not 0 <= config.tasks.itm_neg_prob <= 1:
        raise ConfigError(f"{where}: tasks.itm_neg_prob must lie in [0, 1], got {config.tasks.itm_neg_prob}")
    if not math.isfinite(config.tasks.itm_ot_lambda) or config.tasks.itm_ot_lambda < 0:
        raise ConfigError(f"{where}: tasks.itm_ot_lambda must be >= 0, got {config.tasks.itm_ot_lambda}")
    config.tasks.itm_ot_schedule = _checked_schedule(config.tasks.itm_ot_schedule, where)
    if config.run.keep_every < 0:
        raise ConfigError(f"{where}: run.keep_every must be >= 0 (0: no snapshots by interval)")
    steps = config.run.keep_steps
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s for s in steps):
        raise ConfigError(f"{where}: run.keep_steps must be a list of whole steps >= 0, got {list(steps)}")
    config.run.keep_steps = tuple(sorted(set(steps)))
    for key in ("corpus", "train_split", "val_split", "test_split"):
        if not getattr(config.data, key):
            raise ConfigError(f"{where}: data.{key} must not be empty")
    if not config.optim.image_lr_scale > 0:
        raise ConfigError(f"{where}: optim.image_lr_scale must be > 0 (1: the same learning rate as the rest)")
    if config.run.threads < 0:
        raise ConfigError(f"{where}: run.threads must be >= 0 (0: torch's default)")
    if config.run.varlen_attention and not config.run.unpad:
        raise ConfigError(f"{where}: run.varlen_attention needs run.unpad (attention on the packed tokens)")
    if config.run.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{where}: run.device must be auto, cpu or cuda")
