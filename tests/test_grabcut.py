"""GrabCut inside boxes (gainet.data.grabcut): the estimate is checked against the drawn shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("cv2")

from gainet.data.grabcut import grabcut_mask  # noqa: E402


def _scene(size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A noisy green background with a red disc; returns the image (3, H, W) normalised like
    ImageNet, the disc and its bounding box with a 4-pixel margin, both (H, W) in {0, 1}."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 20) ** 2 + (xx - 26) ** 2 <= 9 ** 2
    image = np.empty((size, size, 3))
    image[:] = (0.2, 0.6, 0.25)
    image[disc] = (0.85, 0.2, 0.15)
    image += rng.normal(0, 0.03, image.shape)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    normalised = torch.tensor((image - mean) / std, dtype=torch.float32).permute(2, 0, 1)
    box = np.zeros((size, size), bool)
    box[20 - 13:20 + 14, 26 - 13:26 + 14] = True
    return normalised, torch.tensor(disc, dtype=torch.float32), torch.tensor(box, dtype=torch.float32)


def test_grabcut_recovers_the_object_inside_its_box() -> None:
    image, disc, box = _scene()
    mask, ok = grabcut_mask(image, box)
    assert ok
    assert bool((mask <= box).all())  # never outside the box
    iou = float((mask * disc).sum() / ((mask + disc) > 0).sum())
    box_iou = float((box * disc).sum() / ((box + disc) > 0).sum())
    assert iou > 0.9 > box_iou + 0.3  # the box alone is a poor mask here (~0.36)
    again, _ = grabcut_mask(image, box)
    assert torch.equal(mask, again)  # seeded: the same answer twice


def test_grabcut_falls_back_to_the_box_where_it_cannot_run() -> None:
    image, _, box = _scene()
    empty, ok = grabcut_mask(image, torch.zeros_like(box))
    assert not ok and not bool(empty.any())
    whole, ok = grabcut_mask(image, torch.ones_like(box))  # no background to learn from
    assert not ok and bool(whole.all())


def test_estimates_are_cached_per_image_and_box_and_a_damaged_file_is_redone(tmp_path) -> None:
    from gainet.data.factory import build_dataset
    from gainet.data.grabcut import estimate_paste_masks, raw_image_and_boxes

    world = build_dataset("bias", "train", image_size=48, num_images=4)
    masks, stats = estimate_paste_masks(world, [0, 2], cache_dir=tmp_path)
    assert sorted(masks) == [0, 2] and stats.estimated == 2 and stats.cached == 0
    files = sorted(tmp_path.glob("*.png"))
    assert len(files) == 2
    for index, mask in masks.items():
        image, boxes = raw_image_and_boxes(world, index)
        x0, y0, x1, y1 = boxes[0]
        assert mask.shape == image.shape[:2] and mask.any()
        outside = np.ones(mask.shape, bool)
        outside[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = False
        assert not mask[outside].any()  # never outside the box
    again, stats = estimate_paste_masks(world, [0, 2], cache_dir=tmp_path)
    assert stats.estimated == 0 and stats.cached == 2
    assert all(np.array_equal(again[i], masks[i]) for i in masks)
    files[0].write_bytes(b"not a png")
    _, stats = estimate_paste_masks(world, [0, 2], cache_dir=tmp_path)
    assert stats.estimated == 1 and stats.cached == 1
    _, stats = estimate_paste_masks(world, [0], cache_dir="")  # no cache at all
    assert stats.estimated == 1 and len(list(tmp_path.glob("*.png"))) == 2
