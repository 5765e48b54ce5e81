"""The numbers behind a verdict: each split's score with a bootstrap interval, chance levels, and
whether a set of contexts carries its class at all.

Every score is paired by *unit*: an annotated object for the object splits (original, only-FG,
mixed-same, mixed-rand: the same objects, each drawn on ``K`` contexts), a context image for the
context-only split. A bootstrap resample draws units with replacement and keeps all the rows of
each drawn unit, so the gap (mixed-same - mixed-rand) and the cost of pasting (original -
mixed-same) are resampled as the paired differences they are (Efron & Tibshirani's percentile
interval; 95% by default).

Chance is measured on the model's own answers, not assumed to be ``1/C``: the score its answers get
against the labels of *other* images (every pair ``j != j'``). For a model that always answers the
same class this is that class's share of the split, exactly what its accuracy is, so a constant
model sits at chance whatever the class balance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gainet.evaluation.classification import ClassificationMeter
from gainet.shortcuts.heads import fit_linear_head

LEVEL = 0.95
RESAMPLES = 1000
# mAP is recomputed per resample (no closed form per unit): fewer resamples keep a multi-label
# diagnosis in seconds; the percentile interval's Monte Carlo error at 300 is ~0.005 for mAP's spread.
RESAMPLES_MULTI_LABEL = 300


@dataclass
class SplitAnswers:
    """A split's logits with the labels they are scored on.

    Attributes:
        scores: ``(n, C)`` logits. labels: ``(n, C)`` multi-hot (single-label: one-hot).
        units: ``(n,)`` long, the resampling unit of each row (object or context index, ``< n_units``).
    """

    scores: Tensor
    labels: Tensor
    units: Tensor


def answers_right(logits: Tensor, labels: Tensor, multi_label: bool) -> Tensor:
    """``(n,)`` bool: the answer is right -- top-1 is the labelled class (single-label), or every
    label is right at sigmoid 0.5 (multi-label)."""
    if multi_label:
        return ((torch.sigmoid(logits) > 0.5) == (labels > 0.5)).all(1)
    return logits.argmax(1) == labels.argmax(1)


def correct(scores: Tensor, labels: Tensor) -> Tensor:
    """``(n,)`` float: top-1 answer is the labelled class (single-label)."""
    return (scores.argmax(1) == labels.argmax(1)).float()


def mean_average_precision(scores: Tensor, labels: Tensor) -> float:
    """Macro mAP over classes with a positive (:class:`ClassificationMeter`'s ``mAP``)."""
    meter = ClassificationMeter(scores.shape[1], multi_label=True)
    meter.update(scores, labels)
    return float(meter.compute()["mAP"])


def _unit_counts(n_units: int, resamples: int, generator: torch.Generator) -> Tensor:
    """``(R, n_units)``: how often each unit is drawn in each of ``R`` bootstrap resamples."""
    draws = torch.randint(n_units, (resamples, n_units), generator=generator)
    return torch.zeros(resamples, n_units).scatter_add_(1, draws, torch.ones(resamples, n_units))


def resampled_scores(answers: dict[str, SplitAnswers], n_units: int, *, multi_label: bool,
                     resamples: int | None = None, seed: int = 0) -> dict[str, Tensor]:
    """Each split's score on ``R`` bootstrap resamples of the *same* drawn units (paired).

    Args:
        answers: split name -> its answers; every split's ``units`` index the same ``n_units`` units.
    Returns:
        split name -> ``(R,)`` scores (accuracy, or mAP for ``multi_label``).
    """
    resamples = resamples or (RESAMPLES_MULTI_LABEL if multi_label else RESAMPLES)
    counts = _unit_counts(n_units, resamples, torch.Generator().manual_seed(seed))
    out = {}
    for name, split in answers.items():
        weights = counts[:, split.units]  # (R, n): each row kept as often as its unit was drawn
        if not multi_label:
            hits = correct(split.scores, split.labels)
            out[name] = (weights @ hits) / weights.sum(1).clamp_min(1.0)
            continue
        values = []
        for r in range(resamples):
            rows = torch.repeat_interleave(torch.arange(split.units.numel()), weights[r].long())
            values.append(mean_average_precision(split.scores[rows], split.labels[rows]) if rows.numel() else math.nan)
        out[name] = torch.tensor(values)
    return out


def point_score(split: SplitAnswers, multi_label: bool) -> float:
    """The split's accuracy (single-label) or mAP (multi-label); NaN for an empty split."""
    if split.scores.shape[0] == 0:
        return math.nan
    if multi_label:
        return mean_average_precision(split.scores, split.labels)
    return float(correct(split.scores, split.labels).mean())


def interval(samples: Tensor, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap ``samples`` ``(R,)`` (NaNs dropped)."""
    samples = samples[torch.isfinite(samples)].double()
    if samples.numel() == 0:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0
    return float(torch.quantile(samples, tail)), float(torch.quantile(samples, 1.0 - tail))


def chance_score(scores: Tensor, labels: Tensor, multi_label: bool, *, permutations: int = 20, seed: int = 0) -> float:
    """The score the model's own answers get against other images' labels.

    Single-label: the mean over all pairs ``j != j'`` of [answer_j == label_j'] (exact, no sampling):
    ``(sum_k a_k l_k - hits) / (n (n - 1))`` with ``a_k``, ``l_k`` the counts of answers and labels of class ``k``.
    Multi-label: the mean mAP over ``permutations`` random derangements of the label rows.
    """
    n = scores.shape[0]
    if n < 2:
        return math.nan
    if not multi_label:
        answers = F.one_hot(scores.argmax(1), scores.shape[1]).double()
        truth = F.one_hot(labels.argmax(1), labels.shape[1]).double()
        pairs = float((answers.sum(0) * truth.sum(0)).sum() - (answers * truth).sum())
        return pairs / (n * (n - 1))
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(permutations):
        shift = int(torch.randint(1, n, (1,), generator=generator))
        order = torch.randperm(n, generator=generator)
        values.append(mean_average_precision(scores[order], labels[order.roll(shift)]))
    return float(torch.tensor(values).nanmean())


def named_rate_chance(named_matrix: Tensor) -> float:
    """Mean of the off-diagonal entries of ``named_matrix`` ``(n, n)``: how often answer ``j``
    names a class of image ``j'`` for ``j != j'``."""
    n = named_matrix.shape[0]
    if n < 2:
        return math.nan
    total = named_matrix.double().sum() - named_matrix.double().diagonal().sum()
    return float(total / (n * (n - 1)))


def context_named(scores: Tensor, labels: Tensor, multi_label: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Whether each context-only image's answer names the class its context came with.

    Single-label: the top class is the context's class; multi-label: some class of the context
    image has sigmoid > 0.5. Also ``(n, n)`` ``matrix[j, j']``: answer ``j`` names a class of image
    ``j'`` (its off-diagonal mean is the chance rate), and the confidence in the own class
    (softmax probability, or the highest own-class sigmoid).

    Returns:
        ``named`` ``(n,)`` bool, ``matrix`` ``(n, n)`` bool, ``confidence`` ``(n,)``.
    """
    positive = labels > 0.5
    if multi_label:
        said = torch.sigmoid(scores) > 0.5
        matrix = (said.float() @ positive.float().T) > 0
        own = torch.where(positive, torch.sigmoid(scores), torch.zeros_like(scores)).amax(1)
        return matrix.diagonal().clone(), matrix, own
    answer = scores.argmax(1)
    target = labels.argmax(1)
    matrix = answer[:, None] == target[None, :]
    return answer == target, matrix, torch.softmax(scores, dim=1)[torch.arange(scores.shape[0]), target]


def thumbnail_features(images: Tensor, grid: int = 4) -> Tensor:
    """``(N, 3, H, W)`` -> ``(N, 3 grid^2 + 3)``: mean colour on a ``grid x grid`` layout and the
    per-channel spread (texture), all a context can carry without any learned feature."""
    layout = F.adaptive_avg_pool2d(images.float(), grid).flatten(1)
    return torch.cat([layout, images.float().flatten(2).std(2)], dim=1)


def context_probe(contexts: Tensor, labels: Tensor, *, multi_label: bool, folds: int = 5, seed: int = 0,
                  l2: float = 1e-2) -> dict[str, float]:
    """Do these contexts go with their labels, for *any* reader? A model-free probe.

    A linear classifier on :func:`thumbnail_features` (standardised, L2-regularised logistic
    regression, :func:`gainet.shortcuts.heads.fit_linear_head`) predicts each context's labels,
    ``folds``-fold cross-validated (seeded); its held-out score, a bootstrap interval over the
    contexts, and the chance score of its answers (:func:`chance_score`). Contexts whose probe
    interval reaches down to chance carry no class that a context shortcut could use.

    Args:
        contexts: ``(N, 3, H, W)`` filled contexts. labels: ``(N, C)`` multi-hot.
    Returns:
        ``{"score", "low", "high", "chance", "images"}``.
    """
    n = contexts.shape[0]
    features = thumbnail_features(contexts)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held_out = torch.zeros(n, labels.shape[1])
    targets = labels.float() if multi_label else labels.float() / labels.float().sum(1, keepdim=True).clamp_min(1.0)
    for fold in range(folds):
        test = order[fold::folds]
        train = torch.ones(n, dtype=torch.bool)
        train[test] = False
        weight, bias = fit_linear_head(features[train], targets[train], multi_label=multi_label, l2=l2, steps=100)
        held_out[test] = features[test] @ weight.T + bias
    answers = SplitAnswers(held_out, labels.float(), torch.arange(n))
    score = point_score(answers, multi_label)
    low, high = interval(resampled_scores({"probe": answers}, n, multi_label=multi_label, seed=seed)["probe"])
    return {"score": score, "low": low, "high": high, "chance": chance_score(held_out, labels, multi_label, seed=seed),
            "images": n}
