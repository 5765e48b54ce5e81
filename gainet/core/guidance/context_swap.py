"""``context-swap``: the object on another image's context must still be its class."""

from __future__ import annotations

from gainet.core.guidance.base import Guide, GuidanceBatch, GuideTerm, soft_target_loss, weighted_rows_term


class ContextSwapGuide(Guide):
    """Classification loss on the swap rows against the pasted classes: a context that comes
    from another class's image stops predicting, only the object explains the label."""

    name = "context-swap"
    needs = ("context-swap",)

    def __call__(self, batch: GuidanceBatch) -> GuideTerm:
        return weighted_rows_term(batch, "context-swap",
                                  lambda scores, rows: soft_target_loss(scores, rows.targets, batch.multi_label))
