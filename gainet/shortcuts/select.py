"""Choosing a fix without a decorrelated split: hold some annotated images out and score each
candidate on their counterfactuals, as DFR chooses its regulariser on held-out data.

A user who has a few boxes has no test split where the context is random. The annotated images are
enough to build one: each held-out object pasted on contexts of *every* class (its own and the
others), and each held-out context alone. The rows fall into groups: one per (object class, context
class) pair, and one per class for its contexts alone (right when the context alone is *not* named
as its class). A candidate (a way, its epochs) is scored by its **group-balanced accuracy**, the
mean over those groups: the accuracy on data where the context says nothing about the class (the
decorrelated split the user does not have), with the contexts alone counted as the third of the
fix's targets. Ties go to the higher worst-group accuracy, then to the cheaper candidate.

Why not DFR's worst group first: DFR picks on hundreds of validation images per group; here a
quarter of a few dozen annotated images leaves two or three objects per class, so the worst group
moves in steps of a third and most candidates tie at 0 (docs/shortcuts.md, issue 29). The earlier
rule (``rule="worst-group"``) stays available and its choice is recorded beside the default's.

How sure the choice is: the held-out images are resampled with replacement (a bootstrap over
images, not rows, since the rows of one object are not independent) and the share of resamples in
which the chosen candidate still scores best is reported with each candidate's 95% interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from gainet.shortcuts.diagnose import AnnotatedImages, contexts_of, paste, predict
from gainet.shortcuts.evidence import context_named

HELD_OUT_SHARE = 0.25
MIN_HELD_OUT = 4
# Each held-out object is pasted on up to this many contexts of every class, drawn without
# replacement from the images the candidates were fit on (all of them when a class has fewer).
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
    """The held-out objects on contexts of every class and the held-out contexts alone.

    Attributes:
        images: ``(M, 3, H, W)`` the rows, objects on contexts first, then contexts alone.
        labels: ``(M, C)`` multi-hot: an object's labels, or the labels of the image a context alone came from.
        alone: ``(M,)`` bool, True for a context alone.
        groups: ``(M,)`` long in ``[0, C * C + C)``: ``object class * C + context class`` for an
            object (its first label), ``C * C + class`` for a context alone.
        sources: ``(M,)`` long, the held-out image each row comes from (the bootstrap resamples these).
    """

    images: Tensor
    labels: Tensor
    alone: Tensor
    groups: Tensor
    sources: Tensor

    @classmethod
    def build(cls, held: AnnotatedImages, contexts: AnnotatedImages, *, contexts_per_class: int = CONTEXTS_PER_CLASS,
              seed: int = 0) -> "SelectionSet":
        """``held``'s objects each on the same ``contexts_per_class`` contexts of every class from
        ``contexts`` (the annotated images the candidates were fit on), and ``held``'s own contexts alone."""
        generator = torch.Generator().manual_seed(seed + 202)
        filled, ok = contexts_of(contexts, generator=generator)
        classes = held.labels.shape[1]
        first = (held.labels > 0.5).float().argmax(1)
        context_first = (contexts.labels > 0.5).float().argmax(1)
        picked = []
        for k in range(classes):
            pool = ((context_first == k) & ok).nonzero().flatten()
            picked.append(pool[torch.randperm(pool.numel(), generator=generator)[:contexts_per_class]])
        chosen = torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long)
        n, m = len(held), chosen.numel()
        objects = torch.arange(n).repeat_interleave(m)
        on = chosen.repeat(n)
        images = [paste(held.objects[objects], held.images[objects], filled[on])]
        labels, groups, sources = [held.labels[objects]], [first[objects] * classes + context_first[on]], [objects]
        own, own_ok = contexts_of(held, generator=generator)
        keep = own_ok.nonzero().flatten()
        images.append(own[keep])
        labels.append(held.labels[keep])
        groups.append(classes * classes + first[keep])
        sources.append(keep)
        alone = torch.cat([torch.zeros(objects.numel(), dtype=torch.bool), torch.ones(keep.numel(), dtype=torch.bool)])
        return cls(torch.cat(images), torch.cat(labels).float(), alone, torch.cat(groups), torch.cat(sources))

    def right(self, logits: Tensor, *, multi_label: bool) -> Tensor:
        """``(M,)`` bool: an object's answer is right (top-1, or every label right at 0.5 for
        multi-label); a context alone is right when it is not named as its own class."""
        if multi_label:
            correct = ((torch.sigmoid(logits) > 0.5) == (self.labels > 0.5)).all(1)
        else:
            correct = logits.argmax(1) == self.labels.argmax(1)
        named, _, _ = context_named(logits[self.alone], self.labels[self.alone], multi_label)
        correct = correct.clone()
        correct[self.alone] = ~named
        return correct

    def group_accuracy(self, right: Tensor, weights: Tensor | None = None) -> Tensor:
        """``(..., G)`` accuracy of each group present (``weights`` ``(..., M)``: how often each row
        counts, e.g. a bootstrap resample's; a group with no weight is NaN)."""
        keys, inverse = torch.unique(self.groups, return_inverse=True)
        weights = torch.ones_like(right, dtype=torch.float64) if weights is None else weights.to(torch.float64)
        shape = (*weights.shape[:-1], keys.numel())
        hits = torch.zeros(shape, dtype=torch.float64).index_add_(-1, inverse, weights * right.to(torch.float64))
        sizes = torch.zeros(shape, dtype=torch.float64).index_add_(-1, inverse, weights)
        return hits / sizes

    def score(self, model: Callable[[Tensor], Tensor], *, multi_label: bool, batch_size: int = 64,
              device: torch.device | str = "cpu") -> dict[str, Any]:
        """``{"balanced", "worst_group", "mean_group", "context_rate", "right"}`` of ``model``:
        the group-balanced accuracy (every group, contexts alone included), the lowest and the mean
        accuracy over the object groups (DFR's), how often a context alone is named as its class,
        and the ``(M,)`` right/wrong of every row (for :func:`bootstrap`)."""
        logits = predict(model, self.images, batch_size=batch_size, device=device)
        right = self.right(logits, multi_label=multi_label)
        per_group = self.group_accuracy(right)
        keys = torch.unique(self.groups)
        classes = self.labels.shape[1]
        objects = keys < classes * classes
        rate = 1.0 - float(right[self.alone].double().mean()) if bool(self.alone.any()) else math.nan
        return {"balanced": float(per_group.mean()),
                "worst_group": float(per_group[objects].min()) if bool(objects.any()) else math.nan,
                "mean_group": float(per_group[objects].mean()) if bool(objects.any()) else math.nan,
                "context_rate": rate, "right": right}

    def bootstrap(self, rights: list[Tensor], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Tensor:
        """``(resamples, K)`` group-balanced accuracy of ``K`` candidates (their ``right`` rows) on
        the same resamples of the held-out images (with replacement); groups a resample misses are
        left out of its mean."""
        generator = torch.Generator().manual_seed(seed + 303)
        images = int(self.sources.max()) + 1 if self.sources.numel() else 0
        draws = torch.randint(images, (resamples, images), generator=generator)
        counts = torch.zeros(resamples, images, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(resamples, images, dtype=torch.float64))
        weights = counts[:, self.sources]
        columns = [self.group_accuracy(right, weights).nanmean(-1) for right in rights]
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
    has the best group-balanced accuracy (a tie for the best counts as a share of a win)."""
    best = draws.max(1, keepdim=True).values
    top = draws >= best - 1e-12
    return float((top[:, chosen].double() / top.sum(1).double()).mean()) if draws.shape[0] else math.nan
