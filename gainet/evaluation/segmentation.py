"""Semantic segmentation metrics from a ``K x K`` confusion matrix (rows = ground truth, columns =
prediction), accumulated over batches: per-class IoU, mIoU and pixel accuracy."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_confusion_matrix


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255) -> Tensor:
    """``(K, K)`` int64 confusion matrix, ``conf[i, j]`` = number of pixels of true class ``i``
    predicted as ``j`` (torchmetrics ``multiclass_confusion_matrix``).

    Args:
        pred: ``(...)`` long predicted labels in ``[0, K)`` (any shape, e.g. ``(N, H, W)``).
        target: same shape, long labels in ``[0, K)`` or ``ignore_index``; pixels whose target is
            ``ignore_index`` are dropped whatever their prediction.
        num_classes: ``K`` (background included when it is a class).
        ignore_index: label to skip, or ``None``.

    Raises:
        ValueError: on a shape mismatch or a label outside ``[0, K)`` (torchmetrics would miscount
            or fail with an unclear message).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    if target.numel() == 0:
        return torch.zeros(num_classes, num_classes, dtype=torch.long, device=pred.device)
    for name, values in (("target", target), ("pred", pred)):
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{name} label out of range [0, {num_classes}): found {low}..{high}")
    return multiclass_confusion_matrix(pred, target, num_classes, validate_args=False).long()


def iou_from_confusion(conf: Tensor) -> Tensor:
    """Per-class IoU ``TP / (TP + FP + FN)`` from a ``(K, K)`` confusion matrix, ``(K,)`` float64;
    NaN for a class absent from both the ground truth and the prediction (union 0)."""
    conf = conf.double()
    tp = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def miou_from_confusion(conf: Tensor) -> tuple[float, list[float]]:
    """``(mIoU, per-class IoU list)`` from a ``(K, K)`` confusion matrix; the mean skips NaN
    classes (absent from ground truth and prediction) and is NaN if every class is."""
    iou = iou_from_confusion(conf)
    present = iou[~torch.isnan(iou)]
    miou = float(present.mean()) if present.numel() else math.nan
    return miou, iou.tolist()


def pixel_accuracy_from_confusion(conf: Tensor) -> float:
    """Share of counted pixels whose prediction is right, in [0, 1]; NaN for an empty matrix."""
    total = int(conf.sum())
    return float(conf.diagonal().sum()) / total if total else math.nan


class ConfusionMatrix:
    """Accumulates a ``(K, K)`` confusion matrix over ``(pred, target)`` batches.

    :meth:`compute` returns ``miou`` (mean over classes present in ground truth or prediction),
    ``iou_per_class`` (list of ``K`` floats, NaN for absent classes), ``pixel_accuracy`` and
    ``confusion`` (nested list). The matrix itself is :attr:`matrix` (int64, CPU).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def reset(self) -> None:
        """Zero the matrix."""
        self.matrix.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` ``(N, H, W)`` long (see :func:`confusion_matrix`)."""
        self.matrix += confusion_matrix(pred.detach(), target.detach(), self.num_classes, self.ignore_index).cpu()

    def compute(self) -> dict[str, Any]:
        """``dict(miou, iou_per_class, pixel_accuracy, confusion)`` over every batch seen."""
        miou, per_class = miou_from_confusion(self.matrix)
        return {
            "miou": miou,
            "iou_per_class": per_class,
            "pixel_accuracy": pixel_accuracy_from_confusion(self.matrix),
            "confusion": self.matrix.tolist(),
        }
