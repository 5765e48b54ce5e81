"""Linear heads fitted on fixed features, the refits behind ``gainet fix``'s ``dfr`` ways
(:mod:`gainet.shortcuts.fix`) and the model-free context probe (:mod:`gainet.shortcuts.evidence`).

Both fits standardise the features per dimension, fit in float64, and return the equivalent head
on the raw features: :func:`fit_linear_head` (L2 penalty, L-BFGS) and :func:`fit_sparse_head`
(l1 penalty, FISTA). Plain torch: a module of its own so that the probe and the fix share it
without importing each other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def head_loss(logits: Tensor, targets: Tensor, multi_label: bool) -> Tensor:
    """Mean soft-target cross entropy (single-label) or binary cross entropy (multi-label)."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def _standardised(features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(z, mean, std)``: float64 features standardised per dimension (mean 0, std 1 over the rows)."""
    x = features.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    return (x - mean) / std, mean, std


def _raw_head(weight: Tensor, bias: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """A head fit on standardised features, rewritten for the raw features (float32)."""
    raw_weight = weight.detach() / std
    return raw_weight.float(), (bias.detach() - raw_weight @ mean).float()


def fit_linear_head(features: Tensor, targets: Tensor, *, multi_label: bool, l2: float,
                    steps: int = 200) -> tuple[Tensor, Tensor]:
    """Minimise ``head_loss(z W^T + b) + l2 * ||W||^2`` over ``(W, b)``, ``z`` the features
    standardised per dimension (mean 0, std 1 over the rows); return the equivalent head on the
    raw features.

    Args:
        features: ``(M, D)``. targets: ``(M, C)`` soft targets (rows summing to 1) or multi-hot.
        l2: weight of the squared Frobenius norm of the standardised weights (the bias is free).
        steps: L-BFGS iterations (strong-Wolfe line search, full batch).

    Returns:
        ``weight`` ``(C, D)`` and ``bias`` ``(C,)`` for the raw features.
    """
    z, mean, std = _standardised(features)
    y = targets.double()
    weight = torch.zeros(y.shape[1], z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = head_loss(z @ weight.T + bias, y, multi_label) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return _raw_head(weight, bias, mean, std)


def fit_sparse_head(features: Tensor, targets: Tensor, *, multi_label: bool, l1: float,
                    steps: int = 300) -> tuple[Tensor, Tensor]:
    """Minimise ``head_loss(z W^T + b) + l1 * ||W||_1`` over ``(W, b)`` (``z``: the features
    standardised per dimension, as DFR's ``StandardScaler``), by FISTA (accelerated proximal
    gradient with backtracking, float64); return the equivalent head on the raw features.

    DFR (Kirichenko et al., ICLR 2023) refits the last layer with an l1-penalised logistic regression:
    the penalty keeps few features, so a head that leaned on context features can drop them.

    Args:
        features: ``(M, D)``. targets: ``(M, C)`` soft targets or multi-hot.
        l1: weight of the entrywise l1 norm of the standardised weights (the bias is free).
    Returns:
        ``weight`` ``(C, D)`` and ``bias`` ``(C,)`` for the raw features.
    """
    z, mean, std = _standardised(features)
    y = targets.double()

    def smooth(weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        weight = weight.detach().requires_grad_(True)
        bias = bias.detach().requires_grad_(True)
        loss = head_loss(z @ weight.T + bias, y, multi_label)
        grad_w, grad_b = torch.autograd.grad(loss, (weight, bias))
        return loss.detach(), grad_w, grad_b

    def shrink(weight: Tensor, amount: float) -> Tensor:
        return weight.sign() * (weight.abs() - amount).clamp_min(0.0)

    weight = torch.zeros(y.shape[1], z.shape[1], dtype=torch.float64)
    bias = torch.zeros(y.shape[1], dtype=torch.float64)
    ahead_w, ahead_b, momentum, step = weight.clone(), bias.clone(), 1.0, 1.0
    for _ in range(steps):
        loss, grad_w, grad_b = smooth(ahead_w, ahead_b)
        while True:  # backtracking: the quadratic upper bound must hold at the proximal point
            new_w = shrink(ahead_w - step * grad_w, step * l1)
            new_b = ahead_b - step * grad_b
            new_loss = head_loss(z @ new_w.T + new_b, y, multi_label)
            dw, db = new_w - ahead_w, new_b - ahead_b
            bound = loss + (grad_w * dw).sum() + (grad_b * db).sum() + (dw.pow(2).sum() + db.pow(2).sum()) / (2 * step)
            if new_loss <= bound + 1e-12 or step < 1e-8:
                break
            step *= 0.5
        next_momentum = (1.0 + math.sqrt(1.0 + 4.0 * momentum ** 2)) / 2.0
        ahead_w = new_w + (momentum - 1.0) / next_momentum * (new_w - weight)
        ahead_b = new_b + (momentum - 1.0) / next_momentum * (new_b - bias)
        converged = (new_w - weight).abs().max() < 1e-9 and (new_b - bias).abs().max() < 1e-9
        weight, bias, momentum = new_w, new_b, next_momentum
        if converged:
            break
    return _raw_head(weight, bias, mean, std)
