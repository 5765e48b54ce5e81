"""Counterfactual images from a few masks or boxes: the object without its context, the context
without its object.

"Right for the right reasons" supervision (docs/bias_study.md): a classifier that reads the
background is corrected by constraining its *output* on images where object and context are
pulled apart, not by constraining its attention map.

- :func:`fill_from_context`: a hole filled from the surrounding pixels (onion-peel propagation
  from the hole's boundary, then diffusion, plus noise matched to the context's own pixel noise),
  so the filled region is not a flat patch a network could learn to recognise.
- :func:`context_only`: the object of each supervised image removed and its hole filled: "the
  water without the boat", whose target is "none of the classes".
- :func:`context_swap`: the object of each supervised image pasted onto the filled context of
  another supervised image (preferably one of another class), labelled with the object's class.
- :func:`masks_within_boxes`: an object mask estimated inside each box from an attention map, so
  that a box-only swap need not carry the source context's box corners along.

Plain PyTorch, tensors in and out; images live in the network's (normalised) input space. Bad
input is skipped and counted (``counts``), never raised: an empty mask (e.g. after a crop), a mask
covering the whole image (no context to fill from), a batch without a second image to swap with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


def _box_sum(x: Tensor) -> Tensor:
    """3x3 neighbourhood sum of ``(N, K, H, W)`` with zero padding."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True) * 9.0


def _fill_region(filled: Tensor, known: Tensor, hole: Tensor, smoothing_steps: int) -> Tensor:
    """Onion peel then Jacobi smoothing of ``filled`` ``(1, K, h, w)`` (zeros in the hole)."""
    weight = known.clone()
    # Each ring closes at least one pixel layer; h + w rings close any hole with a known pixel.
    for _ in range(filled.shape[-2] + filled.shape[-1]):
        count = _box_sum(weight)
        newly = (weight == 0) & (count > 0)
        if not bool(newly.any()):
            break
        filled = torch.where(newly, _box_sum(filled * weight) / count.clamp_min(1e-12), filled)
        weight = torch.where(newly, torch.ones_like(weight), weight)
    # Harmonic smoothing inside the hole: replicate padding keeps edge pixels' means unbiased.
    for _ in range(smoothing_steps):
        mean = F.avg_pool2d(F.pad(filled, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        filled = torch.where(hole > 0, mean, filled)
    return filled


def fill_from_context(
    images: Tensor,
    holes: Tensor,
    *,
    smoothing_steps: int = 20,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Fill the ``holes`` of ``images`` from the surrounding pixels.

    1. Onion peel: hole pixels next to known ones take the mean of their known 3x3 neighbours,
       ring by ring from the boundary inwards, until the hole is closed.
    2. Diffusion: ``smoothing_steps`` Jacobi steps of the Laplace equation inside the hole (the
       known pixels are the boundary condition), which smooths the rings into a harmonic fill.
    3. Noise: Gaussian noise inside the hole with the per-channel standard deviation of the known
       pixels' high-frequency residual (pixel minus its 3x3 mean), so the fill has the context's
       grain instead of being suspiciously smooth.

    Args:
        images: ``(N, K, H, W)`` (any channels, any value range).
        holes: ``(N, H, W)``; pixels ``> 0.5`` are replaced.
        smoothing_steps: Jacobi steps after the onion peel.
        noise: add grain (step 3).
        generator: for the noise.

    Returns:
        ``filled`` ``(N, K, H, W)`` (known pixels unchanged) and ``ok`` ``(N,)`` bool: False where
        the image had no known pixel to fill from (that image is returned unchanged).
    """
    if holes.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"holes must be (N, H, W) = {(images.shape[0], *images.shape[-2:])}, got {tuple(holes.shape)}")
    hole = (holes > 0.5).to(images.dtype)[:, None]  # (N, 1, H, W)
    known = 1.0 - hole
    ok = known.flatten(1).sum(1) > 0
    filled = images * known
    # Each image is filled on the crop around its hole (1 pixel of context on every side): the
    # same result as on the whole image, since a step only reads a hole pixel's 3x3 neighbours.
    for n in torch.nonzero(ok & (hole.flatten(1).sum(1) > 0)).flatten().tolist():
        rows = torch.nonzero(hole[n, 0].amax(1) > 0).flatten()
        cols = torch.nonzero(hole[n, 0].amax(0) > 0).flatten()
        top, bottom = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, images.shape[-2])
        left, right = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, images.shape[-1])
        region = (slice(n, n + 1), slice(None), slice(top, bottom), slice(left, right))
        filled[region] = _fill_region(filled[region], known[region], hole[region], smoothing_steps)
    if noise:
        residual = images - F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        interior = (_box_sum(known) > 8.5).to(images.dtype)  # whole 3x3 neighbourhood known
        count = interior.flatten(1).sum(1).clamp_min(1.0)  # (N,)
        variance = (residual.pow(2) * interior).flatten(2).sum(2) / count[:, None]  # (N, K)
        # The residual of i.i.d. noise after subtracting a 3x3 mean that includes the pixel has
        # variance 8/9 of the noise's.
        std = (variance * 9.0 / 8.0).sqrt()
        grain = torch.randn(images.shape, generator=generator, dtype=images.dtype, device="cpu").to(images.device)
        filled = filled + hole * grain * std[:, :, None, None]
    filled = torch.where(hole > 0, filled, images)
    filled = torch.where(ok[:, None, None, None], filled, images)
    return filled, ok


def object_masks(masks: Tensor) -> Tensor:
    """``(B, C, H, W)`` per-class masks -> ``(B, H, W)`` union of every class's object, in {0, 1}."""
    return (masks.amax(dim=1) > 0.5).to(masks.dtype)


def dilate(masks: Tensor, pixels: int) -> Tensor:
    """Binary dilation of ``(N, H, W)`` masks by ``pixels`` (square structuring element)."""
    if pixels <= 0:
        return masks
    return F.max_pool2d(masks[:, None].float(), 2 * pixels + 1, stride=1, padding=pixels)[:, 0].to(masks.dtype)


@dataclass
class Counterfactuals:
    """Counterfactual images built from the supervised images of a batch.

    Attributes:
        images: ``(S, 3, H, W)`` the new images (``S`` may be 0).
        source: ``(S,)`` index in the batch of the image each one came from (its object for a
            swap, its context for a context-only image).
        partner: ``(S,)`` index of the image whose context a swap used (``source`` for
            context-only images).
        labels: ``(S, C)`` targets: the object's labels for a swap; for a context-only image the
            classes whose objects were erased (its target is "none of them").
        counts: what was skipped and why (``empty_mask``, ``no_context``, ``no_partner``) and how
            many swaps had to use a context of the object's own class (``same_class_partner``).
    """

    images: Tensor
    source: Tensor
    partner: Tensor
    labels: Tensor
    counts: dict[str, int] = field(default_factory=dict)


def _usable(masks: Tensor, supervised: Tensor | None) -> tuple[Tensor, Tensor, int]:
    """Object masks ``(B, H, W)``, which supervised images have a non-empty one, and how many
    supervised images had an empty mask."""
    objects = object_masks(masks)
    chosen = torch.ones(masks.shape[0], dtype=torch.bool, device=masks.device) if supervised is None \
        else supervised.to(device=masks.device, dtype=torch.bool)
    nonempty = objects.flatten(1).sum(1) > 0
    return objects, chosen & nonempty, int((chosen & ~nonempty).sum())


def context_only(
    images: Tensor,
    masks: Tensor,
    labels: Tensor,
    supervised: Tensor | None = None,
    *,
    margin: int = 1,
    smoothing_steps: int = 20,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> Counterfactuals:
    """The supervised images with their objects removed and the holes filled from the context.

    Args:
        images: ``(B, 3, H, W)`` normalised images.
        masks: ``(B, C, H, W)`` per-class object masks or box masks in [0, 1] (only the rows of
            ``supervised`` are read; a pixel belongs to the object when any class's mask > 0.5).
        labels: ``(B, C)`` multi-hot (single-label: one-hot).
        supervised: ``(B,)`` bool, images whose masks may be used; default all.
        margin: the hole is the object dilated by this many pixels, so its anti-aliased or
            blurred edge goes too.
        smoothing_steps, noise, generator: see :func:`fill_from_context`.

    Returns:
        :class:`Counterfactuals` with ``labels`` = the erased classes (the image's labels).
    """
    if masks.dim() != 4 or masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks must be (B, C, H, W) with B, H, W of images {tuple(images.shape)}, got {tuple(masks.shape)}")
    objects, usable, empty = _usable(masks, supervised)
    index = usable.nonzero().flatten()
    counts = {"empty_mask": empty, "no_context": 0}
    if index.numel() == 0:
        empty_images = images.new_zeros((0, *images.shape[1:]))
        return Counterfactuals(empty_images, index, index, labels.new_zeros((0, labels.shape[1])), counts)
    holes = dilate(objects[index], margin)
    filled, ok = fill_from_context(images[index], holes, smoothing_steps=smoothing_steps, noise=noise,
                                   generator=generator)
    counts["no_context"] = int((~ok).sum())
    index, filled = index[ok], filled[ok]
    return Counterfactuals(filled, index, index, labels[index].to(images.dtype), counts)


def context_swap(
    images: Tensor,
    masks: Tensor,
    labels: Tensor,
    supervised: Tensor | None = None,
    *,
    object_masks_override: Tensor | None = None,
    contexts: Counterfactuals | None = None,
    partners: int = 1,
    margin: int = 1,
    smoothing_steps: int = 20,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> Counterfactuals:
    """Each supervised image's object pasted onto other supervised images' contexts.

    The context is the partner image with its own object removed and filled
    (:func:`context_only`), so the result holds one object, of the source's classes, on a
    background that belongs to another image. The partner is drawn at random among the other
    usable supervised images whose labels share no class with the source's (a context of
    another class, wherever the batch has one; otherwise any other image, counted as
    ``same_class_partner``). The object keeps its position.

    Args:
        images: ``(B, 3, H, W)`` normalised images.
        masks: ``(B, C, H, W)`` per-class masks or box masks (read on ``supervised`` rows).
        labels: ``(B, C)`` multi-hot (single-label: one-hot).
        supervised: ``(B,)`` bool; default all.
        object_masks_override: ``(B, H, W)`` the pixels to paste, when they should differ from the
            masks' union (e.g. :func:`masks_within_boxes` inside boxes); the contexts are still
            filled over the whole mask/box.
        contexts: the batch's :func:`context_only` result, to reuse instead of recomputing it.
        partners: contexts per object: each object is pasted onto up to this many distinct
            partners (all of another class where the batch has that many), one image each. More
            than 1 shows the same object on several contexts in one step, so only the object
            explains the label; the extra images cost one forward/backward each.
        margin, smoothing_steps, noise, generator: for the contexts (:func:`context_only`).

    Returns:
        :class:`Counterfactuals` with ``labels`` = the source's labels, ``source`` and ``partner``.
    """
    if contexts is None:
        contexts = context_only(images, masks, labels, supervised, margin=margin, smoothing_steps=smoothing_steps,
                                noise=noise, generator=generator)
    paste = object_masks(masks) if object_masks_override is None else (object_masks_override > 0.5).to(images.dtype)
    counts = {"empty_mask": contexts.counts["empty_mask"], "no_context": contexts.counts["no_context"],
              "no_partner": 0, "same_class_partner": 0}
    pool = contexts.source.tolist()  # images with a usable mask and a fillable context
    if partners < 1:
        raise ValueError(f"partners must be >= 1, got {partners}")
    out_images, sources, partner_index = [], [], []
    binary = labels > 0.5
    for position, i in enumerate(pool):
        if not bool(paste[i].any()):
            counts["empty_mask"] += 1
            continue
        others = [k for k in range(len(pool)) if k != position]
        if not others:
            counts["no_partner"] += 1
            continue
        different = [k for k in others if not bool((binary[i] & binary[pool[k]]).any())]
        if not different:
            counts["same_class_partner"] += 1
        choices = different or others
        if partners == 1:  # one randint draw, as before partners existed: earlier studies stay reproducible
            picked = [choices[int(torch.randint(len(choices), (1,), generator=generator))]]
        else:
            picked = [choices[j] for j in torch.randperm(len(choices), generator=generator)[:partners].tolist()]
        mask = paste[i][None]
        for k in picked:
            out_images.append(mask * images[i] + (1.0 - mask) * contexts.images[k])
            sources.append(i)
            partner_index.append(pool[k])
    device = images.device
    if not out_images:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return Counterfactuals(images.new_zeros((0, *images.shape[1:])), empty, empty,
                               labels.new_zeros((0, labels.shape[1])), counts)
    source = torch.tensor(sources, dtype=torch.long, device=device)
    return Counterfactuals(torch.stack(out_images), source, torch.tensor(partner_index, dtype=torch.long, device=device),
                           labels[source].to(images.dtype), counts)


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

