"""``upweight``: the supervised images' classification loss once more, their masks unused."""

from __future__ import annotations

from gainet.core.guidance.base import Guide, GuidanceBatch, GuideTerm, soft_target_loss, zero_term


class UpweightGuide(Guide):
    """The baseline that tells whether a mode gains anything from the boxes themselves: the same
    images seen more often, with nothing of their masks."""

    name = "upweight"

    def __call__(self, batch: GuidanceBatch) -> GuideTerm:
        index = batch.supervised.nonzero().flatten()
        if index.numel() == 0:
            return zero_term(batch)
        losses = soft_target_loss(batch.scores[index], batch.labels[index], batch.multi_label)
        return GuideTerm(losses.sum(), float(index.numel()))
