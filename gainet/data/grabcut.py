"""Object masks estimated inside boxes with GrabCut (OpenCV).

A box carries its object's context along in its corners; a counterfactual that pastes the whole
box onto another image still shows the source's context next to the object, and a classifier that
reads the context can keep reading it there. GrabCut (Rother et al., 2004) separates the object
from the box's corners by colour: the pixels outside every box of the image initialise the
background colour model, the pixels inside are "probably foreground", and a few rounds of graph
cuts decide each pixel. Nothing is learned, so the estimate does not inherit a biased model's
attention (the alternative, ``swap_mask=attention``).

Needs ``opencv-python-headless`` (``pip install "gainet[opencv]"``); imported on first use.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _opencv():
    try:
        import cv2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('swap_mask=grabcut needs OpenCV: pip install "gainet[opencv]" '
                          "(opencv-python-headless)") from error
    return cv2


def _to_uint8(image: Tensor) -> np.ndarray:
    """``(3, H, W)`` in any range (e.g. normalised) -> ``(H, W, 3)`` uint8 by one min-max over
    all channels (an affine map per image keeps the colour differences GrabCut models)."""
    low, high = float(image.min()), float(image.max())
    scaled = (image.float() - low) / max(high - low, 1e-12) * 255.0
    return np.ascontiguousarray(scaled.round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy())


def grabcut_mask(image: Tensor, box: Tensor, iterations: int = 5, seed: int = 0) -> tuple[Tensor, bool]:
    """GrabCut foreground inside ``box``.

    Args:
        image: ``(3, H, W)`` float, any range.
        box: ``(H, W)`` in {0, 1}: the union of the image's boxes (any shape; pixels > 0.5 are
            "probably foreground", the rest background).
        iterations: GrabCut rounds.
        seed: OpenCV's RNG seed (GrabCut initialises its colour models with k-means), so the
            result does not depend on earlier calls.

    Returns:
        ``(H, W)`` float mask in {0, 1}, a subset of ``box``, and whether GrabCut produced it:
        ``False`` where it could not (no background pixel to learn from, an empty box, an empty
        result); the mask is then the box itself.
    """
    inside = box > 0.5
    if not bool(inside.any()) or bool(inside.all()):
        return inside.to(image.dtype), False
    cv2 = _opencv()
    cv2.setRNGSeed(int(seed))
    labels = np.where(inside.cpu().numpy(), cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(_to_uint8(image), labels, None, background, foreground, int(iterations), cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # e.g. too few distinct colours for the models' k-means
        return inside.to(image.dtype), False
    kept = torch.from_numpy((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).to(inside.device) & inside
    if not bool(kept.any()):
        return inside.to(image.dtype), False
    return kept.to(image.dtype), True


def grabcut_masks(images: Tensor, box_masks: Tensor, supervised: Tensor | None = None, *,
                  iterations: int = 5) -> tuple[Tensor, int]:
    """:func:`grabcut_mask` for the supervised images of a batch.

    Args:
        images: ``(B, 3, H, W)`` float, any range.
        box_masks: ``(B, C, H, W)`` per-class box masks in {0, 1}.
        supervised: ``(B,)`` bool, the rows to estimate; default all. Other rows are all zero.
        iterations: GrabCut rounds.

    Returns:
        ``(B, H, W)`` masks in {0, 1} and how many supervised images kept their whole box
        (GrabCut could not separate anything, see :func:`grabcut_mask`).
    """
    if box_masks.dim() != 4 or box_masks.shape[0] != images.shape[0] or box_masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"box_masks must be (B, C, H, W) with B, H, W of images {tuple(images.shape)}, "
                         f"got {tuple(box_masks.shape)}")
    rows = range(images.shape[0]) if supervised is None else torch.nonzero(supervised).flatten().tolist()
    out = images.new_zeros((images.shape[0], *images.shape[-2:]))
    fallbacks = 0
    union = box_masks.amax(dim=1)
    for i in rows:
        if not bool((union[i] > 0.5).any()):
            continue
        out[i], ok = grabcut_mask(images[i].detach(), union[i], iterations=iterations)
        fallbacks += int(not ok)
    return out, fallbacks
