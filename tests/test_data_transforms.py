"""Joint transforms keep image, segmentation, masks and boxes aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from gainet.data import IGNORE_INDEX, JointTransform
from gainet.data.sample import build_sample, multi_hot

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _scene(height: int = 48, width: int = 80):
    """An image whose object (class 1, 0-based id 1) is the only bright region, with a 255
    border around it; its box is the object's tight box."""
    image = np.full((height, width, 3), 40, np.uint8)
    seg = np.zeros((height, width), np.uint8)
    seg[9:31, 7:33] = IGNORE_INDEX
    seg[10:30, 8:32] = 2
    image[10:30, 8:32] = 220
    boxes = np.array([[8, 10, 32, 30]], np.float32)
    return image, seg, boxes


def _sample(transform: JointTransform):
    image, seg, boxes = _scene()
    return build_sample(
        image=image, segmentation=seg, boxes=boxes, box_labels=np.array([1]), labels=multi_hot([1], 3),
        has_masks=True, has_boxes=True, index=0, transform=transform,
    )


def _tight_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = mask.nonzero(as_tuple=True)
    return xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1


def test_flip_moves_box_mask_and_pixels_together():
    flip = JointTransform(48, train=True, mean=MEAN, std=STD, crop_scale=(1.0, 1.0), crop_ratio=(80 / 48, 80 / 48), hflip_p=1.0, color_jitter=None)
    keep = JointTransform(48, train=True, mean=MEAN, std=STD, crop_scale=(1.0, 1.0), crop_ratio=(80 / 48, 80 / 48), hflip_p=0.0, color_jitter=None)
    flipped, plain = _sample(flip), _sample(keep)
    assert torch.equal(flipped["masks"], plain["masks"].flip(-1))
    assert torch.equal(flipped["segmentation"], plain["segmentation"].flip(-1))
    assert torch.allclose(flipped["image"], plain["image"].flip(-1))
    mask, box = flipped["masks"][1], flipped["box_masks"][1]
    assert mask.sum() > 0 and not (mask * (1 - box)).any(), "flipped box does not cover the flipped mask"
    # Numerically: the flipped box is the flipped mask's tight box to within a pixel.
    assert np.allclose(_tight_box(mask), _tight_box(box), atol=1)
    # The bright object pixels moved with the mask.
    bright = flipped["image"][0] > 0.5
    assert (bright == mask.bool()).float().mean() > 0.97


@pytest.mark.parametrize("seed", range(6))
def test_random_crops_keep_boxes_around_masks(seed):
    torch.manual_seed(seed)
    sample = _sample(JointTransform(40, train=True, mean=MEAN, std=STD, crop_scale=(0.3, 1.0)))
    mask, box = sample["masks"][1], sample["box_masks"][1]
    assert not (mask * (1 - box)).any()
    if mask.sum() > 0:
        x0, y0, x1, y1 = _tight_box(mask)
        bx0, by0, bx1, by1 = _tight_box(box)
        assert abs(x0 - bx0) <= 1 and abs(y0 - by0) <= 1 and abs(x1 - bx1) <= 1 and abs(y1 - by1) <= 1
    # Nearest-neighbour resizing creates no new values; the ignore label survives.
    assert set(sample["segmentation"].unique().tolist()) <= {0, 2, IGNORE_INDEX}
    assert sample["labels"].tolist() == [0.0, 1.0, 0.0]  # image labels are kept as given


def test_eval_resize_is_deterministic_and_scales_boxes():
    transform = JointTransform(24, train=False, mean=MEAN, std=STD)
    a, b = _sample(transform), _sample(transform)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["box_masks"], b["box_masks"])
    assert (a["segmentation"] == IGNORE_INDEX).any()
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[8.0, 10.0, 32.0, 30.0]]), format="XYXY", canvas_size=(48, 80))
    out, keep = transform.eval_geometry(boxes)
    assert keep.tolist() == [True]
    assert torch.allclose(out, torch.tensor([[8 * 24 / 80, 10 * 24 / 48, 32 * 24 / 80, 30 * 24 / 48]]))


def test_letterbox_pads_segmentation_with_ignore_and_image_with_mean():
    sample = _sample(JointTransform(40, train=False, mean=MEAN, std=STD, eval_resize="letterbox"))
    # 80x48 -> 40x24, padded by 8 rows above and below.
    seg, image = sample["segmentation"], sample["image"]
    assert seg.shape == (40, 40)
    assert (seg[:8] == IGNORE_INDEX).all() and (seg[-8:] == IGNORE_INDEX).all()
    assert image[:, :8].abs().max() < 0.02  # the mean colour normalises to ~0
    assert not sample["masks"][:, :8].any()
    mask, box = sample["masks"][1], sample["box_masks"][1]
    assert not (mask * (1 - box)).any()


def test_center_crop_drops_boxes_outside_the_crop():
    transform = JointTransform(24, train=False, mean=MEAN, std=STD, eval_resize="center_crop")
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0.0, 5.0, 5.0], [30.0, 10.0, 50.0, 30.0]]), format="XYXY", canvas_size=(48, 80))
    out, keep = transform.eval_geometry(boxes)
    assert keep.tolist() == [False, True] and out.shape == (1, 4)


def test_colour_jitter_touches_only_the_image():
    transform = JointTransform(48, train=True, mean=MEAN, std=STD, crop_scale=(1.0, 1.0), crop_ratio=(80 / 48, 80 / 48), hflip_p=0.0, color_jitter=(0.8, 0.8, 0.8, 0.2))
    plain = JointTransform(48, train=True, mean=MEAN, std=STD, crop_scale=(1.0, 1.0), crop_ratio=(80 / 48, 80 / 48), hflip_p=0.0, color_jitter=None)
    torch.manual_seed(0)
    jittered, reference = _sample(transform), _sample(plain)
    assert torch.equal(jittered["segmentation"], reference["segmentation"])
    assert torch.equal(jittered["box_masks"], reference["box_masks"])
    assert not torch.allclose(jittered["image"], reference["image"])


def test_bad_transform_options():
    with pytest.raises(ValueError, match="eval_resize"):
        JointTransform(32, train=False, eval_resize="stretch")
