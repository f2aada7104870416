"""Weights in and out, always with strict key matching and one clear error when a checkpoint does not fit.

- Official UNITER checkpoints (`uniter-base.pt`, `uniter-large.pt`, or any state dict of the official
  classes): 'module.' prefixes from DistributedDataParallel and the old gamma/beta LayerNorm names are
  accepted; a full pre-training state dict or an encoder-only one (keys 'uniter.*' or unprefixed).
- Our own runs: `save_pretrained` / `load_pretrained` write and read a folder with config.json and
  model.safetensors; a tied weight is stored once, under its source name.
- The offline MiniLM (a BertModel state dict) initialises the text embeddings, encoder and pooler.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from uniter_core.config import UniterConfig
from uniter_core.errors import UserError
from uniter_core.io import atomic_path, write_text
from uniter_core.io import JsonlError, read_json

logger = logging.getLogger(__name__)

HEAD_PREFIXES = ("cls.", "feat_regress.", "region_classifier.", "itm_output.")
# buffers that newer BERT checkpoints carry and the official ones do not: never weights, safe to drop
IGNORED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointError(UserError, ValueError):
    """A checkpoint file (or a model folder's config.json) that cannot be read; the message names it."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """A checkpoint file or a model folder's file does not exist."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose keys or shapes do not fit the model; lists every offending key."""

    def __init__(self, source: str, model: str, missing=(), unexpected=(), mismatched=()):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("shape-mismatched", self.mismatched)):
            if items:
                shown = ", ".join(items[:25]) + (f", ... and {len(items) - 25} more" if len(items) > 25 else "")
                parts.append(f"{len(items)} {label} key(s): {shown}")
        super().__init__(f"checkpoint {source} does not fit {model}: " + "; ".join(parts))


def _describe(model) -> str:
    c = model.config
    return (f"{type(model).__name__}(hidden {c.hidden_size}, {c.num_hidden_layers} layers, vocab {c.vocab_size}, "
            f"img_dim {c.img_dim}, {c.num_region_classes} region classes)")


def _optional_buffers(keys) -> set[str]:
    """Buffers that are not in official checkpoints (nor in folders saved before they existed); absent, they
    keep the value the model was built with (UniterImageEmbeddings.feat_mean: zeros, no centring)."""
    return {k for k in keys if k.endswith("img_embeddings.feat_mean")}


def _fill_optional(state_dict: dict, current: dict) -> dict:
    return {**{k: current[k] for k in _optional_buffers(current) if k not in state_dict}, **state_dict}


def check_state_dict(state_dict: dict, expected: dict, source: str, model_name: str, optional=()) -> None:
    """Raise CheckpointMismatchError unless `state_dict` has exactly the `expected` {key: shape} (keys in
    `optional` may be absent)."""
    missing = sorted(k for k in expected if k not in state_dict and k not in optional)
    unexpected = sorted(k for k in state_dict if k not in expected)
    mismatched = sorted(f"{k} (checkpoint {list(v.shape)}, model {list(expected[k])})"
                        for k, v in state_dict.items() if k in expected and tuple(v.shape) != tuple(expected[k]))
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, model_name, missing, unexpected, mismatched)


def read_state_dict(source) -> tuple[dict, str]:
    """A state dict from a dict, a torch file (.pt/.bin/.pth) or a .safetensors file; plus a name for messages."""
    if isinstance(source, dict):
        state_dict, name = source, "state dict"
    else:
        path = Path(source)
        if not path.is_file():
            raise MissingCheckpointError(f"checkpoint {path} does not exist")
        name = str(path)
        if path.suffix == ".safetensors":
            state_dict = _load_safetensors(path)
        else:
            try:
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - zip, pickle and OS errors all mean a damaged file here
                raise CheckpointError(f"checkpoint {path} cannot be read as a torch state dict: it is truncated, "
                                      f"damaged or not a torch file ({type(e).__name__})") from None
        if not isinstance(state_dict, dict):
            raise CheckpointError(f"checkpoint {path} holds a {type(state_dict).__name__}, not a state dict")
    for wrapper in ("state_dict", "model"):  # {'model': state_dict} style files
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {name} is not a state dict of tensors (e.g. key {bad[0]!r})")
    return state_dict, name


def _load_safetensors(path: Path) -> dict:
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - SafetensorError and OS errors: a damaged or foreign file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is not a readable .safetensors file ({reason})") from None


def _read_config(path: Path) -> UniterConfig:
    try:
        values = read_json(path, "model config")
    except JsonlError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(values, dict):
        raise CheckpointError(f"model config {path} holds a {type(values).__name__}, not a JSON object")
    try:
        return UniterConfig(**values)  # what UniterConfig.from_json_file does
    except Exception as e:  # noqa: BLE001 - the config's validators raise their own types, over several lines
        reason = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise CheckpointError(f"model config {path} is not a valid UNITER config ({reason})") from None


def normalise_official_keys(state_dict: dict) -> dict:
    """Drop 'module.' prefixes, rename LayerNorm gamma/beta to weight/bias, drop known non-weight buffers."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith("module."):
            key = key[len("module."):]
        if key.endswith(".gamma"):
            key = key[:-len("gamma")] + "weight"
        elif key.endswith(".beta"):
            key = key[:-len("beta")] + "bias"
        if not key.endswith(IGNORED_SUFFIXES):
            out[key] = value
    return out


def load_official_weights(model, source) -> list[str]:
    """Load an official checkpoint into a UniterForPretraining strictly; returns the names of the head
    parameters left at their initialisation (empty for a full pre-training checkpoint)."""
    state_dict, name = read_state_dict(source)
    state_dict = normalise_official_keys(state_dict)
    current = model.state_dict()
    expected = {k: v.shape for k, v in current.items()}
    tied = model.tied_weights
    initialised: list[str] = []
    if not any(k.startswith(HEAD_PREFIXES) for k in state_dict):  # encoder only (UniterModel state dict)
        if not any(k.startswith("uniter.") for k in state_dict):
            state_dict = {f"uniter.{k}": v for k, v in state_dict.items()}
        encoder = {k: s for k, s in expected.items() if k.startswith("uniter.")}
        check_state_dict(state_dict, encoder, name, _describe(model), optional=_optional_buffers(encoder))
        initialised = sorted(k for k in expected if not k.startswith("uniter.") and k not in tied)
        state_dict = {**current, **state_dict}
        logger.warning("%s holds the encoder only; heads left at their initialisation: %s", name,
                       ", ".join(initialised))
    else:
        check_state_dict(state_dict, expected, name, _describe(model),
                         optional=set(tied) | _optional_buffers(expected))
        differing = [f"{t} (differs from {s})" for t, s in tied.items()
                     if t in state_dict and not torch.equal(state_dict[t], state_dict[s])]
        if differing:  # they are one tensor here; loading both would silently keep one of them
            raise CheckpointMismatchError(name, _describe(model), mismatched=differing)
    state_dict = _fill_optional(state_dict, current)
    for target, source_key in tied.items():
        state_dict[target] = state_dict[source_key]
    model.load_state_dict(state_dict, strict=True)
    return initialised


def save_pretrained(model, folder) -> None:
    """config.json + model.safetensors (each written atomically); tied weights stored once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tied = getattr(model, "tied_weights", {})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in tied}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        # serialised in memory, then written by Python: a full disk is an OSError naming the file (the
        # library's own writer reports it as a SafetensorError)
        tmp.write_bytes(safetensors_bytes(state, metadata={"format": "pt"}))
    model.config.architectures = [type(model).__name__]
    write_text(folder / CONFIG_NAME, model.config.to_json_string())


def load_pretrained(cls, folder):
    """A model of class `cls` from a save_pretrained folder. UniterModel also loads the encoder out of a
    UniterForPretraining folder (heads ignored)."""
    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise MissingCheckpointError(f"{folder} has no {name}: not a folder written by save_pretrained")
    config = _read_config(folder / CONFIG_NAME)
    state_dict = _load_safetensors(folder / WEIGHTS_NAME)
    model = cls(config)
    if cls.__name__ == "UniterModel" and any(k.startswith("uniter.") for k in state_dict):
        state_dict = {k[len("uniter."):]: v for k, v in state_dict.items() if k.startswith("uniter.")}
    tied = getattr(model, "tied_weights", {})
    current = model.state_dict()
    check_state_dict(state_dict, {k: v.shape for k, v in current.items()}, str(folder / WEIGHTS_NAME),
                     _describe(model), optional=set(tied) | _optional_buffers(current))
    state_dict = _fill_optional(state_dict, current)
    for target, source_key in tied.items():
        state_dict[target] = state_dict[source_key]
    model.load_state_dict(state_dict, strict=True)
    return model


def init_text_from_bert(uniter, path=None):
    """Copy a BERT checkpoint folder (default: the offline MiniLM) into a UniterModel's text embeddings,
    encoder and pooler; returns the folder's tokenizer. Widths and vocabulary must match; a config with fewer
    layers takes the first ones (logged). The image embeddings keep their initialisation."""
    from uniter_core.data.tokenizer import load_tokenizer, minilm_path
    path = Path(path) if path else minilm_path()
    bert = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    config = uniter.config
    fields = ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "type_vocab_size",
              "max_position_embeddings")
    differ = [f"{f} {getattr(config, f)} vs {bert.get(f)}" for f in fields if getattr(config, f) != bert.get(f)]
    if differ or config.num_hidden_layers > bert["num_hidden_layers"]:
        differ.append(f"num_hidden_layers {config.num_hidden_layers} vs {bert['num_hidden_layers']}")
        raise ValueError(f"{path} cannot initialise this UNITER config: " + "; ".join(differ))
    state_dict = {k.removeprefix("bert."): v for k, v in load_file(str(path / WEIGHTS_NAME)).items()}
    state_dict = normalise_official_keys(state_dict)
    skipped = {k for k in state_dict if k.startswith("encoder.layer.")
               and int(k.split(".")[2]) >= config.num_hidden_layers}
    state_dict = {k: v for k, v in state_dict.items() if k not in skipped}
    text = {k: v.shape for k, v in uniter.state_dict().items() if not k.startswith("img_embeddings.")}
    check_state_dict(state_dict, text, str(path / WEIGHTS_NAME), _describe(uniter))
    uniter.load_state_dict({**uniter.state_dict(), **state_dict}, strict=True)
    if skipped:
        logger.info("initialised %d of %d layers from %s", config.num_hidden_layers,
                    bert["num_hidden_layers"], path)
    return load_tokenizer(str(path))
