"""Which context leaks into which class: the background test broken down per class.

A user who learns that the model reads the context next asks *which* photos to annotate. For each
class ``k`` the table says how its objects fare on other classes' contexts, how strongly ``k``'s
context pulls other objects to ``k``, and what the model names ``k``'s context when it stands alone.

An answer is the set of classes the model says: the top-1 class (single-label) or every class with
sigmoid > 0.5 (multi-label).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor


def said(scores: Tensor, multi_label: bool) -> Tensor:
    """``(n, C)`` bool: the classes each answer names."""
    if multi_label:
        return torch.sigmoid(scores) > 0.5
    return torch.nn.functional.one_hot(scores.argmax(1), scores.shape[1]).bool()


def _share(flags: Tensor) -> float:
    return float(flags.float().mean()) if flags.numel() else math.nan


def per_class_table(splits: Any, scores: dict[str, Tensor], classes: Sequence[str], multi_label: bool) -> list[dict[str, Any]]:
    """One row per class ``k`` (:class:`gainet.shortcuts.diagnose.CounterfactualSplits` and its logits).

    Columns:
        ``objects``: test objects of ``k``; ``original`` / ``mixed_rand``: share of them (of their
        pasted images) whose answer names ``k``; ``taken_by_context``: share of ``k``'s objects on
        another class's context answered with a class of that context; ``context_pull``: share of
        *other* classes' objects pasted on ``k``'s context answered ``k`` (``k``'s context steals
        answers); ``contexts``: ``k``'s contexts shown alone; ``context_named_own``: share of them
        named ``k``; ``context_named_most``: the class named most often for them and its share.
    """
    data, context_data = splits.data, splits.context_data
    labels, context_labels = data.labels > 0.5, context_data.labels > 0.5
    answers = {name: said(scores[name], multi_label) for name in ("original", "mixed_rand", "context_only")}
    rand_rows, rand_partners = splits.rows["mixed_rand"], splits.partners["mixed_rand"]
    object_of = labels[rand_rows]  # (n, C): the pasted object's classes
    context_of = context_labels[rand_partners]  # (n, C): the context's classes
    took = (answers["mixed_rand"] & context_of).any(1)
    alone_rows = splits.rows["context_only"]
    alone_labels = context_labels[alone_rows]
    table = []
    for k, name in enumerate(classes):
        own = labels[:, k]
        on_other = object_of[:, k]
        on_k = context_of[:, k] & ~object_of[:, k]
        alone = alone_labels[:, k]
        named = answers["context_only"][alone]
        counts = named.float().sum(0)
        most = int(counts.argmax()) if alone.any() else -1
        table.append({
            "class": name,
            "objects": int(own.sum()),
            "original": _share(answers["original"][own, k]),
            "mixed_rand": _share(answers["mixed_rand"][on_other, k]),
            "taken_by_context": _share(took[on_other]),
            "context_pull": _share(answers["mixed_rand"][on_k, k]),
            "contexts": int(alone.sum()),
            "context_named_own": _share(named[:, k]),
            "context_named_most": classes[most] if most >= 0 else None,
            "context_named_most_share": float(counts[most] / alone.sum()) if most >= 0 else math.nan,
        })
    return table


def annotate_first(table: list[dict[str, Any]], chance: float, top: int = 3) -> list[str]:
    """The classes whose contexts pull hardest (``context_pull`` above ``chance``), strongest first:
    the photos worth a box first."""
    ranked = [row for row in table if isinstance(row["context_pull"], float) and math.isfinite(row["context_pull"])
              and row["context_pull"] > chance]
    ranked.sort(key=lambda row: -row["context_pull"])
    return [row["class"] for row in ranked[:top]]
