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


def external_supervision_loss(
    attention: Tensor, target_masks: Tensor, image_index: Tensor, supervised: Tensor
) -> Tensor:
    """Eq. 7: ``L_e = (1/n) sum_c mean_pixels (A^c - H^c)^2`` on the images that carry supervision.

    Args:
        attention: ``(P, H, W)`` normalised maps.
        target_masks: ``(P, H, W)`` masks ``H^c`` in [0, 1] of each pair's class.
        image_index: ``(P,)``.
        supervised: ``(B,)`` bool, which images carry a mask/box; the others contribute nothing.
    """
    per_pair = (attention - target_masks).pow(2).flatten(1).mean(dim=1)
    return mean_per_image(per_pair, image_index, supervised.shape[0], keep=supervised)


def gain_loss(
    loss_cl: Tensor, loss_am: Tensor, loss_e: Tensor | None = None, *, alpha: float = 1.0, omega_e: float = 10.0
) -> Tensor:
    """Eq. 6 / 8: ``L_self = L_cl + alpha L_am``; ``L_ext = L_self + omega_e L_e`` when ``loss_e`` is given."""
    total = loss_cl + alpha * loss_am
    return total if loss_e is None else total + omega_e * loss_e
