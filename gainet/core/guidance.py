"""Guidance from a few masks or boxes that constrains a classifier's *output*, not its map.

Modes (one vocabulary for the library, ``gainet train --guidance`` and ``gainet bias-study``):

- ``l_e``: GAIN_ext's L_e (Eq. 7) on the supervised images' attention maps (computed by
  :class:`~gainet.core.gain.GAIN` itself when it is given masks).
- ``context-swap``: cross entropy / soft margin on each supervised object pasted onto another
  image's context, labelled with the object's class (:func:`~gainet.core.counterfactual.context_swap`).
- ``context-only``: the object removed and the hole filled from the context; the target is
  "none of the classes" (:func:`context_only_loss`).
- ``actdiff``: the L2 distance between the attention layer's activations of a supervised image
  and of the same object on another context (ActDiff, Viviano et al., ICLR 2021).
- ``rrr``: the input gradient of the summed log-probabilities, penalised outside the object
  (Right for the Right Reasons, Ross et al., IJCAI 2017).
- ``upweight``: the supervised images' classification loss once more, without their masks: the
  baseline that tells whether a mode gains anything from the boxes themselves.

Every loss is a mean over the images it applies to (so its weight is in effect scaled by
total / supervised images) and is zero, never NaN, when no image qualifies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gainet.core.counterfactual import Counterfactuals, context_only, context_swap, dilate, masks_within_boxes, object_masks
from gainet.core.losses import classification_loss

GUIDANCE_MODES = ("l_e", "context-swap", "context-only", "actdiff", "rrr", "upweight")
# Modes that need the counterfactual images, and the forward pass over them.
COUNTERFACTUAL_MODES = ("context-swap", "context-only", "actdiff", "rrr")
ContextTarget = Literal["uniform", "erased"]
SwapMask = Literal["mask", "attention"]  # "grabcut" is the trainer's: it passes paste_masks


def parse_guidance(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"context-swap,l_e"`` (or a sequence of names) -> ``("context-swap", "l_e")``; ``""`` or
    ``None`` -> ``()``. Unknown names raise a one-line ``ValueError`` listing the valid ones."""
    if value is None:
        return ()
    parts = value.replace("+", ",").split(",") if isinstance(value, str) else list(value)
    modes: list[str] = []
    for part in (p.strip() for p in parts):
        if not part or part == "none":
            continue
        if part not in GUIDANCE_MODES:
            raise ValueError(f"unknown guidance mode {part!r}; choose from {', '.join(GUIDANCE_MODES)} (comma-separated)")
        if part not in modes:
            modes.append(part)
    return tuple(modes)


def supervised_classification_loss(scores: Tensor, labels: Tensor, supervised: Tensor, multi_label: bool) -> Tensor:
    """``upweight``: L_cl over the supervised rows of ``scores`` ``(B, C)`` only (zero if none).

    Args:
        labels: ``(B, C)`` multi-hot (single-label: one-hot) or ``(B,)`` indices.
        supervised: ``(B,)`` bool.
    """
    rows = supervised.to(device=scores.device, dtype=torch.bool)
    if not bool(rows.any()):
        return scores.sum() * 0.0
    return classification_loss(scores[rows], labels[rows], multi_label)


def context_only_loss(scores: Tensor, erased: Tensor, multi_label: bool, target: ContextTarget = "uniform") -> Tensor:
    """Loss on images that show no object: their target is "none of the classes".

    Args:
        scores: ``(S, C)`` logits of context-only images.
        erased: ``(S, C)`` multi-hot, the classes whose objects were removed.
        multi_label: multi-label models: soft-margin loss against all-zero labels.
        target: single-label models: ``"uniform"``: KL divergence from the uniform distribution
            to the softmax (zero when every class gets 1/C); ``"erased"``: the summed softmax
            probability of the erased classes (like L_am, with the true mask for the map).

    Returns:
        The mean over the ``S`` images (zero when ``S == 0``).
    """
    if scores.shape[0] == 0:
        return scores.sum() * 0.0
    if multi_label:
        return F.multilabel_soft_margin_loss(scores, torch.zeros_like(scores))
    log_p = F.log_softmax(scores, dim=1)
    if target == "uniform":
        return (-math.log(scores.shape[1]) - log_p.mean(dim=1)).mean()
    if target == "erased":
        return (log_p.exp() * erased.to(log_p.dtype)).sum(dim=1).mean()
    raise ValueError(f"context target must be 'uniform' or 'erased', got {target!r}")


def activation_difference(features: Tensor, counterfactual_features: Tensor) -> Tensor:
    """ActDiff: mean over images of the mean squared difference between two activations.

    Args:
        features, counterfactual_features: ``(S, K, h, w)`` the attention layer's activations of
            the images and of the same objects on another context.

    Returns:
        Scalar, zero when ``S == 0``.
    """
    if features.shape != counterfactual_features.shape:
        raise ValueError(f"activation shapes differ: {tuple(features.shape)} vs {tuple(counterfactual_features.shape)}")
    if features.shape[0] == 0:
        return features.sum() * 0.0
    return (features - counterfactual_features).pow(2).flatten(1).mean(dim=1).mean()


def summed_log_probabilities(scores: Tensor, multi_label: bool) -> Tensor:
    """``(S, C)`` logits -> ``(S,)`` ``sum_k log p_k``: log-sigmoid (multi-label) or log-softmax."""
    log_p = F.logsigmoid(scores) if multi_label else F.log_softmax(scores, dim=1)
    return log_p.sum(dim=1)


def input_gradient_penalty(images: Tensor, scores: Tensor, allowed: Tensor, multi_label: bool) -> Tensor:
    """Right for the Right Reasons: ``mean_s sum_{pixels, channels} ((1 - M_s) d/dx_s sum_k log p_k(x_s))^2``.

    Args:
        images: ``(S, 3, H, W)`` the inputs ``scores`` were computed from, with ``requires_grad``.
        scores: ``(S, C)`` logits.
        allowed: ``(S, H, W)`` the object's mask or box ``M`` (1 = the model may look there).
        multi_label: log-sigmoid or log-softmax probabilities.

    The gradient is taken of the batch sum, so in a network whose BatchNorm uses batch
    statistics it includes the (small) cross-image terms through those statistics. The result is
    a mean over the ``S`` supervised images: Ross et al.'s sum over a batch with zeros for
    images without annotation, scaled by total / supervised images. Part of the graph
    (``create_graph``), zero when ``S == 0``.
    """
    if scores.shape[0] == 0:
        return scores.sum() * 0.0
    if not images.requires_grad:
        raise ValueError("input_gradient_penalty needs images with requires_grad=True, before the forward pass")
    (gradient,) = torch.autograd.grad(summed_log_probabilities(scores, multi_label).sum(), images, create_graph=True)
    outside = (1.0 - allowed.to(gradient.dtype))[:, None]
    return (outside * gradient).pow(2).flatten(1).sum(dim=1).mean()


@dataclass
class GuidanceOutput:
    """What :func:`guidance_losses` returns.

    Attributes:
        loss: ``sum_m weight_m * terms[m]`` over the requested modes (a zero tensor when none
            applied).
        terms: each requested mode's unweighted loss (``l_e`` excluded: GAIN computes it).
        counts: skipped images and their reasons (``empty_mask``, ``no_context``, ``no_partner``,
            ``same_class_partner``, ``no_supervised``), and the number of ``swaps`` and
            ``context_images`` built.
        swaps: ``(S, 3, H, W)`` the context-swap images (detached), for inspection; or ``None``.
        contexts: ``(S', 3, H, W)`` the context-only images (detached), or ``None``.
    """

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    swaps: Tensor | None = None
    contexts: Tensor | None = None


def _maps_per_class(gain, images: Tensor, labels: Tensor, index: Tensor) -> Tensor:
    """``(B, C, H, W)`` attention of each ground-truth class of the images at ``index`` (zeros
    elsewhere), computed without touching BatchNorm's running statistics."""
    out = images.new_zeros((images.shape[0], labels.shape[1], *images.shape[-2:]))
    with gain.erased_batchnorm_context(gain.backbone.model):
        _, pairs, maps = gain.label_attention(images[index], labels[index])
    out[index[pairs[:, 0]], pairs[:, 1]] = maps.to(out.dtype)
    return out


def guidance_losses(
    gain,
    images: Tensor,
    labels: Tensor,
    masks: Tensor,
    supervised: Tensor | None,
    modes: Sequence[str],
    *,
    scores: Tensor | None = None,
    weights: dict[str, float] | None = None,
    swap_mask: SwapMask = "mask",
    paste_masks: Tensor | None = None,
    swap_partners: int = 1,
    context_target: ContextTarget = "uniform",
    generator: torch.Generator | None = None,
) -> GuidanceOutput:
    """The guidance terms of one training batch for ``gain`` (a :class:`~gainet.core.gain.GAIN`).

    Builds the counterfactual images of the batch's supervised images and runs them (with the
    supervised originals where ``actdiff`` or ``rrr`` need them) through the network in one extra
    forward pass whose BatchNorm layers follow ``gain.erased_batchnorm`` (batch statistics of
    that pass, or the running ones) and never move a running statistic.

    Args:
        gain: the GAIN module (its ``backbone`` gives scores and attention-layer activations).
        images: ``(B, 3, H, W)`` normalised images of the batch.
        labels: ``(B, C)`` multi-hot (single-label: one-hot) or ``(B,)`` indices.
        masks: ``(B, C, H, W)`` per-class masks or box masks in [0, 1] (rows of ``supervised``).
        supervised: ``(B,)`` bool; ``None``: every image.
        modes: names from :data:`GUIDANCE_MODES` (``l_e`` is ignored here).
        scores: ``(B, C)`` logits of the batch's main forward, for ``upweight``.
        weights: per-mode weight (default 1 for each).
        swap_mask: what a context swap pastes: ``"mask"``: the mask (with boxes: the whole
            box); ``"attention"``: inside each box, the pixels where the model's own attention for
            the class is at least half its in-box range (:func:`masks_within_boxes`).
        paste_masks: ``(B, H, W)`` in {0, 1}, the pixels a swap pastes, estimated by the caller
            (e.g. GrabCut inside the boxes, ``gainet.data.grabcut``); overrides ``swap_mask``.
            The contexts are still filled over the whole mask or box.
        swap_partners: contexts each object is pasted on (:func:`context_swap`'s ``partners``).
        context_target: single-label target of context-only images (:func:`context_only_loss`).
        generator: for the swap partners and the fill's grain.
    """
    modes = [m for m in parse_guidance(list(modes)) if m != "l_e"]
    weights = {m: 1.0 for m in modes} | dict(weights or {})
    multi_label = bool(gain.multi_label)
    num_classes = masks.shape[1]
    if labels.dim() == 1:
        labels = F.one_hot(labels.long(), num_classes).to(images.dtype)
    supervised = (torch.ones(images.shape[0], dtype=torch.bool, device=images.device) if supervised is None
                  else supervised.to(device=images.device, dtype=torch.bool))
    zero = images.new_zeros(())
    output = GuidanceOutput(loss=zero, counts={"no_supervised": int(not bool(supervised.any()))})
    if not modes:
        return output
    if "upweight" in modes:
        if scores is None:
            raise ValueError("upweight needs the batch's scores")
        output.terms["upweight"] = supervised_classification_loss(scores, labels, supervised, multi_label)

    if any(m in COUNTERFACTUAL_MODES for m in modes) and bool(supervised.any()):
        plain = images.detach()
        if any(m in modes for m in ("context-swap", "context-only", "actdiff")):
            contexts = context_only(plain, masks, labels, supervised, generator=generator)
        else:  # rrr alone needs no fill, only the images with a usable mask
            usable = supervised & (object_masks(masks).flatten(1).sum(1) > 0)
            index = usable.nonzero().flatten()
            contexts = Counterfactuals(plain[:0], index, index, labels[:0],
                                       {"empty_mask": int((supervised & ~usable).sum()), "no_context": 0})
        output.counts.update(contexts.counts)
        swaps = None
        if "context-swap" in modes or "actdiff" in modes:
            override = paste_masks
            if override is not None:
                if override.shape != (images.shape[0], *images.shape[-2:]):
                    raise ValueError(f"paste_masks must be (B, H, W) = {(images.shape[0], *images.shape[-2:])}, "
                                     f"got {tuple(override.shape)}")
            elif swap_mask == "attention" and contexts.source.numel() > 0:
                maps = _maps_per_class(gain, plain, labels, contexts.source)
                override = object_masks(masks_within_boxes(masks, maps))
            elif swap_mask != "mask":
                raise ValueError(f"swap_mask must be 'mask' or 'attention', got {swap_mask!r}")
            swaps = context_swap(plain, masks, labels, supervised, object_masks_override=override,
                                 contexts=contexts, partners=swap_partners, generator=generator)
            output.counts.update(swaps.counts)
            output.swaps = swaps.images
        output.counts["swaps"] = 0 if swaps is None else swaps.images.shape[0]
        output.counts["context_images"] = contexts.images.shape[0]
        output.contexts = contexts.images if "context-only" in modes else None

        originals_index = contexts.source if ("rrr" in modes or "actdiff" in modes) else contexts.source[:0]
        originals = plain[originals_index]
        if "rrr" in modes:
            originals = originals.clone().requires_grad_(True)
        parts = [originals]
        parts.append(swaps.images if swaps is not None else plain[:0])
        parts.append(contexts.images if "context-only" in modes else plain[:0])
        sizes = [p.shape[0] for p in parts]
        if sum(sizes) > 0:
            with gain.erased_batchnorm_context(gain.backbone.model):
                cf_scores, cf_features = gain.backbone(torch.cat(parts))
            s_orig, s_swap, s_ctx = torch.split(cf_scores, sizes)
            f_orig, f_swap, _ = torch.split(cf_features, sizes)
            if "context-swap" in modes:
                output.terms["context-swap"] = (classification_loss(s_swap, swaps.labels, multi_label)
                                                if s_swap.shape[0] else zero)
            if "context-only" in modes:
                output.terms["context-only"] = context_only_loss(s_ctx, contexts.labels, multi_label, context_target)
            if "actdiff" in modes:
                # Row of each swap's source among the originals.
                position = {int(i): k for k, i in enumerate(originals_index.tolist())}
                rows = torch.tensor([position[int(i)] for i in swaps.source.tolist()], dtype=torch.long,
                                    device=images.device)
                output.terms["actdiff"] = activation_difference(f_orig[rows], f_swap)
            if "rrr" in modes:
                allowed = dilate(object_masks(masks[originals_index]), 1)
                output.terms["rrr"] = input_gradient_penalty(originals, s_orig, allowed, multi_label)
    for mode in modes:
        output.terms.setdefault(mode, zero)
    output.loss = sum((weights[m] * output.terms[m] for m in modes), zero)
    return output
