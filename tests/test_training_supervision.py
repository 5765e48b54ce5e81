"""GAIN_ext's supervision view: what the trainer hands L_e as target masks."""

from __future__ import annotations

import torch

from gainet.training.data import SupervisionView


def test_target_masks_keep_the_ignore_pixels_of_the_segmentation() -> None:
    segmentation = torch.tensor([[0, 1, 255], [2, 255, 1]])
    masks = torch.stack([segmentation == 1, segmentation == 2]).float()
    sample = {"segmentation": segmentation, "masks": masks, "box_masks": torch.ones(2, 2, 3)}
    view = SupervisionView([sample], supervised=[0], source="masks")
    target = view[0]["target_masks"]
    expected = torch.tensor([[[0.0, 1, 255], [0, 255, 1]], [[0.0, 0, 255], [1, 255, 0]]])
    assert torch.equal(target, expected) and bool(view[0]["supervised"])
    boxes = SupervisionView([sample], supervised=[], source="boxes")[0]
    assert torch.equal(boxes["target_masks"], torch.ones(2, 2, 3))  # boxes have no ignore pixels
