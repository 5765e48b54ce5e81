"""Local affinities and their propagation: the numerical core of ``refine-cams`` (no I/O).

Both refinements of :mod:`gainet.wsss.refine` are the same operation, iterated: every pixel's map
value becomes a weighted average of its neighbours' values, the weights normalised over each
pixel's neighbourhood. They differ only in where the weights come from:

- **PAR** (pixel-adaptive refinement, Ru et al., CVPR 2022; training-free): a softmax over the
  neighbours of the colour distance (scaled by the neighbourhood's colour spread), mixed with a
  softmax of the position distance, on 8 neighbours at each of several dilations.
- **Random walk** (AffinityNet, Ahn & Kwak, CVPR 2018; IRN, Ahn et al., CVPR 2019): the learned
  affinity ``a_ij = exp(-mean_c |f_i - f_j|)`` of feature vectors (the self-affinity is 1), raised
  to the power ``beta`` and normalised into a transition matrix ``T`` over the neighbours within a
  radius; ``t`` steps ``v <- T v``.

Neighbourhoods are lists of ``(dy, dx)`` offsets. A neighbour outside the image gets weight 0
(never a padded or replicated pixel), so the transition matrix of the random walk is exactly the
row-normalised ``A^beta`` restricted to the image, which the tests check against a dense float64
matrix power. Everything is batched over images and channels; the only Python loops are over
offsets and iterations.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Offsets = list[tuple[int, int]]


def par_offsets(dilations: Sequence[int]) -> Offsets:
    """The 8 neighbours of a 3x3 kernel at each dilation (PAR's neighbourhood; no centre),
    duplicates removed, in order."""
    if not dilations or any(int(d) < 1 for d in dilations):
        raise ValueError(f"dilations must be positive integers, got {list(dilations)}")
    offsets: Offsets = []
    for d in dilations:
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                offset = (dy * int(d), dx * int(d))
                if offset != (0, 0) and offset not in offsets:
                    offsets.append(offset)
    return offsets


def disc_offsets(radius: int, *, half: bool = False, centre: bool = False) -> Offsets:
    """Offsets ``(dy, dx)`` with ``0 < dy^2 + dx^2 < radius^2`` (AffinityNet's pairs).

    ``half``: only one of each pair ``(o, -o)`` (``dy > 0``, or ``dy == 0`` and ``dx > 0``), for
    training without counting a pair twice; ``centre``: prepend ``(0, 0)``.
    """
    if int(radius) < 2:
        raise ValueError(f"radius must be >= 2 (it excludes the distance itself), got {radius}")
    r = int(radius)
    offsets = [(0, 0)] if centre else []
    for dy in range(-r + 1, r):
        for dx in range(-r + 1, r):
            if 0 < dy * dy + dx * dx < r * r and (not half or dy > 0 or (dy == 0 and dx > 0)):
                offsets.append((dy, dx))
    return offsets


def shifted(x: Tensor, offsets: Offsets) -> tuple[Tensor, Tensor]:
    """Each pixel's neighbours: ``x`` ``(B, C, H, W)`` -> ``(B, C, N, H, W)`` with
    ``out[..., n, i, j] = x[..., i + dy_n, j + dx_n]`` (0 outside the image), and the validity mask
    ``(N, H, W)`` bool (neighbour inside the image)."""
    if x.dim() != 4:
        raise ValueError(f"expected (B, C, H, W), got {tuple(x.shape)}")
    height, width = x.shape[-2:]
    pad = max([abs(v) for o in offsets for v in o] + [0])
    padded = F.pad(x, (pad, pad, pad, pad))
    inside = F.pad(torch.ones(1, 1, height, width, device=x.device, dtype=torch.bool), (pad, pad, pad, pad))
    views, valid = [], []
    for dy, dx in offsets:
        views.append(padded[..., pad + dy:pad + dy + height, pad + dx:pad + dx + width])
        valid.append(inside[0, 0, pad + dy:pad + dy + height, pad + dx:pad + dx + width])
    return torch.stack(views, dim=2), torch.stack(valid)


def propagate(values: Tensor, weights: Tensor, offsets: Offsets, iterations: int) -> Tensor:
    """``iterations`` steps of ``v_i <- sum_n w_{i,n} v_{i + o_n}``.

    Args:
        values: ``(B, K, H, W)`` maps (any range).
        weights: ``(B, N, H, W)`` non-negative, one per offset (0 for neighbours outside the image);
            each pixel's weights should sum to 1 for an average.
        offsets: the ``N`` offsets ``(dy, dx)``.
    Returns:
        ``(B, K, H, W)``.
    """
    if weights.dim() != 4 or weights.shape[1] != len(offsets) or weights.shape[-2:] != values.shape[-2:]:
        raise ValueError(f"weights {tuple(weights.shape)} do not fit values {tuple(values.shape)} "
                         f"and {len(offsets)} offsets")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    height, width = values.shape[-2:]
    pad = max([abs(v) for o in offsets for v in o] + [0])
    dtype = torch.result_type(values, weights)
    values = values.to(dtype)
    for _ in range(int(iterations)):
        # one offset at a time: the same sum as over shifted()'s (B, K, N, H, W) stack, without
        # materialising it (3x faster on a CPU; tests check it against the dense matrix power)
        padded = F.pad(values, (pad, pad, pad, pad))
        total = torch.zeros_like(values)
        for n, (dy, dx) in enumerate(offsets):
            total += weights[:, n:n + 1] * padded[..., pad + dy:pad + dy + height, pad + dx:pad + dx + width]
        values = total
    return values


def _masked_softmax(logits: Tensor, valid: Tensor, dim: int) -> Tensor:
    return torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=dim)


def par_weights(image: Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), *, w_rgb: float = 0.3,
                w_pos: float = 0.01) -> tuple[Tensor, Offsets]:
    """PAR's neighbour weights of ``image`` ``(B, 3, H, W)`` (any colour scale: only ratios count).

    For pixel ``i`` and neighbour ``n`` (8 per dilation, inside the image):
    ``k_rgb = -mean_c (|I_i - I_n| / (w_rgb * s_i))^2``, ``s_i`` the per-channel standard deviation
    of the colours over ``i``'s valid neighbours (+1e-8); ``k_pos = -(|o_n| / (w_rgb * s_pos))^2``,
    ``s_pos`` the standard deviation of the neighbour distances ``|o_n|``. The weights are
    ``(softmax_n k_rgb + w_pos softmax_n k_pos) / (1 + w_pos)``, so each pixel's sum to 1.

    Returns ``(weights (B, N, H, W) in [0, 1], offsets)``.
    """
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
    if not (w_rgb > 0 and w_pos >= 0):
        raise ValueError(f"need w_rgb > 0 and w_pos >= 0, got {w_rgb}, {w_pos}")
    offsets = par_offsets(dilations)
    image = image.float()
    neighbours, valid = shifted(image, offsets)                       # (B, 3, N, H, W), (N, H, W)
    count = valid.sum(0).clamp(min=1)                                 # (H, W)
    vmask = valid.to(image.dtype)
    mean = (neighbours * vmask).sum(2) / count
    var = (((neighbours - mean[:, :, None]) ** 2) * vmask).sum(2) / count
    std = var.sqrt() + 1e-8                                           # (B, 3, H, W)
    k_rgb = -(((image[:, :, None] - neighbours).abs() / (w_rgb * std[:, :, None])) ** 2).mean(1)  # (B, N, H, W)
    distance = torch.tensor([math.hypot(dy, dx) for dy, dx in offsets], dtype=image.dtype, device=image.device)
    k_pos = -(distance / (w_rgb * (distance.std() + 1e-8))) ** 2
    k_pos = k_pos.view(1, -1, 1, 1).expand_as(k_rgb)
    weights = _masked_softmax(k_rgb, valid[None], 1) + w_pos * _masked_softmax(k_pos, valid[None], 1)
    return weights / (1.0 + w_pos), offsets


def par_refine(image: Tensor, maps: Tensor, *, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), iterations: int = 10,
               w_rgb: float = 0.3, w_pos: float = 0.01) -> Tensor:
    """PAR: ``maps`` ``(B, K, H, W)`` propagated ``iterations`` times with :func:`par_weights` of
    ``image`` ``(B, 3, H, W)`` (same ``H, W``). Averages of the inputs: maps in [0, 1] stay in [0, 1]."""
    if maps.shape[0] != image.shape[0] or maps.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"maps {tuple(maps.shape)} and image {tuple(image.shape)} differ in batch or size")
    weights, offsets = par_weights(image, dilations, w_rgb=w_rgb, w_pos=w_pos)
    return propagate(maps.float(), weights, offsets, iterations)


def feature_affinity(features: Tensor, offsets: Offsets) -> tuple[Tensor, Tensor]:
    """AffinityNet's affinity ``exp(-mean_c |f_i - f_{i+o}|)`` in (0, 1] of ``features``
    ``(B, D, H, W)`` with each offset: ``(B, N, H, W)``, and the validity mask ``(N, H, W)``."""
    if features.dim() != 4:
        raise ValueError(f"expected features (B, D, H, W), got {tuple(features.shape)}")
    height, width = features.shape[-2:]
    pad = max([abs(v) for o in offsets for v in o] + [0])
    padded = F.pad(features, (pad, pad, pad, pad))
    # one offset at a time rather than shifted()'s (B, D, N, H, W) stack: the same values, a third
    # of the time and memory in the head's training (measured on a CPU)
    affinity = torch.stack([torch.exp(-(features - padded[..., pad + dy:pad + dy + height, pad + dx:pad + dx + width])
                                      .abs().mean(1)) for dy, dx in offsets], 1)
    inside = F.pad(torch.ones(height, width, device=features.device, dtype=torch.bool), (pad, pad, pad, pad))
    valid = torch.stack([inside[pad + dy:pad + dy + height, pad + dx:pad + dx + width] for dy, dx in offsets])
    return affinity, valid


def random_walk_weights(affinity: Tensor, valid: Tensor, beta: float) -> Tensor:
    """Transition weights ``T_{i,n} = a_{i,n}^beta / sum_m a_{i,m}^beta`` over valid neighbours.

    ``affinity`` ``(B, N, H, W)`` in [0, 1] (include the offset ``(0, 0)`` with affinity 1 for the
    walk's self-loop, as AffinityNet does); ``valid`` ``(N, H, W)``. Returns ``(B, N, H, W)``."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    powered = affinity.clamp(min=0).pow(beta) * valid[None].to(affinity.dtype)
    return powered / powered.sum(1, keepdim=True).clamp(min=1e-12)


def random_walk(maps: Tensor, features: Tensor, *, radius: int = 5, beta: float = 8.0, iterations: int = 256) -> Tensor:
    """Propagate ``maps`` ``(B, K, h, w)`` by a random walk on the affinities of ``features``
    ``(B, D, h, w)`` (same ``h, w``) within ``radius`` (self-loop included): ``iterations`` steps
    of ``v <- T v`` (:func:`random_walk_weights`). Returns ``(B, K, h, w)``, averages of the inputs."""
    if maps.shape[0] != features.shape[0] or maps.shape[-2:] != features.shape[-2:]:
        raise ValueError(f"maps {tuple(maps.shape)} and features {tuple(features.shape)} differ in batch or size")
    offsets = disc_offsets(radius, centre=True)
    affinity, valid = feature_affinity(features.float(), offsets)
    return propagate(maps.float(), random_walk_weights(affinity, valid, beta), offsets, iterations)


def background_scores(walked_foreground: Tensor, walked_background: Tensor) -> Tensor:
    """AffinityNet's decision as maps: ``s_k = f_k / (f_k + b)`` in [0, 1] for walked foreground maps
    ``(B, K, H, W)`` and the walked background ``(B, 1, H, W)`` (both >= 0). Thresholded at 0.5,
    with the strongest map winning (``pseudo-labels``), this is the argmax over background and the
    classes; other thresholds trade background for foreground as on any map."""
    total = walked_foreground + walked_background
    return torch.where(total > 0, walked_foreground / total.clamp(min=1e-12), torch.zeros_like(total))


def pair_labels(labels: Tensor, offsets: Offsets, ignore_index: int = 255) -> tuple[Tensor, Tensor, Tensor]:
    """AffinityNet's training targets from seed labels ``(B, h, w)`` int (0 background, k > 0 a
    class, ``ignore_index`` unsure): for each pixel and offset, ``(B, N, h, w)`` bool masks of the
    background-background pairs, the same-class foreground pairs and the pairs of different labels;
    pairs with an unsure pixel or leaving the image are in none of them."""
    neighbours, valid = shifted(labels[:, None].float(), offsets)
    other = neighbours[:, 0].long()
    here = labels[:, None]
    known = (here != ignore_index) & (other != ignore_index) & valid[None]
    same = known & (here == other)
    return same & (here == 0), same & (here != 0), known & (here != other)


def affinity_loss(affinity: Tensor, bg_pos: Tensor, fg_pos: Tensor, neg: Tensor) -> Tensor:
    """AffinityNet's balanced cross-entropy: ``-log a`` over the background and the foreground
    positive pairs (a quarter each), ``-log(1 - a)`` over the negative pairs (half); each term the
    mean over its pairs (0 when there are none). ``affinity`` ``(B, N, h, w)`` in (0, 1]."""
    eps = 1e-5

    def mean(values: Tensor, mask: Tensor) -> Tensor:
        return (values * mask).sum() / mask.sum().clamp(min=1)

    positive = -torch.log(affinity + eps)
    negative = -torch.log(1.0 + eps - affinity)
    return mean(positive, bg_pos) / 4 + mean(positive, fg_pos) / 4 + mean(negative, neg) / 2
