"""Choosing a fix without a decorrelated split: hold some annotated images out and score each
candidate on their counterfactuals, as DFR chooses its regulariser on held-out data.

A user who has a few boxes has no test split where the context is random. The annotated images are
enough to build one from the held-out quarter alone: each held-out object pasted on the held-out
contexts of *every* class (another image's; its own only where its class has no other), and each
held-out context alone. Neither the objects nor the contexts were annotated for any candidate's fit
(the images themselves are training images: every candidate was trained on them, as the model was).
The rows fall into groups: one per (object class, context class) pair, and one per class for its
contexts alone, right when a context alone is *not* named as its class. The contexts-alone groups
count at their mean, at most the chance ceiling (single-label: ``1 - 1/C``, since an answer that
ignores the context names the context's class one time in C; a model that names every class but
the context's is not rewarded for it, nor one that answers one class for every context punished).
A candidate (a way, its epochs) is scored by its **group-balanced accuracy**, the mean over those
groups: the mean over the object groups is the accuracy where the context says nothing about the
class (the decorrelated split the user does not have), and the contexts alone carry the weight of
one more class's groups (``1 / (C + 1)`` of the score). Ties go to the higher worst-group accuracy,
then to the cheaper candidate.

Why not DFR's worst group first: DFR picks on hundreds of validation images per group; here a
quarter of a few dozen annotated images leaves one to three objects per class, so the worst group
moves in steps of a half or a third, ties at 0 are common and a single object decides
(docs/shortcuts.md, issue 29). The earlier rule (``rule="worst-group"``) stays available and its
choice is recorded beside the default's.

How sure the choice is: the held-out images are resampled with replacement within each class (as
they were drawn), a pasted row weighted by how often both its object and its context were drawn, and
the share of resamples in which the chosen candidate still has the best group-balanced accuracy is
reported, with the paired interval of its lead over each other candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gainet.shortcuts.diagnose import AnnotatedImages, contexts_of, paste, predict
from gainet.shortcuts.evidence import answers_right, context_named

HELD_OUT_SHARE = 0.25
MIN_HELD_OUT = 4
# Each held-out object is pasted on up to this many held-out contexts of every class (drawn without
# replacement; all of them when a class has fewer), which bounds the rows at 8 C per held-out image.
CONTEXTS_PER_CLASS = 8
RULES = ("balanced", "worst-group")
DEFAULT_RULE = "balanced"
BOOTSTRAP_RESAMPLES = 200


def hold_out(data: AnnotatedImages, *, share: float = HELD_OUT_SHARE, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Rows of ``data`` to fit on and rows to choose on (seeded; at least one of each class held out
    where the class has two or more images, so that every class is scored)."""
    generator = torch.Generator().manual_seed(seed + 101)
    first = (data.labels > 0.5).float().argmax(1)
    held = []
    for k in first.unique().tolist():
        members = (first == k).nonzero().flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        take = int(round(share * members.numel()))
        if members.numel() >= 2:
            take = max(1, min(take, members.numel() - 1))
        held.append(members[:take])
    held_rows = torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[held_rows] = False
    return keep.nonzero().flatten(), held_rows


@dataclass
class SelectionSet:
    """The held-out objects on held-out contexts of every class and the held-out contexts alone, as
    recipes (the images are pasted batch by batch when scored).

    Attributes:
        held: the held-out annotated images (``n`` of them, ``C`` classes).
        filled: ``(n, 3, H, W)`` their contexts: object removed, hole filled from the context.
        objects, contexts: ``(R,)`` long, the held-out image whose object a pasted row shows and the
            one whose context it is pasted on.
        alone_images: ``(A,)`` long, the held-out images whose context is shown alone.
        groups: ``(R + A,)`` long in ``[0, C * C + C)``: ``object class * C + context class`` for a
            pasted row (the object's first label; a multi-label context is in the pool of each of its
            classes), ``C * C + class`` for a context alone (its first label).
        multi_label: how the rows are scored.
    """

    held: AnnotatedImages
    filled: Tensor
    objects: Tensor
    contexts: Tensor
    alone_images: Tensor
    groups: Tensor
    multi_label: bool

    @classmethod
    def build(cls, held: AnnotatedImages, *, multi_label: bool, contexts_per_class: int = CONTEXTS_PER_CLASS,
              seed: int = 0) -> "SelectionSet":
        """Each of ``held``'s objects on up to ``contexts_per_class`` of ``held``'s contexts of every
        class (the same ones for every object, seeded), and every usable context of ``held`` alone."""
        generator = torch.Generator().manual_seed(seed + 202)
        filled, ok = contexts_of(held, generator=generator)
        classes = held.labels.shape[1]
        first = (held.labels > 0.5).float().argmax(1)
        objects, contexts, groups = [], [], []
        for k in range(classes):
            pool = ((held.labels[:, k] > 0.5) & ok).nonzero().flatten()
            pool = pool[torch.randperm(pool.numel(), generator=generator)[:contexts_per_class]]
            if pool.numel() == 0:
                continue
            for i in range(len(held)):
                others = pool[pool != i]
                use = others if others.numel() else pool  # its own context only when its class has no other
                objects.append(torch.full((use.numel(),), i))
                contexts.append(use)
                groups.append(torch.full((use.numel(),), int(first[i]) * classes + k))
        alone = ok.nonzero().flatten()
        empty = torch.zeros(0, dtype=torch.long)
        pasted_groups = torch.cat(groups) if groups else empty
        return cls(held, filled, torch.cat(objects) if objects else empty, torch.cat(contexts) if contexts else empty,
                   alone, torch.cat([pasted_groups, classes * classes + first[alone]]), multi_label)

    @property
    def classes(self) -> int:
        return self.held.labels.shape[1]

    @property
    def alone(self) -> Tensor:
        """``(R + A,)`` bool: the rows that are a context alone."""
        return torch.cat([torch.zeros(self.objects.numel(), dtype=torch.bool),
                          torch.ones(self.alone_images.numel(), dtype=torch.bool)])

    @property
    def labels(self) -> Tensor:
        """``(R + A,)`` x ``C`` multi-hot: a pasted row's object labels, a context alone's image labels."""
        return torch.cat([self.held.labels[self.objects], self.held.labels[self.alone_images]]).float()

    def __len__(self) -> int:
        return self.objects.numel() + self.alone_images.numel()

    def images(self, window: slice) -> Tensor:
        """The rows ``window`` of the set, pasted now: ``(len, 3, H, W)``."""
        rows = torch.arange(len(self))[window]
        pasted, alone = rows[rows < self.objects.numel()], rows[rows >= self.objects.numel()] - self.objects.numel()
        parts = []
        if pasted.numel():
            objects, contexts = self.objects[pasted], self.contexts[pasted]
            parts.append(paste(self.held.objects[objects], self.held.images[objects], self.filled[contexts]))
        if alone.numel():
            parts.append(self.filled[self.alone_images[alone]])
        return torch.cat(parts)

    def right(self, logits: Tensor) -> Tensor:
        """``(R + A,)`` bool: an object's answer is right (top-1, or every label right at 0.5 for
        multi-label); a context alone is right when it is not named as its own class."""
        labels, alone = self.labels, self.alone
        correct = answers_right(logits, labels, self.multi_label)
        named, _, _ = context_named(logits[alone], labels[alone], self.multi_label)
        correct[alone] = ~named
        return correct

    def weights(self, counts: Tensor) -> Tensor:
        """``(B, R + A)`` how often each row counts when the held-out images are drawn ``counts``
        ``(B, n)`` times: a pasted row as often as its object times its context, a context alone as
        often as its image."""
        return torch.cat([counts[:, self.objects] * counts[:, self.contexts], counts[:, self.alone_images]], 1)

    def group_accuracy(self, right: Tensor, weights: Tensor | None = None) -> Tensor:
        """``(..., G)`` accuracy of each group present, in the order of ``torch.unique(groups)`` (a
        group with no weight in a resample is NaN). ``weights`` ``(..., R + A)``: how often each row counts."""
        keys, inverse = torch.unique(self.groups, return_inverse=True)
        weights = torch.ones(right.shape, dtype=torch.float64) if weights is None else weights.to(torch.float64)
        shape = (*weights.shape[:-1], keys.numel())
        hits = torch.zeros(shape, dtype=torch.float64).index_add_(-1, inverse, weights * right.to(torch.float64))
        sizes = torch.zeros(shape, dtype=torch.float64).index_add_(-1, inverse, weights)
        return hits / sizes

    def balanced(self, per_group: Tensor) -> Tensor:
        """``(...)`` group-balanced accuracy from :meth:`group_accuracy`'s ``(..., G)``: the mean over
        the groups present, each contexts-alone group counted at the contexts-alone groups' mean, at
        most the chance ceiling ``1 - 1/C`` single-label (an answer that ignores the context names
        the context's class one time in C; naming no class is possible, and right, only multi-label)."""
        alone = torch.unique(self.groups) >= self.classes * self.classes
        present = ~per_group.isnan()
        objects_sum = torch.where(present & ~alone, per_group, 0.0).sum(-1)
        alone_count = (present & alone).sum(-1)
        alone_mean = torch.where(present & alone, per_group, 0.0).sum(-1) / alone_count.clamp_min(1)
        if not self.multi_label:
            alone_mean = alone_mean.clamp_max(1.0 - 1.0 / self.classes)
        return (objects_sum + alone_count * alone_mean) / present.sum(-1)

    def score(self, model, *, batch_size: int = 64, device: torch.device | str = "cpu") -> dict[str, Any]:
        """``{"balanced", "worst_group", "mean_group", "context_rate", "right"}`` of ``model``:
        the group-balanced accuracy (every group, contexts alone included), the lowest and the mean
        accuracy over the object groups (DFR's), how often a context alone is named as its class,
        and the ``(R + A,)`` right/wrong of every row (for :meth:`bootstrap`)."""
        logits = predict(model, self.images, count=len(self), batch_size=batch_size, device=device)
        right = self.right(logits)
        per_group = self.group_accuracy(right)
        objects = torch.unique(self.groups) < self.classes * self.classes
        alone = self.alone
        rate = 1.0 - float(right[alone].double().mean()) if bool(alone.any()) else math.nan
        return {"balanced": float(self.balanced(per_group)),
                "worst_group": float(per_group[objects].min()) if bool(objects.any()) else math.nan,
                "mean_group": float(per_group[objects].mean()) if bool(objects.any()) else math.nan,
                "context_rate": rate, "right": right}

    def resample_counts(self, resamples: int, seed: int = 0) -> Tensor:
        """``(resamples, n)``: how often each held-out image is drawn, with replacement within each
        class (its first label), as the held-out images were drawn."""
        generator = torch.Generator().manual_seed(seed + 303)
        first = (self.held.labels > 0.5).float().argmax(1)
        counts = torch.zeros(resamples, len(self.held), dtype=torch.float64)
        for k in first.unique().tolist():
            members = (first == k).nonzero().flatten()
            draws = members[torch.randint(members.numel(), (resamples, members.numel()), generator=generator)]
            counts.scatter_add_(1, draws, torch.ones(draws.shape, dtype=torch.float64))
        return counts

    def bootstrap(self, rights: list[Tensor], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Tensor:
        """``(resamples, K)`` group-balanced accuracy of ``K`` candidates (their ``right`` rows) on
        the same resamples of the held-out images; groups a resample misses are left out of its mean."""
        weights = self.weights(self.resample_counts(resamples, seed))
        columns = [self.balanced(self.group_accuracy(right, weights)) for right in rights]
        return torch.stack(columns, 1) if columns else torch.zeros(resamples, 0, dtype=torch.float64)


def ranking_key(scores: dict[str, Any], rule: str = DEFAULT_RULE) -> tuple[float, ...]:
    """Best first. ``balanced``: group-balanced accuracy, then worst group; ``worst-group`` (the
    earlier rule, DFR's): worst group, then the mean over object groups, then the lower context rate."""
    def number(key: str, missing: float = -1.0) -> float:
        value = scores.get(key, math.nan)
        return float(value) if value is not None and math.isfinite(value) else missing

    if rule == "balanced":
        return (number("balanced"), number("worst_group"))
    if rule == "worst-group":
        return (number("worst_group"), number("mean_group"), -number("context_rate", missing=1.0))
    raise ValueError(f"the selection rule must be one of {', '.join(RULES)}, got {rule!r}")


def choose(candidates: list[dict[str, Any]], rule: str = DEFAULT_RULE) -> dict[str, Any]:
    """The candidate (``{"name", "scores", ...}``) with the best :func:`ranking_key`; ties: the first
    (candidates are listed cheapest first)."""
    best = candidates[0]
    for candidate in candidates[1:]:
        if ranking_key(candidate["scores"], rule) > ranking_key(best["scores"], rule):
            best = candidate
    return best


def stability(draws: Tensor, chosen: int) -> float:
    """Share of bootstrap resamples (rows of ``draws`` ``(R, K)``) in which candidate ``chosen``
    has the best group-balanced accuracy (a tie for the best counts as a share of a win; the
    tie-breaks of :func:`ranking_key` are not applied here)."""
    best = draws.max(1, keepdim=True).values
    top = draws >= best - 1e-12
    return float((top[:, chosen].double() / top.sum(1).double()).mean()) if draws.shape[0] else math.nan
