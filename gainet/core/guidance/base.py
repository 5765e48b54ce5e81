"""What every guidance term shares: the batch it reads, the term it returns, per-row losses.

A guidance term is one small :class:`Guide` (one file per mode, as pytorch-grad-cam adds a
method by overriding one function): it reads GAIN's forward over originals + counterfactual
rows (:class:`GuidanceBatch`) and returns a :class:`GuideTerm`, a weighted *sum* and the weight it
is a sum over, never a mean. The caller turns it into a mean over the items of the whole batch,
which under DDP is the global batch (:func:`term_mean`), however many items a rank holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gainet.core.batch_transforms import CounterfactualRows


@dataclass
class GuidanceBatch:
    """One training step's forward pass, as the guides read it.

    Attributes:
        inputs: ``(B, 3, H, W)`` the original images as fed to the forward (with
            ``requires_grad`` when a guide needs input gradients).
        scores: ``(B + S, C)`` logits of the originals then the counterfactual rows.
        features: ``(B + S, K, h, w)`` the attention layer's activations, same rows.
        labels: ``(B, C)`` multi-hot (single-label: one-hot) labels of the originals.
        masks: ``(B, C, H, W)`` per-class masks or box masks (255 = ignore), or ``None``.
        supervised: ``(B,)`` bool, rows whose masks may be used.
        rows: the ``S`` counterfactual rows (:class:`~gainet.core.batch_transforms.CounterfactualRows`).
        multi_label: the model's loss family.
    """

    inputs: Tensor
    scores: Tensor
    features: Tensor
    labels: Tensor
    masks: Tensor | None
    supervised: Tensor
    rows: CounterfactualRows
    multi_label: bool

    @property
    def originals(self) -> int:
        """``B``."""
        return int(self.inputs.shape[0])

    def rows_of(self, kind: str) -> tuple[Tensor, CounterfactualRows]:
        """``(index, rows)``: the rows of ``kind`` and their index ``(S_k,)`` into ``scores``/``features``."""
        positions, rows = self.rows.of_kind(kind)
        return positions + self.originals, rows


@dataclass
class GuideTerm:
    """A guidance term before averaging: ``total`` (a scalar in the graph, the weighted sum of
    per-item losses) and ``count`` (the summed weights of the items, a float)."""

    total: Tensor
    count: float

    def mean(self) -> Tensor:
        """The term in one process: ``total / count``; zero (in the graph) when ``count == 0``."""
        return self.total / self.count if self.count > 0 else self.total * 0.0


def term_mean(term: GuideTerm, scale: float) -> Tensor:
    """The term as this rank's share of a global-batch mean: ``total / n_r * scale`` with
    ``scale = W n_r / N`` from the counts of all ranks (1 in one process), that is
    ``W total / N``; DDP's average over ranks then yields ``sum_r total_r / N``."""
    return term.mean() * scale


def zero_term(batch: GuidanceBatch) -> GuideTerm:
    """No item: a zero that still belongs to the graph (every rank back-propagates the same way)."""
    return GuideTerm(batch.scores.sum() * 0.0, 0.0)


def soft_target_loss(scores: Tensor, targets: Tensor, multi_label: bool) -> Tensor:
    """Per-row loss ``(S,)`` of logits ``(S, C)`` against float targets ``(S, C)``.

    Multi-label: the soft-margin loss (mean binary cross entropy over classes), any targets in
    [0, 1] (all-zero: "none of the classes"). Single-label: ``KL(t || softmax(scores))``, which is
    the cross entropy for a one-hot ``t`` and zero when the softmax equals a soft ``t`` (e.g. the
    uniform distribution).
    """
    if multi_label:
        return F.binary_cross_entropy_with_logits(scores, targets.to(scores.dtype), reduction="none").mean(dim=1)
    targets = targets.to(scores.dtype)
    return (torch.special.xlogy(targets, targets) - targets * F.log_softmax(scores, dim=1)).sum(dim=1)


class Guide:
    """One guidance term. Subclasses set ``name`` (the ``--guidance`` mode), ``needs`` (the
    counterfactual kinds it reads, :data:`~gainet.core.batch_transforms.KINDS`) and
    ``input_gradient`` (whether the inputs must require grad), and implement ``__call__``."""

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    input_gradient: ClassVar[bool] = False

    def __call__(self, batch: GuidanceBatch) -> GuideTerm:  # pragma: no cover - abstract
        raise NotImplementedError


def weighted_rows_term(batch: GuidanceBatch, kind: str, per_row) -> GuideTerm:
    """``sum_j w_j per_row(scores_j, rows_j)_j`` over the rows of ``kind``, with ``count = sum_j w_j``."""
    index, rows = batch.rows_of(kind)
    if len(rows) == 0:
        return zero_term(batch)
    losses = per_row(batch.scores[index], rows)
    weights = rows.weights.to(losses.dtype)
    return GuideTerm((weights * losses).sum(), float(weights.sum()))
