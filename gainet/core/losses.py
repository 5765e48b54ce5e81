"""GAIN's losses: L_cl, L_am (Eq. 5), L_e (Eq. 7) and their sums L_self / L_ext (Eq. 6, 8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def classification_loss(scores: Tensor, labels: Tensor, multi_label: bool) -> Tensor:
    """L_cl: multi-label soft-margin loss on multi-hot ``(B, C)`` labels, or cross entropy.

    For single-label data ``labels`` may be multi-hot with one 1 per row or indices ``(B,)``.
    """
    if multi_label:
        return F.multilabel_soft_margin_loss(scores, labels.float())
    targets = labels.argmax(dim=1) if labels.dim() == 2 else labels.long()
    return F.cross_entropy(scores, targets)


def class_scores(scores: Tensor, class_index: Tensor, multi_label: bool) -> Tensor:
    """Bounded score of class ``c_p`` in row ``p`` of ``scores`` ``(P, C)``: ``sigmoid`` of its logit
    for multi-label models, its softmax probability for single-label ones (a shared logit offset
    leaves cross entropy unchanged but moves every sigmoid, so sigmoid would make L_am trivial)."""
    rows = torch.arange(scores.shape[0], device=scores.device)
    if multi_label:
        return torch.sigmoid(scores[rows, class_index])
    return torch.softmax(scores, dim=1)[rows, class_index]


def mean_per_image(values: Tensor, image_index: Tensor, batch_size: int, keep: Tensor | None = None) -> Tensor:
    """Mean of per-pair ``values`` ``(P,)`` over each image's pairs, then over the images that have
    at least one pair (and ``keep[b]`` is true, if given). Zero when no image qualifies."""
    sums = values.new_zeros(batch_size).index_add(0, image_index, values)
    counts = torch.bincount(image_index, minlength=batch_size).to(values.dtype)
    valid = counts > 0
    if keep is not None:
        valid = valid & keep.to(device=values.device, dtype=torch.bool)
    if not bool(valid.any()):
        return values.sum() * 0.0
    return (sums[valid] / counts[valid]).mean()


def attention_mining_loss(erased_scores: Tensor, image_index: Tensor, batch_size: int) -> Tensor:
    """Eq. 5: ``L_am = (1/n) sum_c s^c(I*^c)``, averaged over each image's ``n`` labels, then the batch.

    ``erased_scores`` ``(P,)``: bounded score (:func:`class_scores`) of each pair's class on its own
    erased image.
    """
    return mean_per_image(erased_scores, image_index, batch_size)


# Target-mask value of pixels to leave out of L_e: PASCAL VOC's "ignore" label (object borders,
# ambiguous regions), which the data loaders also use for padding.
IGNORE_INDEX = 255


def empty_target_pairs(target_masks: Tensor, ignore_index: int | None = IGNORE_INDEX) -> Tensor:
    """``(P,)`` bool: pairs whose target mask has no positive valid pixel.

    Such a mask (a labelled class cut out of the image by a random crop, or an image annotated
    only with ignore pixels) carries no localisation, and an all-zero target would push the map of
    a class that *is* in the image to zero: L_e leaves these pairs out.

    Args:
        target_masks: ``(P, H, W)`` masks in [0, 1], ``ignore_index`` at ignored pixels.
        ignore_index: value of ignored pixels; ``None``: every pixel is valid.
    """
    positive = target_masks > 0
    if ignore_index is not None:
        positive = positive & (target_masks != ignore_index)
    return ~positive.flatten(1).any(dim=1)


def external_supervision_loss(
    attention: Tensor,
    target_masks: Tensor,
    image_index: Tensor,
    supervised: Tensor,
    *,
    ignore_index: int | None = IGNORE_INDEX,
) -> Tensor:
    """Eq. 7: ``L_e = (1/n) sum_c mean_pixels (A^c - H^c)^2`` on the images that carry supervision.

    The pixel mean runs over the *valid* pixels of ``H^c`` only (those not equal to
    ``ignore_index``); pairs whose target is empty (:func:`empty_target_pairs`) are left out, and
    ``n`` counts the remaining pairs of the image. An image left with no pair contributes nothing;
    zero when no image is left.

    Args:
        attention: ``(P, H, W)`` normalised maps.
        target_masks: ``(P, H, W)`` masks ``H^c`` in [0, 1] of each pair's class, ``ignore_index``
            at pixels to ignore.
        image_index: ``(P,)``.
        supervised: ``(B,)`` bool, which images carry a mask/box; the others contribute nothing.
        ignore_index: value of ignored pixels; ``None``: every pixel is valid.
    """
    if ignore_index is None:
        valid = torch.ones_like(target_masks, dtype=torch.bool)
    else:
        valid = target_masks != ignore_index
    targets = torch.where(valid, target_masks, torch.zeros_like(target_masks))
    squared = torch.where(valid, (attention - targets).pow(2), torch.zeros_like(attention))
    counts = valid.flatten(1).sum(dim=1)
    per_pair = squared.flatten(1).sum(dim=1) / counts.clamp_min(1).to(squared.dtype)
    kept = ~empty_target_pairs(target_masks, ignore_index)
    return mean_per_image(per_pair[kept], image_index[kept], supervised.shape[0], keep=supervised)


def gain_loss(
    loss_cl: Tensor, loss_am: Tensor, loss_e: Tensor | None = None, *, alpha: float = 1.0, omega_e: float = 10.0
) -> Tensor:
    """Eq. 6 / 8: ``L_self = L_cl + alpha L_am``; ``L_ext = L_self + omega_e L_e`` when ``loss_e`` is given."""
    total = loss_cl + alpha * loss_am
    return total if loss_e is None else total + omega_e * loss_e
