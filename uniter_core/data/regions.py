"""Region features: run the CNN once per image, then pool its final feature map inside every box.

This plays the role of the Faster R-CNN feature extractor of the official UNITER data (features, norm_bb,
conf, soft_labels per region), with MobileNetV2 instead: 1280-d features, 1000 ImageNet classes.
RoI pooling is bilinear (RoIAlign-style): a grid of sample points inside each box is read from the feature
map with `grid_sample` and averaged, which works for boxes smaller than one feature cell.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from uniter_core.data.backbone import load_mobilenet_v2, normalize


@dataclass
class RegionFeatures:
    """Per-image output, in the official feature-DB field names."""

    features: np.ndarray  # [n, 1280] float32
    norm_bb: np.ndarray  # [n, 6]  x1, y1, x2, y2, w, h divided by the image width/height
    conf: np.ndarray  # [n]  max class probability of each box
    soft_labels: np.ndarray  # [n, 1000] softmax over ImageNet classes


def normalized_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel boxes [n, 4] -> norm_bb [n, 6] = (x1, y1, x2, y2, w, h) / image size."""
    scale = np.array([width, height, width, height], np.float32)
    xyxy = boxes.astype(np.float32) / scale
    return np.concatenate([xyxy, xyxy[:, 2:3] - xyxy[:, 0:1], xyxy[:, 3:4] - xyxy[:, 1:2]], axis=1)


def roi_pool(feature_map: torch.Tensor, boxes: torch.Tensor, width: int, height: int,
             samples: int = 7) -> torch.Tensor:
    """Mean of `samples` x `samples` bilinear samples inside each box.

    feature_map [C, h, w] covers an image of `width` x `height` pixels; boxes [n, 4] are in pixels.
    Returns [n, C].
    """
    steps = (torch.arange(samples, dtype=torch.float32) + 0.5) / samples  # bin centres in [0, 1]
    x = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * steps  # [n, s]
    y = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * steps
    # pixel coordinate -> grid_sample's [-1, 1] with align_corners=False (pixel edges at -1 and 1)
    gx, gy = 2 * x / width - 1, 2 * y / height - 1
    grid = torch.stack([gx[:, None, :].expand(-1, samples, -1), gy[:, :, None].expand(-1, -1, samples)], dim=-1)
    n = boxes.shape[0]
    sampled = F.grid_sample(feature_map[None].expand(n, -1, -1, -1), grid, mode="bilinear",
                            padding_mode="border", align_corners=False)  # [n, C, s, s]
    return sampled.mean(dim=(2, 3))


class RegionFeatureExtractor:
    """Features of given boxes in given images, batched by image size."""

    def __init__(self, batch_size: int = 16, device: str = "cpu"):
        self.model = load_mobilenet_v2().to(device)
        self.batch_size = batch_size
        self.device = device

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[RegionFeatures]:
        """images: uint8 [H, W, 3] arrays; boxes: pixel boxes [n_i, 4] per image."""
        results: list[RegionFeatures | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.shape[:2], []).append(i)
        for (height, width), indices in by_size.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                batch = torch.from_numpy(np.stack([images[i] for i in chunk]))
                pixels = normalize(batch).to(self.device).contiguous(memory_format=torch.channels_last)
                maps = self.model.features(pixels).contiguous()
                for i, feature_map in zip(chunk, maps):
                    box_tensor = torch.as_tensor(boxes[i], dtype=torch.float32, device=self.device)
                    pooled = roi_pool(feature_map, box_tensor, width, height)
                    probs = self.model.classifier(pooled).softmax(dim=-1)
                    results[i] = RegionFeatures(
                        features=pooled.cpu().numpy(),
                        norm_bb=normalized_boxes(boxes[i], width, height),
                        conf=probs.max(dim=-1).values.cpu().numpy(),
                        soft_labels=probs.cpu().numpy(),
                    )
        return results  # type: ignore[return-value]


def grid_proposals(width: int, height: int, scales: tuple[int, ...] = (1, 2, 3, 4)) -> np.ndarray:
    """Boxes for images that come without any: the whole image, then 2x2, 3x3, 4x4 grids (30 boxes)."""
    boxes = []
    for s in scales:
        xs, ys = np.linspace(0, width, s + 1), np.linspace(0, height, s + 1)
        boxes += [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(s) for c in range(s)]
    return np.asarray(boxes, np.float32)
