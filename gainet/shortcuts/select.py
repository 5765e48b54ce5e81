"""Choosing a fix without a decorrelated split: hold some annotated images out and score each
candidate on their counterfactuals, as DFR chooses its regulariser on held-out data.

A user who has a few boxes has no test split where the context is random. The annotated images are
enough to build one: each held-out object pasted on contexts of *every* class (its own and the
others), and each held-out context alone. A candidate (a way, its epochs) is scored by its
worst-group accuracy over the (object class, context class) groups -- the objects on the context
that goes with them and on every other -- and, on ties, by how rarely it names a context's class
from the context alone. The candidate with the best score is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from gainet.shortcuts.diagnose import AnnotatedImages, contexts_of, predict
from gainet.shortcuts.evidence import context_named
from gainet.shortcuts.fix import CONTEXT, counterfactual_training_set, worst_group_accuracy

HELD_OUT_SHARE = 0.25
MIN_HELD_OUT = 4
CONTEXTS_PER_CLASS = 3


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
    """The held-out objects on contexts of every class, their contexts alone, and their groups."""

    images: Tensor
    targets: Tensor
    kind: Tensor
    groups: Tensor
    alone_labels: Tensor

    @classmethod
    def build(cls, held: AnnotatedImages, contexts: AnnotatedImages, *, multi_label: bool, seed: int = 0) -> "SelectionSet":
        """``held``'s objects on ``CONTEXTS_PER_CLASS`` contexts of every class from ``contexts`` (the
        annotated images the fix was fit on), and ``held``'s own contexts alone."""
        images, targets, kind, groups = counterfactual_training_set(
            held, contexts_per_class=CONTEXTS_PER_CLASS, seed=seed + 202, multi_label=multi_label,
            contexts_from=contexts, with_groups=True)
        own_images, own_targets, own_kind, own_groups = counterfactual_training_set(
            held, contexts_per_class=0, seed=seed + 203, multi_label=multi_label, with_groups=True)
        alone = own_kind == CONTEXT
        objects = kind != CONTEXT
        _, ok = contexts_of(held)
        return cls(torch.cat([images[objects], own_images[alone]]), torch.cat([targets[objects], own_targets[alone]]),
                   torch.cat([kind[objects], own_kind[alone]]), torch.cat([groups[objects], own_groups[alone]]),
                   held.labels[ok])

    def score(self, model: Callable[[Tensor], Tensor], *, multi_label: bool, batch_size: int = 64,
              device: torch.device | str = "cpu") -> dict[str, float]:
        """``{"worst_group", "mean_group", "context_rate"}`` of ``model`` on this set (the context rate:
        how often a held-out context alone is named as its own class)."""
        logits = predict(model, self.images, batch_size=batch_size, device=device)
        objects = self.kind != CONTEXT
        worst = worst_group_accuracy(logits[objects], self.targets[objects], self.kind[objects], self.groups[objects],
                                     multi_label)
        if multi_label:
            right = ((torch.sigmoid(logits[objects]) > 0.5) == (self.targets[objects] > 0.5)).all(1)
        else:
            right = logits[objects].argmax(1) == self.targets[objects].argmax(1)
        keys, inverse = torch.unique(self.groups[objects], dim=0, return_inverse=True)
        per_group = torch.zeros(keys.shape[0]).index_add_(0, inverse, right.float()) / torch.bincount(inverse).float()
        named, _, _ = context_named(logits[~objects], self.alone_labels, multi_label)
        return {"worst_group": worst, "mean_group": float(per_group.mean()),
                "context_rate": float(named.float().mean()) if named.numel() else math.nan}


def ranking_key(scores: dict[str, float]) -> tuple[float, float, float]:
    """Best first: worst-group accuracy, then mean group accuracy, then the lower context-only rate."""
    rate = scores.get("context_rate", math.nan)
    return (scores["worst_group"], scores["mean_group"], -(rate if math.isfinite(rate) else 1.0))


def choose(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate (``{"name", "scores", ...}``) with the best :func:`ranking_key`; ties: the first
    (candidates are listed cheapest first)."""
    best = candidates[0]
    for candidate in candidates[1:]:
        if ranking_key(candidate["scores"]) > ranking_key(best["scores"]):
            best = candidate
    return best
