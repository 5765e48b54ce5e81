"""``rrr``: Right for the Right Reasons (Ross et al., IJCAI 2017), an input-gradient penalty."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gainet.core.counterfactual import dilate, object_masks
from gainet.core.guidance.base import Guide, GuidanceBatch, GuideTerm, zero_term


def summed_log_probabilities(scores: Tensor, multi_label: bool) -> Tensor:
    """``(S, C)`` logits -> ``(S,)`` ``sum_k log p_k``: log-sigmoid (multi-label) or log-softmax."""
    log_p = F.logsigmoid(scores) if multi_label else F.log_softmax(scores, dim=1)
    return log_p.sum(dim=1)


class RRRGuide(Guide):
    """``sum_{pixels, channels} ((1 - M) d/dx sum_k log p_k(x))^2`` per supervised image, with
    ``M`` its object mask or box dilated by one pixel; the mean over the supervised images is
    Ross et al.'s sum over a batch with zeros for images without annotation, rescaled.

    The gradient is taken on the rows of the training forward itself (the inputs must require
    grad), of the supervised rows' summed log-probabilities (the other rows weighted 0); in a
    network whose BatchNorm uses batch statistics it includes the (small) cross-image terms
    through those statistics. The same operations run whatever the batch holds, so under DDP
    with synchronised BatchNorm every rank makes the same collectives in this extra backward,
    including a rank without a supervised image. Part of the graph (``create_graph``).
    """

    name = "rrr"
    input_gradient = True

    def __call__(self, batch: GuidanceBatch) -> GuideTerm:
        if batch.masks is None:
            return zero_term(batch)
        if not batch.inputs.requires_grad:
            raise ValueError("rrr needs the inputs with requires_grad=True before the forward pass")
        allowed = object_masks(batch.masks)  # (B, H, W)
        rows = (batch.supervised & (allowed.flatten(1).amax(1) > 0)).float()  # (B,) 1 = penalised
        scores = batch.scores[: batch.originals]
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        log_p = summed_log_probabilities(scores, batch.multi_label)
        (gradient,) = torch.autograd.grad((log_p * rows).sum(), batch.inputs, create_graph=True)
        outside = (1.0 - dilate(allowed, 1).to(gradient.dtype))[:, None]
        gradient = gradient.to(torch.promote_types(gradient.dtype, torch.float32))
        penalty = (outside * gradient).pow(2).flatten(1).sum(dim=1)
        return GuideTerm((penalty * rows).sum(), float(rows.sum()))
