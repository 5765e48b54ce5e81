"""Trainable attention: Grad-CAM maps as differentiable functions of the features (Eq. 1-2).

A *pair* ``(b, c)`` asks for the attention map of class ``c`` on image ``b``; a multi-label batch
yields one pair per ground-truth label (:func:`label_pairs`), so an image with ``n`` labels gets
``n`` maps and, later, ``n`` erased images.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import Tensor

# Absolute epsilon: Grad-CAM maps of freshly initialised deep nets can be ~1e-8 in scale, so a
# larger one (1e-7, as pytorch-grad-cam uses) would squash them; float32 keeps 1e-12 representable.
NORMALISATION_EPS = 1e-12


def full_precision(tensor: Tensor) -> Tensor:
    """``tensor`` in at least float32: half and bfloat16 are upcast, float32/float64 kept."""
    return tensor.float() if tensor.is_floating_point() and tensor.element_size() < 4 else tensor


def autocast_off(device: torch.device) -> AbstractContextManager[None]:
    """Mixed precision (``torch.autocast``) disabled for ``device``'s type within the block.

    The map maths runs under it: under bf16 autocast the weighted sum ``sum_k w_k f_k`` would run
    as a bf16 matmul, and its rounding (8-bit mantissa, over K channels of cancelling terms) moves
    normalised maps by up to ~0.3 and can turn an all-zero map into a full-range one.
    """
    return torch.autocast(device_type=device.type, enabled=False)


def label_pairs(labels: Tensor) -> Tensor:
    """``(P, 2)`` long tensor of ``(image_index, class_index)``, ordered by image then class.

    Args:
        labels: multi-hot ``(B, C)`` (any nonzero entry is a label) or class indices ``(B,)``.
    """
    if labels.dim() == 1:
        return torch.stack([torch.arange(labels.shape[0], device=labels.device), labels.long()], dim=1)
    if labels.dim() != 2:
        raise ValueError(f"labels must be (B, C) multi-hot or (B,) indices, got shape {tuple(labels.shape)}")
    return torch.nonzero(labels, as_tuple=False)


def label_slots(image_index: Tensor) -> Tensor:
    """``(P,)`` rank of each pair among the pairs of its image (0 for its first label, 1 for its
    second...), from ``image_index`` ``(P,)``; the Grad-CAM "label slot" of the pair.

    ``image_index`` need not be sorted.
    """
    order = torch.argsort(image_index, stable=True)
    sorted_index = image_index[order]
    position = torch.arange(sorted_index.numel(), device=image_index.device)
    is_first = torch.ones_like(sorted_index, dtype=torch.bool)
    is_first[1:] = sorted_index[1:] != sorted_index[:-1]
    run_start = torch.cummax(torch.where(is_first, position, torch.zeros_like(position)), dim=0).values
    slot = torch.empty_like(image_index)
    slot[order] = position - run_start
    return slot


def gradcam_weights(
    scores: Tensor,
    features: Tensor,
    pairs: Tensor,
    *,
    create_graph: bool = False,
    batched: bool = True,
    slots: int | None = None,
) -> Tensor:
    """Eq. 1: ``w^c_k = mean_{i,j} d s^c / d f_k(i, j)`` for every pair.

    Pairs of the same image are spread over "slots" (an image's first label in slot 0, its second
    in slot 1, ...); one ``torch.autograd.grad`` per slot gives the gradient of that slot's summed
    scores. Within a slot each image contributes one score, so the per-image gradient equals that
    pair's own Grad-CAM gradient as long as images do not interact after layer ``l`` (true in eval
    mode and for the usual heads; a train-mode BatchNorm *after* the attention layer would couple
    them, as it would any batched Grad-CAM).

    Two ways to run the slots, with the same result:

    * ``batched=True``: ONE vmapped call over all slots (``is_grads_batched``). Cost: one backward
      from the scores to ``f_l`` with every op vectorised over the slots.
    * ``batched=False``: a loop, one backward per slot. Needed where that backward runs a
      collective (a synchronised BatchNorm after ``l`` under DDP: ``c10d::allreduce_`` has no
      batching rule, so vmap fails). Cost: ``n_slots`` backwards from the scores to ``f_l``.
      Measured on the project's shared 2-core CPU, 1 thread (``benchmarks/gradcam_slots.py``,
      1/3/6 slots, with and without ``create_graph``): the loop took 0.80-1.07x the batched
      call's time for small-cnn width 32 at ``features.11`` (batch 32, 64 px; 50-335 ms) and
      0.66-1.05x for ResNet-18 at ``layer3`` (batch 16, 128 px): the vmapped ops are no cheaper
      on a CPU. Not measured on a GPU, where the loop launches ``n_slots`` times as many kernels,
      so the batched call stays the default wherever no collective is involved.

    Args:
        scores: ``(B, C)`` logits, part of the graph that produced ``features``.
        features: ``(B, K, h, w)`` activations of the attention layer.
        pairs: ``(P, 2)`` ``(image_index, class_index)``.
        create_graph: keep the graph of the weights so that losses also differentiate through
            ``w`` (second order); ``False`` treats ``w`` as a constant, as Grad-CAM does.
        batched: one vmapped call (``True``) or one call per slot (``False``), see above.
        slots: number of slots to differentiate, at least the number the pairs need (default:
            that number). Extra slots have all-zero gradient outputs: their backward runs (and
            makes the same collectives as on a process whose images have more labels) and adds
            nothing. Under DDP every rank passes the same value, so every rank runs the same
            backwards whatever its labels, none included.

    Returns:
        ``(P, K)`` weights in at least float32 (the spatial mean of half-precision gradients is
        taken in float32). The graph of ``scores`` is retained for the caller's own backward.
    """
    image_index, class_index = pairs[:, 0], pairs[:, 1]
    slot = label_slots(image_index) if pairs.numel() else image_index
    needed = int(slot.max()) + 1 if pairs.numel() else 0
    n_slots = needed if slots is None else slots
    if n_slots < needed:
        raise ValueError(f"slots={slots} is fewer than the {needed} label slots the pairs need")
    if n_slots == 0:
        return features.new_zeros(0, features.shape[1], dtype=full_precision(features).dtype)
    grad_outputs = scores.new_zeros(n_slots, *scores.shape)
    grad_outputs[slot, image_index, class_index] = 1.0
    if n_slots == 1 or not batched:
        gradients = torch.stack([
            torch.autograd.grad(scores, features, grad_outputs[s], retain_graph=True, create_graph=create_graph)[0]
            for s in range(n_slots)
        ])
    else:
        (gradients,) = torch.autograd.grad(
            scores, features, grad_outputs, retain_graph=True, create_graph=create_graph, is_grads_batched=True
        )
    with autocast_off(features.device):
        return full_precision(gradients[slot, image_index]).mean(dim=(-2, -1))


def linear_head_weights(head_weight: Tensor, class_index: Tensor, feature_hw: tuple[int, int]) -> Tensor:
    """Closed form of Eq. 1 for a global-average-pool + linear head: ``w^c = W_c / (h * w)``.

    ``head_weight`` ``(C, K)``; returns ``(P, K)``.
    """
    return head_weight[class_index] / float(feature_hw[0] * feature_hw[1])


def normalise_maps(maps: Tensor, eps: float = NORMALISATION_EPS) -> Tensor:
    """Per-map min-max normalisation of ``(P, H, W)`` to ``[0, 1]`` (in at least float32 with
    autocast off, so half precision cannot underflow the epsilon); an all-zero map stays zero."""
    with autocast_off(maps.device):
        maps = full_precision(maps)
        flat = maps.flatten(1)
        low = flat.min(dim=1).values[:, None, None]
        high = flat.max(dim=1).values[:, None, None]
        return (maps - low) / (high - low + eps)


def attention_maps(
    features: Tensor,
    weights: Tensor,
    image_index: Tensor,
    output_size: tuple[int, int] | None = None,
    *,
    normalise: bool = True,
) -> Tensor:
    """Eq. 2: ``A^c = ReLU(sum_k w^c_k f_k)``, resized bilinearly, then min-max normalised.

    Args:
        features: ``(B, K, h, w)``.
        weights: ``(P, K)`` Grad-CAM weights, one row per pair.
        image_index: ``(P,)`` image of each pair.
        output_size: ``(H, W)`` to resize to (the input size); ``None`` keeps ``(h, w)``.
        normalise: min-max normalise each map to ``[0, 1]`` (after resizing, as METHOD.md states).

    Returns:
        ``(P, H, W)`` maps in at least float32, differentiable with respect to ``features`` (and
        ``weights``). The weighted sum, the resize and the normalisation run with autocast off on
        upcast inputs (:func:`autocast_off`), so mixed-precision training gets the float32 maps of
        its (half-precision) features.
    """
    with autocast_off(features.device):
        features, weights = full_precision(features), full_precision(weights)
        dtype = torch.promote_types(features.dtype, weights.dtype)
        maps = F.relu(torch.einsum("pk,pkhw->phw", weights.to(dtype), features[image_index].to(dtype)))
        if output_size is not None and tuple(output_size) != tuple(maps.shape[-2:]):
            maps = F.interpolate(maps[:, None], size=tuple(output_size), mode="bilinear", align_corners=False)[:, 0]
        return normalise_maps(maps) if normalise else maps
