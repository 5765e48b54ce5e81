"""``gainet fix``: make a classifier that reads the background read the object, from a few boxes.

The refits of the last layer live here; the ways that train (and ``auto``, which chooses) are in
:class:`gainet.shortcuts.jobs.Fixer`.

- ``dfr`` (Deep Feature Reweighting, Kirichenko et al., ICLR 2023, as its paper runs it;
  :func:`fix_dfr`): the backbone stays frozen; its penultimate features (the input of the last
  ``nn.Linear``) are computed once, with ``torch.no_grad``, on counterfactual images built from the
  annotated images -- each annotated object on a context of every class
  (:func:`counterfactual_training_set`), the originals, and every context alone with the target
  "none of the classes" (uniform soft target for single-label, all-zero for multi-label). The rows
  fall into groups (object class x context class, and the contexts alone); the last layer is refit
  on a *group-balanced* subsample (every group cut to the smallest one's size) by l1-penalised
  logistic regression on standardised features (:func:`fit_sparse_head`, FISTA), 10 times on
  different subsamples, the heads averaged (:func:`fit_balanced_head`). The penalty is chosen by
  worst-group accuracy on held-out annotated objects (:func:`choose_l1`).
- ``dfr-l2`` (:func:`fix_dfr_plain`): the earlier refit, kept to compare: every row once (the
  aligned rows twice as many as any misaligned group), L2 penalty (:func:`fit_linear_head`,
  L-BFGS), chosen by the accuracy of held-out objects on other classes' contexts (:func:`choose_l2`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from gainet.shortcuts.diagnose import AnnotatedImages, contexts_of, paste, predict
from gainet.shortcuts.evidence import answers_right
from gainet.shortcuts.heads import fit_linear_head, fit_sparse_head, head_loss

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
                                margin: int = 1, multi_label: bool = False, contexts_from: AnnotatedImages | None = None,
                                with_groups: bool = False) -> tuple[Tensor, ...]:
    """Each annotated object on ``contexts_per_class`` contexts of every class, the originals, and
    every context alone.

    A context of class ``k`` is another annotated image labelled ``k`` (with its object removed
    and filled). The object keeps its place and its labels.

    Returns:
        ``images`` ``(M, 3, H, W)``, ``targets`` ``(M, C)`` (objects: their labels; contexts alone:
        uniform ``1/C`` single-label, zeros multi-label) and ``kind`` ``(M,)``: 0 original, 1 object
        on a context, 2 context alone; with ``with_groups`` also ``groups`` ``(M, 2)`` long: the
        object's class (its first label; ``-1`` for a context alone) and the context's class.

    Args:
        contexts_from: the images whose contexts are used (default: ``data``'s own; an object never
            gets its own image's context). Its context-only rows are the ones returned.
    """
    generator = torch.Generator().manual_seed(seed)
    source = data if contexts_from is None else contexts_from
    contexts, ok = contexts_of(source, margin=margin, generator=generator)
    labels, context_labels = data.labels, source.labels
    n, c = labels.shape
    first = (labels > 0.5).float().argmax(1)
    images, targets, kinds, groups = [data.images], [labels], [torch.full((n,), ORIGINAL)], [torch.stack([first, first], 1)]
    for k in range(c):
        pool = ((context_labels[:, k] > 0.5) & ok).nonzero().flatten()
        if pool.numel() == 0:
            continue
        for _ in range(contexts_per_class):
            pick = pool[torch.randint(pool.numel(), (n,), generator=generator)]
            keep = torch.ones(n, dtype=torch.bool)
            if contexts_from is None:
                if pool.numel() > 1:  # never an image's own context
                    clash = pick == torch.arange(n)
                    shifted = pool[(torch.searchsorted(pool, pick[clash]) + 1) % pool.numel()]
                    pick = pick.clone()
                    pick[clash] = shifted
                keep = pick != torch.arange(n)
            images.append(paste(data.objects[keep], data.images[keep], contexts[pick[keep]]))
            targets.append(labels[keep])
            kinds.append(torch.full((int(keep.sum()),), SWAP))
            groups.append(torch.stack([first[keep], torch.full((int(keep.sum()),), k)], 1))
    alone = contexts[ok]
    none = torch.zeros(alone.shape[0], c) if multi_label else torch.full((alone.shape[0], c), 1.0 / c)
    images.append(alone)
    targets.append(none)
    kinds.append(torch.full((alone.shape[0],), CONTEXT))
    alone_class = (context_labels[ok] > 0.5).float().argmax(1)
    groups.append(torch.stack([torch.full_like(alone_class, -1), alone_class], 1))
    out = (torch.cat(images), torch.cat(targets).float(), torch.cat(kinds))
    return (*out, torch.cat(groups)) if with_groups else out


def _held_out_score(weight: Tensor, bias: Tensor, features: Tensor, targets: Tensor, kind: Tensor,
                    multi_label: bool) -> tuple[float, float]:
    """(accuracy of the objects on contexts -- top-1, or all labels right at 0.5 for multi-label --,
    loss over every held-out image)."""
    logits = features @ weight.T + bias
    swaps = kind == SWAP
    right = answers_right(logits[swaps], targets[swaps], multi_label)
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


L1_GRID = (1e-3, 3e-3, 1e-2, 3e-2)
RESAMPLES = 10


def balanced_rows(groups: Tensor, generator: torch.Generator) -> Tensor:
    """Row indices with every group (a distinct row of ``groups`` ``(M, 2)``) subsampled to the size of
    the smallest one, without replacement (DFR's group-balanced reweighting set)."""
    keys, inverse = torch.unique(groups, dim=0, return_inverse=True)
    sizes = torch.bincount(inverse, minlength=keys.shape[0])
    smallest = int(sizes.min())
    picked = []
    for g in range(keys.shape[0]):
        members = (inverse == g).nonzero().flatten()
        picked.append(members[torch.randperm(members.numel(), generator=generator)[:smallest]])
    return torch.cat(picked).sort().values


def worst_group_accuracy(logits: Tensor, targets: Tensor, kind: Tensor, groups: Tensor, multi_label: bool) -> float:
    """The lowest accuracy over the (object class, context class) groups of the objects on contexts
    (DFR's selection criterion); top-1, or every label right at 0.5 for multi-label."""
    rows = kind != CONTEXT
    right = answers_right(logits, targets, multi_label)
    keys, inverse = torch.unique(groups[rows], dim=0, return_inverse=True)
    hits = torch.zeros(keys.shape[0]).index_add_(0, inverse, right[rows].float())
    sizes = torch.bincount(inverse, minlength=keys.shape[0]).float()
    return float((hits / sizes).min()) if keys.shape[0] else math.nan


def fit_balanced_head(features: Tensor, targets: Tensor, groups: Tensor, *, multi_label: bool, l1: float,
                      resamples: int = RESAMPLES, seed: int = 0) -> tuple[Tensor, Tensor]:
    """DFR's head: ``resamples`` l1-penalised fits (:func:`fit_sparse_head`), each on a different
    group-balanced subsample (:func:`balanced_rows`), weights and biases averaged."""
    generator = torch.Generator().manual_seed(seed)
    weights, biases = [], []
    for _ in range(resamples):
        rows = balanced_rows(groups, generator)
        weight, bias = fit_sparse_head(features[rows], targets[rows], multi_label=multi_label, l1=l1)
        weights.append(weight)
        biases.append(bias)
    return torch.stack(weights).mean(0), torch.stack(biases).mean(0)


def choose_l1(sets: list[tuple[Tensor, Tensor, Tensor, Tensor]], *, multi_label: bool, grid: Sequence[float] = L1_GRID,
              resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, list[dict[str, float]]]:
    """The l1 weight, chosen as DFR chooses it: fit on one half of the annotated objects'
    counterfactuals, score the worst-group accuracy of the other half's, and the reverse; the best
    mean wins (ties: the larger penalty).

    Args:
        sets: two ``(features, targets, kind, groups)`` halves.
    """
    rows = []
    for l1 in grid:
        scores = []
        for fit, test in ((0, 1), (1, 0)):
            weight, bias = fit_balanced_head(sets[fit][0], sets[fit][1], sets[fit][3], multi_label=multi_label,
                                             l1=l1, resamples=max(1, resamples // 2), seed=seed)
            logits = sets[test][0] @ weight.T + bias
            scores.append(worst_group_accuracy(logits, sets[test][1], sets[test][2], sets[test][3], multi_label))
        rows.append({"l1": float(l1), "worst_group": sum(scores) / 2})
    best = max(rows, key=lambda r: (r["worst_group"], r["l1"]))
    return best["l1"], rows


def fix_dfr(gain: nn.Module, model: nn.Module, data: AnnotatedImages, *, multi_label: bool, seed: int = 0,
            contexts_per_class: int = 1, batch_size: int = 64, device: torch.device | str = "cpu",
            progress: bool = False, l1: float | None = None, resamples: int = RESAMPLES) -> dict[str, Any]:
    """DFR as its paper runs it: retrain ``model``'s last ``nn.Linear`` in place on a
    group-balanced set of counterfactuals of ``data`` (each object on every class's context, each
    context alone), l1-penalised, averaged over ``resamples`` balanced subsamples; the penalty chosen
    by worst-group accuracy on held-out annotated objects (:func:`choose_l1`).

    Returns:
        ``{"recipe": "dfr", "l1", "l1_search", "resamples", "images", "objects", "object_on_context", "context_only"}``.
    """
    head = last_linear(model)
    if head.bias is None:
        raise ValueError(f"{type(model).__name__}: its last nn.Linear has no bias; --way dfr needs one")

    def features_of(images: Tensor) -> Tensor:
        return penultimate_features(gain, images, batch_size=batch_size, device=device, progress=progress)

    def feature_set(part: AnnotatedImages, part_seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        images, targets, kind, groups = counterfactual_training_set(
            part, contexts_per_class=contexts_per_class, seed=part_seed, multi_label=multi_label, with_groups=True)
        return features_of(images), targets, kind, groups

    search: list[dict[str, float]] = []
    if l1 is None:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + 1))
        halves = [data.subset(order[: len(data) // 2]), data.subset(order[len(data) // 2:])]
        l1, search = choose_l1([feature_set(half, seed + 10 + i) for i, half in enumerate(halves)],
                               multi_label=multi_label, resamples=resamples, seed=seed)
    features, targets, kind, groups = feature_set(data, seed)
    weight, bias = fit_balanced_head(features, targets, groups, multi_label=multi_label, l1=l1, resamples=resamples,
                                     seed=seed)
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight))
        head.bias.copy_(bias.to(head.bias))
    return {"recipe": "dfr", "l1": l1, "l1_search": search, "resamples": resamples, "images": int(kind.numel()),
            "objects": len(data), "object_on_context": int((kind == SWAP).sum()), "context_only": int((kind == CONTEXT).sum())}


def fix_dfr_plain(gain: nn.Module, model: nn.Module, data: AnnotatedImages, *, multi_label: bool, seed: int = 0,
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
    return {"recipe": "plain", "l2": l2, "l2_search": search, "images": int(images.shape[0]), "objects": len(data),
            "object_on_context": int((kind == SWAP).sum()), "context_only": int((kind == CONTEXT).sum())}
