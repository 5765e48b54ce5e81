"""Image-level classification metrics, accumulated over batches (torchmetrics underneath).

Multi-label (PASCAL VOC style): mean average precision over the classes, plus F1 and accuracy at
a fixed probability threshold. Single-label: top-1 accuracy, per-class accuracy and the confusion
matrix.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MultilabelAccuracy,
    MultilabelAveragePrecision,
    MultilabelExactMatch,
    MultilabelStatScores,
)


def _nanmean(values: Tensor) -> float:
    """Mean of the finite entries of ``values``; NaN when there is none."""
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


class ClassificationMeter:
    """Accumulates ``(scores, labels)`` batches and reports dataset-level classification metrics.

    Inputs are detached and moved to the CPU on :meth:`update`, so a trainer can feed GPU tensors.

    Multi-label (``multi_label=True``), :meth:`compute` returns:

    - ``mAP``: macro mean of the per-class average precision (torchmetrics
      ``MultilabelAveragePrecision``, computed on the raw logits, which gives the same AP as the
      probabilities since AP only depends on the ranking). A class with no positive example in the
      data seen has an undefined AP: it is NaN in ``ap_per_class`` and left out of the mean (the
      torchmetrics macro would count it as 0).
    - ``ap_per_class``: list of ``C`` floats (NaN for classes without positives).
    - ``f1_micro``: F1 pooled over every (image, class) decision, positive when
      ``sigmoid(logit) > threshold`` (strictly, as torchmetrics does).
    - ``f1_macro``: mean per-class F1 over the classes with at least one positive (same rule as mAP);
      ``f1_per_class`` lists all ``C`` values (NaN for classes without positives).
    - ``accuracy``: share of correct (image, class) decisions at the threshold (label-wise, micro).
    - ``accuracy_per_class``: the same per class (e.g. "boat vs not boat" accuracy).
    - ``exact_match``: share of images whose whole label set is predicted exactly.
    - ``num_samples``.

    Single-label (``multi_label=False``), ``labels`` may be one-hot ``(B, C)`` or indices ``(B,)``;
    :meth:`compute` returns ``accuracy`` (top-1, micro), ``balanced_accuracy`` (mean per-class
    recall over the classes present in the targets), ``accuracy_per_class`` (NaN for classes with no
    example), ``confusion`` (``C x C`` nested list, rows = true class, columns = predicted) and
    ``num_samples``.
    """

    def __init__(self, num_classes: int, multi_label: bool = True, threshold: float = 0.5) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if multi_label and num_classes < 2:
            # torchmetrics' multilabel metrics need at least 2 labels
            raise ValueError("multi-label evaluation needs num_classes >= 2")
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        c = self.num_classes
        # The meter measures the data it was given: under torch.distributed, torchmetrics would
        # otherwise gather over all ranks in compute() and hang a rank that evaluates alone.
        local = {"sync_on_compute": False}
        if self.multi_label:
            self._ap = MultilabelAveragePrecision(c, average=None, thresholds=None, **local)
            self._stats = MultilabelStatScores(c, threshold=self.threshold, average=None, **local)
            self._accuracy = MultilabelAccuracy(c, threshold=self.threshold, average="micro", **local)
            self._exact = MultilabelExactMatch(c, threshold=self.threshold, **local)
        else:
            self._top1 = MulticlassAccuracy(c, average="micro", top_k=1, **local)
            self._confusion = MulticlassConfusionMatrix(c, **local)
        self._positives = torch.zeros(self.num_classes, dtype=torch.long)
        self.num_samples = 0

    def update(self, scores: Tensor, labels: Tensor) -> None:
        """Add a batch.

        Args:
            scores: ``(B, C)`` logits (any real values; multi-label probabilities are
                ``sigmoid(scores)``, single-label predictions ``argmax(scores)``).
            labels: multi-label: ``(B, C)`` multi-hot in {0, 1}; single-label: one-hot ``(B, C)``
                or class indices ``(B,)``.
        """
        scores = scores.detach().float().cpu()
        labels = labels.detach().cpu()
        if scores.dim() != 2 or scores.shape[1] != self.num_classes:
            raise ValueError(f"scores must be (B, {self.num_classes}), got {tuple(scores.shape)}")
        if self.multi_label:
            if labels.shape != scores.shape:
                raise ValueError(f"labels {tuple(labels.shape)} must match scores {tuple(scores.shape)}")
            target = (labels > 0).long()
            probabilities = torch.sigmoid(scores)
            self._ap.update(scores, target)
            self._stats.update(probabilities, target)
            self._accuracy.update(probabilities, target)
            self._exact.update(probabilities, target)
            self._positives += target.sum(0)
        else:
            if labels.dim() == 2:
                if labels.shape != scores.shape:
                    raise ValueError(f"labels {tuple(labels.shape)} must match scores {tuple(scores.shape)}")
                target = labels.argmax(1)
            elif labels.dim() == 1 and labels.shape[0] == scores.shape[0]:
                target = labels.long()
            else:
                raise ValueError(f"labels must be (B, C) one-hot or (B,) indices, got {tuple(labels.shape)}")
            self._top1.update(scores, target)
            self._confusion.update(scores.argmax(1), target)
            self._positives += torch.bincount(target, minlength=self.num_classes)
        self.num_samples += scores.shape[0]

    def label_prior(self) -> float:
        """The score of a model that knows only the label frequencies of the data seen: the mAP
        of constant scores (each class's AP is then its positive rate; mean over the classes with
        a positive, as ``mAP``), or single-label the top-1 accuracy of always predicting the most
        frequent class. A trained model's ``mAP`` / ``accuracy`` near it has learned nothing."""
        if self.num_samples == 0:
            raise RuntimeError("ClassificationMeter.label_prior() called before any update()")
        positives = self._positives.double()
        if self.multi_label:
            rates = positives[positives > 0] / self.num_samples
            return float(rates.mean()) if rates.numel() else math.nan
        return float(positives.max() / self.num_samples)

    def compute(self) -> dict[str, Any]:
        """Metrics over every batch seen (see the class docstring); floats and lists only."""
        if self.num_samples == 0:
            raise RuntimeError("ClassificationMeter.compute() called before any update()")
        has_positive = self._positives > 0
        if self.multi_label:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*No positive samples found.*")
                ap = self._ap.compute().double()
            ap = torch.where(has_positive, ap, torch.full_like(ap, math.nan))
            tp, fp, tn, fn, _support = self._stats.compute().T.double()
            pooled = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp_min(1)
            f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
            f1 = torch.where(has_positive, f1, torch.full_like(f1, math.nan))
            accuracy_per_class = (tp + tn) / (tp + fp + tn + fn).clamp_min(1)
            return {
                "mAP": _nanmean(ap),
                "ap_per_class": ap.tolist(),
                "f1_micro": float(pooled),
                "f1_macro": _nanmean(f1),
                "f1_per_class": f1.tolist(),
                "accuracy": float(self._accuracy.compute()),
                "accuracy_per_class": accuracy_per_class.tolist(),
                "exact_match": float(self._exact.compute()),
                "num_samples": self.num_samples,
            }
        confusion = self._confusion.compute().long()
        correct = confusion.diagonal().double()
        support = confusion.sum(1).double()
        per_class = torch.where(has_positive, correct / support.clamp_min(1), torch.full_like(correct, math.nan))
        return {
            "accuracy": float(self._top1.compute()),
            "balanced_accuracy": _nanmean(per_class),
            "accuracy_per_class": per_class.tolist(),
            "confusion": confusion.tolist(),
            "num_samples": self.num_samples,
        }
