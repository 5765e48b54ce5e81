"""Soft mask and erasing (Eq. 3-4), and boxes turned into per-class masks for L_e."""

from __future__ import annotations

import torch
from torch import Tensor


def soft_mask(attention: Tensor, sigma: float = 0.5, omega: float = 10.0) -> Tensor:
    """Eq. 4: ``T(A) = sigmoid(omega * (A - sigma))``, a differentiable threshold of ``A`` in [0, 1]."""
    return torch.sigmoid(omega * (attention - sigma))


def erase(images: Tensor, mask: Tensor, image_index: Tensor) -> Tensor:
    """Eq. 3: ``I*^c = I - T(A^c) * I`` for every pair.

    Args:
        images: ``(B, 3, H, W)`` in the network's input space (normalised, so an erased pixel
            becomes 0, the dataset mean).
        mask: ``(P, H, W)`` soft masks in [0, 1].
        image_index: ``(P,)`` image of each mask.

    Returns:
        ``(P, 3, H, W)`` erased images, one per pair.
    """
    if mask.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"mask size {tuple(mask.shape[-2:])} != image size {tuple(images.shape[-2:])}")
    selected = images[image_index]
    return selected - mask[:, None] * selected


def boxes_to_masks(
    boxes: Tensor, box_labels: Tensor, num_classes: int, size: tuple[int, int]
) -> Tensor:
    """Per-class binary masks ``(C, H, W)`` from boxes, ``H^c = 1`` inside any box of class ``c``.

    Args:
        boxes: ``(N, 4)`` as ``(x1, y1, x2, y2)`` in pixels; pixel ``(i, j)`` (row, column) is
            covered when its centre ``(j + 0.5, i + 0.5)`` lies inside the box, so the integer box
            ``(2, 1, 5, 3)`` covers columns 2-4 of rows 1-2.
        box_labels: ``(N,)`` 0-based class index of each box.
        num_classes: ``C``.
        size: ``(H, W)``.
    """
    height, width = size
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    box_labels = torch.as_tensor(box_labels, dtype=torch.long).reshape(-1)
    if boxes.shape[0] != box_labels.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {box_labels.shape[0]} box labels")
    if boxes.shape[0] == 0:
        return torch.zeros(num_classes, height, width)
    if (box_labels < 0).any() or (box_labels >= num_classes).any():
        raise ValueError(f"box label out of range [0, {num_classes}): {box_labels.tolist()}")
    bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        raise ValueError(f"degenerate box (x2 <= x1 or y2 <= y1): {boxes[bad][0].tolist()}")
    columns = torch.arange(width, dtype=torch.float32) + 0.5
    rows = torch.arange(height, dtype=torch.float32) + 0.5
    inside_x = (columns[None] >= boxes[:, 0:1]) & (columns[None] <= boxes[:, 2:3])  # (N, W)
    inside_y = (rows[None] >= boxes[:, 1:2]) & (rows[None] <= boxes[:, 3:4])  # (N, H)
    box_masks = (inside_y[:, :, None] & inside_x[:, None, :]).float()  # (N, H, W)
    per_class = torch.nn.functional.one_hot(box_labels, num_classes).T.float() @ box_masks.flatten(1)
    return (per_class > 0).float().reshape(num_classes, height, width)
