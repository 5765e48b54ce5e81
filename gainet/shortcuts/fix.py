"""``gainet fix``: make a classifier that reads the background read the object, from a few boxes.

Two ways:

- ``dfr`` (Deep Feature Reweighting, Kirichenko et al., ICLR 2023): the backbone stays frozen; its
  penultimate features (the input of the last ``nn.Linear``) are computed once, with
  ``torch.no_grad``, on counterfactual images built from the annotated images -- each annotated
  object on a context of every class (:func:`counterfactual_training_set`), plus every context
  alone with the target "none of the classes" (uniform soft target for single-label, all-zero for
  multi-label) -- and the last layer is refit on them: L2-regularised multinomial (or per-class
  binary) logistic regression in plain torch (:func:`fit_linear_head`, full-batch L-BFGS on
  standardised features). The regulariser is chosen on held-out annotated images
  (:func:`choose_l2`): fit on the counterfactuals of one half of the objects, score the other
  half's objects on other classes' contexts, keep the best.
- ``guidance``: fine-tuning with the counterfactual guidance of ``gainet train`` (context-swap and
  context-only), from the model's own weights (``TrainConfig.init_weights``); see
  :func:`guidance_config`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gainet.shortcuts.diagnose import AnnotatedImages, contexts_of, paste, predict

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
ORIGINAL, SWAP, CONTEXT = 0, 1, 2


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear`` (its classification head)."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head to retrain (--way dfr needs one)")
    return heads[-1]


@torch.no_grad()
def penultimate_features(model: nn.Module, images: Tensor, *, batch_size: int = 64,
                         device: torch.device | str = "cpu", progress: bool = False) -> Tensor:
    """The input of the model's last ``nn.Linear`` for ``images`` ``(N, 3, H, W)``: ``(N, D)`` (CPU).
    The model runs in eval mode."""
    head = last_linear(model)
    captured: list[Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach().float().cpu()))
    model.eval()
    try:
        predict(model, images, batch_size=batch_size, device=device, progress=progress, desc="features")
    finally:
        handle.remove()
    return torch.cat(captured).flatten(1) if captured else torch.zeros(0, head.in_features)


def counterfactual_training_set(data: AnnotatedImages, *, contexts_per_class: int = 1, seed: int = 0,
                                margin: int = 1, multi_label: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Each annotated object on ``contexts_per_class`` contexts of every class, the originals, and
    every context alone.

    A context of class ``k`` is another annotated image labelled ``k`` (with its object removed
    and filled). The object keeps its place and its labels.

    Returns:
        ``images`` ``(M, 3, H, W)``, ``targets`` ``(M, C)`` (objects: their labels; contexts alone:
        uniform ``1/C`` single-label, zeros multi-label) and ``kind`` ``(M,)``: 0 original, 1 object
        on a context, 2 context alone.
    """
    generator = torch.Generator().manual_seed(seed)
    contexts, ok = contexts_of(data, margin=margin, generator=generator)
    labels = data.labels
    n, c = labels.shape
    images, targets, kinds = [data.images], [labels], [torch.full((n,), ORIGINAL)]
    for k in range(c):
        pool = ((labels[:, k] > 0.5) & ok).nonzero().flatten()
        if pool.numel() == 0:
            continue
        for _ in range(contexts_per_class):
            pick = pool[torch.randint(pool.numel(), (n,), generator=generator)]
            if pool.numel() > 1:  # never an image's own context
                clash = pick == torch.arange(n)
                shifted = pool[(torch.searchsorted(pool, pick[clash]) + 1) % pool.numel()]
                pick = pick.clone()
                pick[clash] = shifted
            keep = pick != torch.arange(n)
            images.append(paste(data.objects[keep], data.images[keep], contexts[pick[keep]]))
            targets.append(labels[keep])
            kinds.append(torch.full((int(keep.sum()),), SWAP))
    alone = contexts[ok]
    none = torch.zeros(alone.shape[0], c) if multi_label else torch.full((alone.shape[0], c), 1.0 / c)
    images.append(alone)
    targets.append(none)
    kinds.append(torch.full((alone.shape[0],), CONTEXT))
    return torch.cat(images), torch.cat(targets).float(), torch.cat(kinds)


def head_loss(logits: Tensor, targets: Tensor, multi_label: bool) -> Tensor:
    """Mean soft-target cross entropy (single-label) or binary cross entropy (multi-label)."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


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
    x = features.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
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
    with torch.no_grad():
        raw_weight = weight / std
        raw_bias = bias - raw_weight @ mean
    return raw_weight.float(), raw_bias.float()


def _held_out_score(weight: Tensor, bias: Tensor, features: Tensor, targets: Tensor, kind: Tensor,
                    multi_label: bool) -> tuple[float, float]:
    """(accuracy of the objects on contexts -- top-1, or all labels right at 0.5 for multi-label --,
    loss over every held-out image)."""
    logits = features @ weight.T + bias
    swaps = kind == SWAP
    if multi_label:
        right = ((torch.sigmoid(logits[swaps]) > 0.5) == (targets[swaps] > 0.5)).all(1)
    else:
        right = logits[swaps].argmax(1) == targets[swaps].argmax(1)
    accuracy = float(right.float().mean()) if swaps.any() else math.nan
    return accuracy, float(head_loss(logits, targets, multi_label))


def choose_l2(data: AnnotatedImages, features_of, *, multi_label: bool, grid: Sequence[float] = L2_GRID,
              seed: int = 0, contexts_per_class: int = 1) -> tuple[float, list[dict[str, float]]]:
    """The regulariser of :func:`fit_linear_head`, chosen on the annotated images alone.

    The annotated images are split in two halves (seeded); each value of ``grid`` is fit on the
    counterfactuals built within one half and scored on those of the other (objects on contexts
    of every class: accuracy, then lower loss), and the reverse; the best mean wins (ties: the
    larger ``l2``, the simpler head).

    Args:
        features_of: ``images (M, 3, H, W) -> features (M, D)``.

    Returns:
        The chosen value and one ``{"l2", "accuracy", "loss"}`` row per grid value.
    """
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + 1))
    halves = [data.subset(order[: len(data) // 2]), data.subset(order[len(data) // 2:])]
    sets = []
    for number, half in enumerate(halves):
        images, targets, kind = counterfactual_training_set(half, contexts_per_class=contexts_per_class,
                                                            seed=seed + 10 + number, multi_label=multi_label)
        sets.append((features_of(images), targets, kind))
    rows = []
    for l2 in grid:
        scores = []
        for fit, test in ((0, 1), (1, 0)):
            weight, bias = fit_linear_head(sets[fit][0], sets[fit][1], multi_label=multi_label, l2=l2)
            scores.append(_held_out_score(weight, bias, *sets[test], multi_label=multi_label))
        rows.append({"l2": float(l2), "accuracy": sum(s[0] for s in scores) / 2, "loss": sum(s[1] for s in scores) / 2})
    best = max(rows, key=lambda r: (r["accuracy"], -r["loss"], r["l2"]))
    return best["l2"], rows


def fix_dfr(gain: nn.Module, model: nn.Module, data: AnnotatedImages, *, multi_label: bool, seed: int = 0,
            contexts_per_class: int = 1, batch_size: int = 64, device: torch.device | str = "cpu",
            progress: bool = False, l2: float | None = None) -> dict[str, Any]:
    """Retrain ``model``'s last ``nn.Linear`` in place on counterfactuals of ``data`` (DFR).

    Args:
        gain: what computes the logits (the :class:`GAIN` wrapper or the model itself).
        model: the classifier whose head is replaced (``gain.model``).
        data: the annotated training images.
        l2: the regulariser; ``None`` chooses it with :func:`choose_l2`.

    Returns:
        ``{"l2", "l2_search", "images", "objects", "contexts"}``.
    """
    head = last_linear(model)
    if head.bias is None:
        raise ValueError(f"{type(model).__name__}: its last nn.Linear has no bias; --way dfr needs one")

    def features_of(images: Tensor) -> Tensor:
        return penultimate_features(gain, images, batch_size=batch_size, device=device, progress=progress)

    search: list[dict[str, float]] = []
    if l2 is None:
        l2, search = choose_l2(data, features_of, multi_label=multi_label, seed=seed,
                               contexts_per_class=contexts_per_class)
    images, targets, kind = counterfactual_training_set(data, contexts_per_class=contexts_per_class, seed=seed,
                                                        multi_label=multi_label)
    weight, bias = fit_linear_head(features_of(images), targets, multi_label=multi_label, l2=l2)
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight))
        head.bias.copy_(bias.to(head.bias))
    return {"l2": l2, "l2_search": search, "images": int(images.shape[0]), "objects": len(data),
            "object_on_context": int((kind == SWAP).sum()), "context_only": int((kind == CONTEXT).sum())}
