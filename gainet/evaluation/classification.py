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


# Names of the average-precision definitions, recorded next to the numbers they produced.
AP_DEFINITIONS = {
    "mAP": "torchmetrics MultilabelAveragePrecision: non-interpolated, sum of (R_n - R_n-1) P_n over thresholds",
    "mAP_voc": "PASCAL VOC devkit (VOC2010 and later): all-point interpolated, precision made non-increasing in "
               "recall; ties ranked in dataset order as the devkit's stable sort does; no 'difficult' exclusion",
}


def voc_average_precision(scores: Tensor, targets: Tensor, eleven_point: bool = False) -> Tensor:
    """Per-class average precision as the PASCAL VOC devkit defines it (``VOCevalcls`` + ``VOCap``).

    Written here because neither torchmetrics nor scikit-learn offers it: both give the
    non-interpolated step-wise AP, which is lower whenever precision rises again further down
    the ranking (0.5061 vs 0.5246 on one model).

    Args:
        scores: ``(N, C)`` real scores (logits or probabilities: only the ranking matters).
        targets: ``(N, C)`` in {0, 1}.
        eleven_point: VOC2007's definition (mean over recall levels 0, 0.1, ..., 1 of the best
            precision at a recall at least that level) instead of VOC2010+'s all-point one
            (area under the precision curve made non-increasing in recall).

    Returns:
        float64 ``(C,)``; NaN for a class with no positive. Images are ranked by decreasing
        score with a stable sort, so tied scores keep the dataset's order, as in the devkit
        (MATLAB's ``sort`` is stable).
    """
    scores = scores.detach().cpu().double()
    targets = (targets.detach().cpu() > 0).double()
    if scores.dim() != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must be the same (N, C)")
    order = torch.sort(-scores, dim=0, stable=True).indices
    hits = targets.gather(0, order)  # (N, C) in rank order
    true_positives = hits.cumsum(0)
    positives = hits.sum(0)
    recall = true_positives / positives.clamp_min(1)
    precision = true_positives / torch.arange(1, hits.shape[0] + 1, dtype=torch.float64).unsqueeze(1)
    if eleven_point:
        levels = torch.linspace(0, 1, 11, dtype=torch.float64).view(11, 1, 1)
        reached = recall.unsqueeze(0) >= levels  # (11, N, C)
        best = torch.where(reached, precision.unsqueeze(0), torch.zeros(())).amax(1)  # (11, C); 0 if never reached
        ap = best.mean(0)
    else:
        # VOCap: mrec = [0, rec, 1], mpre = [0, prec, 0]; precision made non-increasing from the right.
        zero = torch.zeros(1, scores.shape[1], dtype=torch.float64)
        mrec = torch.cat([zero, recall, zero + 1])
        mpre = torch.cat([zero, precision, zero]).flip(0).cummax(0).values.flip(0)
        ap = ((mrec[1:] - mrec[:-1]) * mpre[1:]).sum(0)
    return torch.where(positives > 0, ap, torch.full_like(ap, math.nan))


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
    - with ``voc_ap=True`` also ``mAP_voc`` and ``ap_voc_per_class``: the PASCAL VOC devkit's
      average precision (VOC2010+, all-point interpolated; :func:`voc_average_precision`), and
      ``ap_definition``: what each mAP key means (``AP_DEFINITIONS``).

    Single-label (``multi_label=False``), ``labels`` may be one-hot ``(B, C)`` or indices ``(B,)``;
    :meth:`compute` returns ``accuracy`` (top-1, micro), ``balanced_accuracy`` (mean per-class
    recall over the classes present in the targets), ``accuracy_per_class`` (NaN for classes with no
    example), ``confusion`` (``C x C`` nested list, rows = true class, columns = predicted) and
    ``num_samples``.
    """

    def __init__(self, num_classes: int, multi_label: bool = True, threshold: float = 0.5, voc_ap: bool = False) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if multi_label and num_classes < 2:
            # torchmetrics' multilabel metrics need at least 2 labels
            raise ValueError("multi-label evaluation needs num_classes >= 2")
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.threshold = threshold
        self.voc_ap = bool(voc_ap) and multi_label
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
        self._seen: list[tuple[Tensor, Tensor]] = []  # (scores, targets) batches, kept for the VOC AP
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
            if self.voc_ap:
                self._seen.append((scores, target))
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
            voc: dict[str, Any] = {}
            if self.voc_ap:
                ap_voc = voc_average_precision(torch.cat([s for s, _ in self._seen]), torch.cat([t for _, t in self._seen]))
                voc = {"mAP_voc": _nanmean(ap_voc), "ap_voc_per_class": ap_voc.tolist(),
                       "ap_definition": dict(AP_DEFINITIONS)}
            return {
                "mAP": _nanmean(ap),
                **voc,
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
