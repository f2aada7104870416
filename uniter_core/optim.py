"""Optimiser and learning-rate schedule of the official UNITER recipe.

AdamW with betas (0.9, 0.98) and weight decay on every weight except biases and LayerNorm parameters; the learning
rate warms up linearly, then decays linearly to zero at the last step.
"""
from __future__ import annotations

import torch
from torch import nn


IMAGE_EMBEDDER = "uniter.img_embeddings."


def parameter_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                     image_lr_scale: float = 1.0) -> list[dict]:
    """Decayed weights, and biases + LayerNorm parameters (no decay), each parameter once; with image_lr_scale
    != 1 the image embedder's parameters form their own groups at lr * image_lr_scale.

    LayerNorms are found by type, not by name, so the heads' unnamed ones (e.g. region_classifier.net.2) are
    exempt too (the official name-based rule misses those two). The image embedder starts from random weights
    while the text side starts pre-trained, hence the option of a learning rate of its own."""
    layer_norm_params = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    groups = {(decayed, image): [] for image in (False, True) for decayed in (True, False)}
    seen = set()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or id(parameter) in seen:
            continue  # tied weights appear under several names
        seen.add(id(parameter))
        exempt = name.endswith("bias") or id(parameter) in layer_norm_params
        image = image_lr_scale != 1.0 and name.startswith(IMAGE_EMBEDDER)
        groups[(not exempt, image)].append(parameter)
    result = []
    for (decayed, image), params in groups.items():
        if params or not image:  # the two plain groups always exist (stable optimiser state layout)
            group = {"params": params, "weight_decay": weight_decay if decayed else 0.0}
            if image:
                group["lr"] = lr * image_lr_scale
            result.append(group)
    return result


def build_optimizer(model: nn.Module, lr: float, betas=(0.9, 0.98), weight_decay: float = 0.01,
                    image_lr_scale: float = 1.0) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`; on a GPU the fused kernel (one launch for all parameters, same update and
    same state layout as the default, so checkpoints move freely between devices)."""
    groups = parameter_groups(model, weight_decay, lr, image_lr_scale)
    fused = all(p.is_cuda for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused or None)


def linear_warmup_decay(warmup_steps: int, total_steps: int):
    """Multiplier of the peak learning rate at a given step (for LambdaLR)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup_steps, total_steps))
