"""Counterfactual images from a few masks or boxes: the object without its context, the context
without its object.

"Right for the right reasons" supervision (docs/bias_study.md): a classifier that reads the
background is corrected by constraining its *output* on images where object and context are
pulled apart, not by constraining its attention map.

- :func:`fill_from_context`: a hole filled from the surrounding pixels (a push-pull pyramid, then
  diffusion, plus noise matched to the context's own pixel noise), so the filled region is not a
  flat patch a network could learn to recognise.
- :func:`context_only`: the object of each supervised image removed and its hole filled: "the
  water without the boat", whose target is "none of the classes".
- :func:`context_swap`: the object of each supervised image pasted onto the filled context of
  another supervised image (preferably one of another class), labelled with exactly the classes
  whose pixels were pasted.
- :func:`masked_counterpart`: the same image with the pixels outside its object shuffled
  (ActDiff's counterpart, Viviano et al., ICLR 2021).
- :func:`masks_within_boxes`: an object mask estimated inside each box from an attention map.

Plain PyTorch, tensors in and out, vectorised over the batch: a fixed number of tensor
operations per call whatever the images hold (no Python loop over images or fill rings). Images
live in the network's (normalised) input space. Mask value 255 (VOC's "ignore": object borders,
padding) is never object; ignore pixels next to an object join its hole, so a context-only image
does not keep the object's outline. Bad input is skipped and counted (``counts``), never raised:
an empty mask (e.g. after a crop), a mask covering the whole image (no context to fill from), a
batch without a second image to swap with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_VALUE = 255  # VOC's "ignore" pixels in a mask: never object


def _mean3x3(x: Tensor) -> Tensor:
    """3x3 mean of ``(N, K, H, W)`` with replicate padding (edge pixels' means stay unbiased),
    as two passes of shifted-slice sums: several times faster on the CPU than ``avg_pool2d``."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    rows = p[..., :, :-2] + p[..., :, 1:-1] + p[..., :, 2:]
    return (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]) / 9.0


def _sum2x2(x: Tensor) -> Tensor:
    """Sums over 2x2 blocks of ``(N, K, H, W)`` (odd sizes zero-padded): ``(N, K, ceil(H/2), ceil(W/2))``."""
    x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
    return F.avg_pool2d(x, 2) * 4.0


def _push_pull(images: Tensor, known: Tensor) -> Tensor:
    """Every pixel of ``images`` ``(N, K, H, W)`` where ``known`` ``(N, 1, H, W)`` is 0 filled from
    the known ones by a push-pull pyramid (Gortler et al., 1996): pull averages the known pixels
    into coarser levels (weights clamped to 1), push blends each level with the upsampled coarser
    one where its own weight is below 1. ``ceil(log2(max(H, W)))`` levels: a fixed cost."""
    levels: list[tuple[Tensor, Tensor]] = []
    colour, weight = images * known, known
    while max(colour.shape[-2:]) > 1:
        levels.append((colour, weight))
        total = _sum2x2(weight)
        colour = _sum2x2(colour * weight) / total.clamp_min(1e-12)
        weight = total.clamp(max=1.0)
    filled = colour
    for colour, weight in reversed(levels):
        coarse = F.interpolate(filled, size=colour.shape[-2:], mode="bilinear", align_corners=False)
        filled = weight * colour + (1.0 - weight) * coarse
    return filled


def fill_from_context(
    images: Tensor,
    holes: Tensor,
    *,
    smoothing_steps: int = 8,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Fill the ``holes`` of ``images`` from the surrounding pixels, all images at once.

    1. Push-pull: each hole pixel takes a distance-weighted mix of the known pixels around it,
       from a pyramid of masked averages (:func:`_push_pull`).
    2. Diffusion: ``smoothing_steps`` Jacobi steps of the Laplace equation inside the hole (the
       known pixels are the boundary condition), which smooths the pyramid's blocks into a
       harmonic fill (exactly harmonic as the steps grow).
    3. Noise: Gaussian noise inside the hole with the per-channel standard deviation of the known
       pixels' high-frequency residual (pixel minus its 3x3 mean), so the fill has the context's
       grain instead of being suspiciously smooth.

    Args:
        images: ``(N, K, H, W)`` (any channels, any value range).
        holes: ``(N, H, W)``; pixels ``> 0.5`` are replaced.
        smoothing_steps: Jacobi steps after the pyramid.
        noise: add grain (step 3).
        generator: for the noise (drawn on the CPU, so results do not depend on the device).

    Returns:
        ``filled`` ``(N, K, H, W)`` (known pixels unchanged) and ``ok`` ``(N,)`` bool: False where
        the image had no known pixel to fill from (that image is returned unchanged).
    """
    if holes.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"holes must be (N, H, W) = {(images.shape[0], *images.shape[-2:])}, got {tuple(holes.shape)}")
    hole = (holes > 0.5).to(images.dtype)[:, None]  # (N, 1, H, W)
    known = 1.0 - hole
    ok = known.flatten(1).amax(1) > 0
    if images.shape[0] == 0:
        return images.clone(), ok
    filled = torch.where(hole > 0, _push_pull(images, known), images)
    # Harmonic smoothing inside the hole (a fixed number of steps, whatever the holes' size).
    inside = hole > 0
    for _ in range(smoothing_steps):
        filled = torch.where(inside, _mean3x3(filled), filled)
    if noise:
        residual = images - _mean3x3(images)
        interior = (F.avg_pool2d(known, 3, stride=1, padding=1, count_include_pad=True) > 1 - 1e-6).to(images.dtype)
        count = interior.flatten(1).sum(1).clamp_min(1.0)  # (N,) pixels whose whole 3x3 is known
        variance = (residual.pow(2) * interior).flatten(2).sum(2) / count[:, None]  # (N, K)
        # The residual of i.i.d. noise after subtracting a 3x3 mean that includes the pixel has
        # variance 8/9 of the noise's.
        std = (variance * 9.0 / 8.0).sqrt()
        grain = torch.randn(images.shape, generator=generator, dtype=images.dtype, device="cpu").to(images.device)
        filled = filled + hole * grain * std[:, :, None, None]
    filled = torch.where(hole > 0, filled, images)
    filled = torch.where(ok[:, None, None, None], filled, images)
    return filled, ok


def class_masks(masks: Tensor) -> Tensor:
    """``(B, C, H, W)`` per-class masks or box masks -> bool, True where a pixel is object of that
    class: value > 0.5 and not the ignore value 255."""
    return (masks > 0.5) & (masks != IGNORE_VALUE)


def object_masks(masks: Tensor) -> Tensor:
    """``(B, C, H, W)`` per-class masks -> ``(B, H, W)`` union of every class's object, in {0, 1}
    (255 = ignore is never object)."""
    return class_masks(masks).any(dim=1).to(masks.dtype)


def dilate(masks: Tensor, pixels: int) -> Tensor:
    """Binary dilation of ``(N, H, W)`` masks by ``pixels`` (square structuring element)."""
    if pixels <= 0:
        return masks
    return F.max_pool2d(masks[:, None].float(), 2 * pixels + 1, stride=1, padding=pixels)[:, 0].to(masks.dtype)


def object_holes(masks: Tensor, margin: int = 1, ignore_margin: int = 4) -> Tensor:
    """The region a context-only image removes: ``(B, H, W)`` in {0, 1}.

    The object (:func:`object_masks`), with the ignore (255) pixels within ``ignore_margin``
    pixels of it (VOC draws a 255 band around every object: left in place it would keep the
    object's outline), dilated by ``margin`` pixels so an anti-aliased or blurred edge goes too.
    """
    objects = object_masks(masks) > 0.5
    ignore = (masks == IGNORE_VALUE).any(dim=1)
    near = ignore & (dilate(objects.float(), ignore_margin) > 0.5)
    return dilate((objects | near).to(masks.dtype), margin)


@dataclass
class Counterfactuals:
    """Counterfactual images built from the supervised images of a batch.

    Attributes:
        images: ``(S, 3, H, W)`` the new images (``S`` may be 0).
        source: ``(S,)`` index in the batch of the image each one came from (its object for a
            swap, its context for a context-only image, the image itself for a counterpart).
        partner: ``(S,)`` index of the image whose context a swap used (``source`` otherwise).
        labels: ``(S, C)`` multi-hot: the classes whose pixels a swap pasted; for a context-only
            image the classes whose objects were erased (its target is "none of them"); for a
            counterpart the source's labels.
        counts: what was skipped and why (``empty_mask``, ``no_context``, ``no_partner``) and how
            many swaps had to use a context of the object's own class (``same_class_partner``).
    """

    images: Tensor
    source: Tensor
    partner: Tensor
    labels: Tensor
    counts: dict[str, int] = field(default_factory=dict)


def _multi_hot(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    if labels.dim() == 1:
        return F.one_hot(labels.long(), num_classes).to(dtype)
    return labels.to(dtype)


def _usable(masks: Tensor, supervised: Tensor | None) -> tuple[Tensor, int]:
    """Which images may be used (supervised, with a non-empty object) and how many supervised
    images had an empty one."""
    chosen = torch.ones(masks.shape[0], dtype=torch.bool, device=masks.device) if supervised is None \
        else supervised.to(device=masks.device, dtype=torch.bool)
    nonempty = class_masks(masks).flatten(1).any(1)
    return chosen & nonempty, int((chosen & ~nonempty).sum())


def _check_masks(images: Tensor, masks: Tensor) -> None:
    if masks.dim() != 4 or masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks must be (B, C, H, W) with B, H, W of images {tuple(images.shape)}, got {tuple(masks.shape)}")


def _empty(images: Tensor, num_classes: int, counts: dict[str, int]) -> Counterfactuals:
    index = torch.zeros(0, dtype=torch.long, device=images.device)
    return Counterfactuals(images.new_zeros((0, *images.shape[1:])), index, index,
                           images.new_zeros((0, num_classes)), counts)


def context_only(
    images: Tensor,
    masks: Tensor,
    labels: Tensor,
    supervised: Tensor | None = None,
    *,
    margin: int = 1,
    ignore_margin: int = 4,
    smoothing_steps: int = 8,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> Counterfactuals:
    """The supervised images with their objects removed and the holes filled from the context.

    Args:
        images: ``(B, 3, H, W)`` normalised images.
        masks: ``(B, C, H, W)`` per-class object masks or box masks in [0, 1], 255 = ignore (only
            the rows of ``supervised`` are read).
        labels: ``(B, C)`` multi-hot (single-label: one-hot) or ``(B,)`` indices.
        supervised: ``(B,)`` bool, images whose masks may be used; default all.
        margin, ignore_margin: see :func:`object_holes`.
        smoothing_steps, noise, generator: see :func:`fill_from_context`.

    Returns:
        :class:`Counterfactuals` with ``labels`` = the erased classes (those with object pixels).
    """
    _check_masks(images, masks)
    usable, empty = _usable(masks, supervised)
    index = usable.nonzero().flatten()
    counts = {"empty_mask": empty, "no_context": 0}
    if index.numel() == 0:
        return _empty(images, masks.shape[1], counts)
    holes = object_holes(masks[index], margin, ignore_margin)
    filled, ok = fill_from_context(images[index], holes, smoothing_steps=smoothing_steps, noise=noise,
                                   generator=generator)
    counts["no_context"] = int((~ok).sum())
    erased = class_masks(masks[index]).flatten(2).any(2).to(images.dtype)
    return Counterfactuals(filled[ok], index[ok], index[ok], erased[ok], counts)


def draw_partners(labels: Tensor, partners: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, dict[str, int]]:
    """Up to ``partners`` distinct partners for each of ``n`` images, another class's first.

    Args:
        labels: ``(n, C)`` multi-hot of the candidates (each row one source and one candidate).
        partners: partners per source (>= 1).
        generator: for the random choice (drawn on the CPU).

    Returns:
        ``choice`` ``(n, k)`` long candidate rows (``k = min(partners, n - 1)``), ``valid`` ``(n, k)``
        bool, and counts: ``no_partner`` (sources with no other candidate) and
        ``same_class_partner`` (sources whose partners had to share a class with them).
    """
    if partners < 1:
        raise ValueError(f"partners must be >= 1, got {partners}")
    n = labels.shape[0]
    device = labels.device
    binary = (labels > 0.5).float()
    other = ~torch.eye(n, dtype=torch.bool, device=device)
    different = other & ((binary @ binary.T) == 0)
    has_different = different.any(1)
    allowed = torch.where(has_different[:, None], different, other)
    k = min(partners, max(n - 1, 0))
    counts = {"no_partner": int((~other.any(1)).sum()) if n else 0,
              "same_class_partner": int((~has_different & other.any(1)).sum())}
    if k == 0:
        empty = torch.zeros(n, 0, dtype=torch.long, device=device)
        return empty, empty.bool(), counts
    keys = torch.rand((n, n), generator=generator).to(device)
    keys = torch.where(allowed, keys, torch.full_like(keys, -1.0))
    values, choice = keys.topk(k, dim=1)
    return choice, values >= 0, counts


def context_swap(
    images: Tensor,
    masks: Tensor,
    labels: Tensor,
    supervised: Tensor | None = None,
    *,
    paste_masks: Tensor | None = None,
    contexts: Counterfactuals | None = None,
    partners: int = 1,
    margin: int = 1,
    ignore_margin: int = 4,
    smoothing_steps: int = 8,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> Counterfactuals:
    """Each supervised image's object pasted onto other supervised images' contexts.

    The context is the partner image with its own object removed and filled
    (:func:`context_only`), so the result holds one object on a background that belongs to
    another image. Partners are drawn at random among the other usable supervised images whose
    labels share no class with the source's (a context of another class, wherever the batch has
    one; otherwise any other image, counted as ``same_class_partner``). The object keeps its
    position. The swap is labelled with exactly the classes whose pixels it pastes (a class whose
    object a crop removed, or whose box the paste mask misses, is not claimed).

    Args:
        images: ``(B, 3, H, W)`` normalised images.
        masks: ``(B, C, H, W)`` per-class masks or box masks, 255 = ignore (read on ``supervised`` rows).
        labels: ``(B, C)`` multi-hot (single-label: one-hot) or ``(B,)`` indices.
        supervised: ``(B,)`` bool; default all.
        paste_masks: ``(B, H, W)`` the pixels to paste, when they should differ from the masks'
            union (e.g. GrabCut inside boxes, :mod:`gainet.data.grabcut`); only their pixels inside
            a class's mask or box are pasted. The contexts are still filled over the whole mask/box.
        contexts: the batch's :func:`context_only` result, to reuse instead of recomputing it.
        partners: contexts per object: each object is pasted onto up to this many distinct
            partners (another class's first), one image each.
        margin, ignore_margin, smoothing_steps, noise, generator: for the contexts (:func:`context_only`).

    Returns:
        :class:`Counterfactuals` with ``labels`` = the pasted classes, ``source`` and ``partner``.
    """
    _check_masks(images, masks)
    num_classes = masks.shape[1]
    labels = _multi_hot(labels, num_classes, images.dtype)
    if contexts is None:
        contexts = context_only(images, masks, labels, supervised, margin=margin, ignore_margin=ignore_margin,
                                smoothing_steps=smoothing_steps, noise=noise, generator=generator)
    counts = {"empty_mask": contexts.counts["empty_mask"], "no_context": contexts.counts["no_context"],
              "no_partner": 0, "same_class_partner": 0}
    if partners < 1:
        raise ValueError(f"partners must be >= 1, got {partners}")
    pool = contexts.source  # (n,) images with a usable mask and a fillable context
    per_class = class_masks(masks[pool])  # (n, C, H, W)
    if paste_masks is not None:
        if paste_masks.shape != (images.shape[0], *images.shape[-2:]):
            raise ValueError(f"paste_masks must be (B, H, W) = {(images.shape[0], *images.shape[-2:])}, "
                             f"got {tuple(paste_masks.shape)}")
        per_class = per_class & (paste_masks[pool] > 0.5)[:, None]
    paste = per_class.any(1)  # (n, H, W)
    pasted = per_class.flatten(2).any(2)  # (n, C) the classes a swap of this source carries
    has_paste = paste.flatten(1).any(1)
    counts["empty_mask"] += int((~has_paste).sum())
    choice, valid, drawn = draw_partners(labels[pool], partners, generator)
    counts["no_partner"] = drawn["no_partner"]
    counts["same_class_partner"] = drawn["same_class_partner"]
    valid = valid & has_paste[:, None]
    rows, slots = valid.nonzero(as_tuple=True)  # row-major: each source's partners together
    if rows.numel() == 0:
        return _empty(images, num_classes, counts)
    partner_rows = choice[rows, slots]
    mask = paste[rows][:, None].to(images.dtype)
    out = mask * images[pool[rows]] + (1.0 - mask) * contexts.images[partner_rows]
    return Counterfactuals(out, pool[rows], pool[partner_rows], pasted[rows].to(images.dtype), counts)


def masked_counterpart(
    images: Tensor,
    masks: Tensor,
    labels: Tensor,
    supervised: Tensor | None = None,
    *,
    margin: int = 1,
    generator: torch.Generator | None = None,
) -> Counterfactuals:
    """ActDiff's counterpart (Viviano et al., ICLR 2021): each supervised image with the pixels
    outside its (dilated) object randomly permuted among themselves, so the context keeps its
    colours but loses its structure, and the object stays in place. Needs no partner.

    Args:
        images: ``(B, 3, H, W)``; masks: ``(B, C, H, W)`` (255 = ignore, never object);
        labels: ``(B, C)`` or ``(B,)``; supervised: ``(B,)`` bool, default all.
        margin: dilation of the object before the outside is shuffled.
        generator: for the permutation (drawn on the CPU).

    Returns:
        :class:`Counterfactuals` with ``labels`` = the source's labels. An image whose object
        covers it whole has nothing to shuffle: skipped, counted as ``no_context``.
    """
    _check_masks(images, masks)
    num_classes = masks.shape[1]
    labels = _multi_hot(labels, num_classes, images.dtype)
    usable, empty = _usable(masks, supervised)
    index = usable.nonzero().flatten()
    counts = {"empty_mask": empty, "no_context": 0}
    if index.numel() == 0:
        return _empty(images, num_classes, counts)
    inside = dilate(object_masks(masks[index]), margin).flatten(1) > 0.5  # (n, HW)
    ok = ~inside.all(1)
    counts["no_context"] = int((~ok).sum())
    index, inside = index[ok], inside[ok]
    if index.numel() == 0:
        return _empty(images, num_classes, counts)
    n, pixels = inside.shape
    # float64 keys: distinct for every pixel of any image size, whatever the images' dtype.
    raster = torch.arange(pixels, device=images.device, dtype=torch.float64).expand(n, pixels) / pixels
    # Outside pixels first in a random order; inside pixels after them in raster order, so that
    # sorting these keys against the raster-ordered positions maps inside pixels to themselves.
    keys = torch.rand((n, pixels), generator=generator, dtype=torch.float64).to(images.device)
    keys = torch.where(inside, 2.0 + raster, keys)
    values_from = keys.argsort(dim=1)
    positions = (inside.double() * 2.0 + raster).argsort(dim=1)
    flat = images[index].flatten(2)  # (n, 3, HW)
    gathered = flat.gather(2, values_from[:, None].expand_as(flat))
    out = torch.empty_like(flat).scatter_(2, positions[:, None].expand_as(flat), gathered)
    return Counterfactuals(out.view(n, *images.shape[1:]), index, index, labels[index], counts)


def masks_within_boxes(box_masks: Tensor, maps: Tensor, threshold: float = 0.5) -> Tensor:
    """An object mask estimated inside each box from an attention map.

    Inside the box of class ``c`` of image ``b``, ``maps[b, c]`` is min-max normalised over the
    box's pixels and kept where it is ``>= threshold``. Where that leaves nothing (a flat map)
    the whole box is kept.

    Args:
        box_masks: ``(B, C, H, W)`` in {0, 1}.
        maps: ``(B, C, H, W)`` attention maps (any range).
        threshold: in [0, 1].

    Returns:
        ``(B, C, H, W)`` in {0, 1}, a subset of ``box_masks``.
    """
    if maps.shape != box_masks.shape:
        raise ValueError(f"maps {tuple(maps.shape)} must match box_masks {tuple(box_masks.shape)}")
    inside = box_masks > 0.5
    big = torch.finfo(maps.dtype).max
    low = torch.where(inside, maps, big).flatten(2).amin(2)[..., None, None]
    high = torch.where(inside, maps, -big).flatten(2).amax(2)[..., None, None]
    span = (high - low).clamp_min(1e-12)
    kept = inside & ((maps - low) / span >= threshold) & (high - low > 1e-12)
    flat = ~kept.flatten(2).any(2)  # nothing kept: fall back to the box
    kept = torch.where(flat[..., None, None], inside, kept)
    return kept.to(box_masks.dtype)

