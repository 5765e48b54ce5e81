"""``actdiff``: the activations must not change when the context changes (Viviano et al., ICLR 2021)."""

from __future__ import annotations

import torch

from gainet.core.guidance.base import Guide, GuidanceBatch, GuideTerm, zero_term


class ActDiffGuide(Guide):
    """ActDiff: the L2 norm (not squared) of the difference between the activations of each
    supervised image and of its masked counterpart (the same image with the outside of its object
    shuffled, :class:`~gainet.core.batch_transforms.MaskedCounterpart`), averaged over the images.

    Viviano et al. sum this over the layers of the encoder; here it is taken at the attention
    layer (the layer GAIN's maps and the other guidance terms read), one term per image. The norm
    is ``sqrt(sum d^2 + eps)``, whose gradient stays finite where the two activations agree.
    """

    name = "actdiff"
    needs = ("counterpart",)
    eps = 1e-12

    def __call__(self, batch: GuidanceBatch) -> GuideTerm:
        index, rows = batch.rows_of("counterpart")
        if len(rows) == 0:
            return zero_term(batch)
        difference = batch.features[index] - batch.features[rows.source]
        # At least float32: half-precision sums of squares over K*h*w activations overflow.
        difference = difference.to(torch.promote_types(difference.dtype, torch.float32))
        norms = torch.sqrt(difference.pow(2).flatten(1).sum(dim=1) + self.eps)
        weights = rows.weights.to(norms.dtype)
        return GuideTerm((weights * norms).sum(), float(weights.sum()))
