"""The region CNN is the real pretrained MobileNetV2, and RoI pooling reads the right pixels."""
import numpy as np
import torch
from PIL import Image
import skimage.data

from uniter_core.data.backbone import MobileNetV2, imagenet_class_names, load_mobilenet_v2, normalize, weights_file
from uniter_core.data.regions import RegionFeatureExtractor, grid_proposals, normalized_boxes, roi_pool

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


def _top5(image: np.ndarray) -> list[int]:
    pixels = np.asarray(Image.fromarray(image).resize((224, 224), Image.BILINEAR))
    with torch.inference_mode():
        logits = load_mobilenet_v2()(normalize(torch.from_numpy(pixels.copy())[None]))
    return logits[0].topk(5).indices.tolist()


def test_weights_load_with_strict_keys():
    state = torch.load(weights_file(), map_location="cpu", weights_only=True)
    model = MobileNetV2()
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in model.parameters()) == 3_504_872  # torchvision's MobileNetV2 size


def test_whole_photos_get_their_imagenet_class():
    names = imagenet_class_names()
    cat_top = _top5(skimage.data.chelsea())
    assert cat_top[0] in CAT_CLASSES, [names[i] for i in cat_top]
    coffee_top = _top5(skimage.data.coffee())
    assert coffee_top[0] in COFFEE_CLASSES, [names[i] for i in coffee_top]


def test_roi_pool_reads_inside_the_box():
    feature_map = torch.zeros(2, 4, 4)
    feature_map[0, :2, :2] = 1.0  # top-left quadrant of channel 0
    feature_map[1] = 3.0
    # boxes well inside the marked quadrant / the empty corner, and the whole image (samples on cell centres)
    boxes = torch.tensor([[0.0, 0.0, 24.0, 24.0], [40.0, 40.0, 64.0, 64.0], [0.0, 0.0, 64.0, 64.0]])
    pooled = roi_pool(feature_map, boxes, width=64, height=64, samples=4)
    assert torch.allclose(pooled[0], torch.tensor([1.0, 3.0]))
    assert torch.allclose(pooled[1], torch.tensor([0.0, 3.0]))
    assert torch.allclose(pooled[2], torch.tensor([0.25, 3.0]))


def test_extractor_whole_image_box_matches_global_pooling():
    image = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((224, 224)))
    boxes = np.array([[0, 0, 224, 224], [20, 30, 120, 200]], np.float32)
    [regions] = RegionFeatureExtractor()([image], [boxes])
    assert regions.features.shape == (2, 1280) and regions.soft_labels.shape == (2, 1000)
    np.testing.assert_allclose(regions.soft_labels.sum(1), 1.0, atol=1e-4)
    np.testing.assert_allclose(regions.conf, regions.soft_labels.max(1))
    with torch.inference_mode():
        global_feature = load_mobilenet_v2().features(normalize(torch.from_numpy(image.copy())[None])).mean((2, 3))
    np.testing.assert_allclose(regions.features[0], global_feature[0].numpy(), rtol=0.05, atol=0.02)
    assert int(regions.soft_labels[0].argmax()) in CAT_CLASSES
    np.testing.assert_allclose(regions.norm_bb[1], [20 / 224, 30 / 224, 120 / 224, 200 / 224, 100 / 224, 170 / 224],
                               rtol=1e-6)


def test_grid_proposals_cover_the_image():
    boxes = grid_proposals(100, 60)
    assert boxes.shape == (30, 4)
    np.testing.assert_allclose(boxes[0], [0, 0, 100, 60])
    norm = normalized_boxes(boxes, 100, 60)
    assert norm.min() >= 0 and norm.max() <= 1
