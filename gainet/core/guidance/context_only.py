"""``context-only``: a context without its object is no evidence of any class."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from gainet.core.guidance.base import Guide, GuidanceBatch, GuideTerm, soft_target_loss, weighted_rows_term

ContextTarget = Literal["uniform", "erased"]


class ContextOnlyGuide(Guide):
    """Loss on the context-only rows.

    Args:
        target: ``"uniform"``: against the rows' targets (all-zero for multi-label models, the
            uniform distribution for single-label ones: KL to it); ``"erased"`` (single-label
            models): the summed softmax probability of the erased classes, a penalty on exactly
            the classes whose objects were removed.
    """

    name = "context-only"
    needs = ("context-only",)

    def __init__(self, target: ContextTarget = "uniform") -> None:
        if target not in ("uniform", "erased"):
            raise ValueError(f"context target must be 'uniform' or 'erased', got {target!r}")
        self.target = target

    def _per_row(self, scores: Tensor, rows, multi_label: bool) -> Tensor:
        if self.target == "erased" and not multi_label:
            return (scores.softmax(dim=1) * rows.labels.to(scores.dtype)).sum(dim=1)
        return soft_target_loss(scores, rows.targets, multi_label)

    def __call__(self, batch: GuidanceBatch) -> GuideTerm:
        return weighted_rows_term(batch, "context-only",
                                  lambda scores, rows: self._per_row(scores, rows, batch.multi_label))
