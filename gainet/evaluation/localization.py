"""How well attention maps localise objects, against pixel ground truth.

Two views, both accumulated over batches:

- :class:`AttentionSweep` turns the maps of an image's ground-truth classes into a segmentation
  (background where no map exceeds a threshold ``t``, else the class of the strongest map) and
  sweeps ``t``, as the "eval-cam" step of the weakly-supervised segmentation literature does
  (PSA / IRN): the mIoU at the best ``t`` measures how well the maps could seed a segmenter.
- :class:`CoverageMeter` scores one map per (image, class) pair against that class's object mask:
  coverage (recall), precision and IoU of the thresholded map, the pointing game and the
  energy-based pointing game (share of the map's mass inside the object's boxes).

Threshold sweeps are done with one histogram per batch (each pixel is binned by how many
thresholds it exceeds), so their cost does not grow with the number of thresholds.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from gainet.evaluation.segmentation import iou_from_confusion, miou_from_confusion, pixel_accuracy_from_confusion


def default_thresholds() -> Tensor:
    """The 19 background thresholds 0.05, 0.10, ..., 0.95."""
    return torch.linspace(0.05, 0.95, 19, dtype=torch.float64)


def _as_thresholds(thresholds: Tensor | Sequence[float]) -> Tensor:
    """Sorted, unique, 1-D float64 thresholds, rounded to 6 decimals so that float32 inputs such as
    ``torch.linspace(0.05, 0.95, 19)`` become the decimals they stand for (0.45, not 0.449999988)
    in reports. Maps are compared with them in float32 (:func:`_num_thresholds_below`)."""
    values = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1).cpu()
    values = torch.round(values * 1e6) / 1e6
    if values.numel() == 0:
        raise ValueError("at least one threshold is needed")
    if torch.isnan(values).any():
        raise ValueError("thresholds must not be NaN")
    return torch.unique(values)  # sorted ascending


def _num_thresholds_below(values: Tensor, thresholds: Tensor) -> Tensor:
    """For each value, how many of the (sorted) thresholds are strictly below it, in ``[0, T]``:
    value ``v`` is above threshold ``thresholds[i]`` exactly when ``i < result``.

    Both sides are compared in float32, so a float32 map value of 0.6 equals the threshold 0.6
    (and is not above it) instead of exceeding the float64 0.6 by rounding."""
    bounds = thresholds.to(device=values.device, dtype=torch.float32)
    return torch.searchsorted(bounds, values.float().contiguous(), right=False)


def _check_no_nan(name: str, values: Tensor) -> None:
    if torch.isnan(values).any():
        raise ValueError(f"{name} contains NaN")


# --------------------------------------------------------------------------------------------
# Segmentation from attention maps, with a background threshold
# --------------------------------------------------------------------------------------------


def _strongest_ground_truth_map(maps: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(peak, label)`` per pixel, both ``(B, H, W)``: the largest map value among the image's
    ground-truth classes (``-inf`` for an image without labels) and its class as a segmentation
    label ``1..C`` (ties go to the lowest class index)."""
    if maps.dim() != 4:
        raise ValueError(f"maps must be (B, C, H, W), got {tuple(maps.shape)}")
    if labels.shape != maps.shape[:2]:
        raise ValueError(f"labels {tuple(labels.shape)} must be (B, C) = {tuple(maps.shape[:2])}")
    _check_no_nan("maps", maps)
    present = (labels > 0).to(maps.device)[:, :, None, None]
    masked = torch.where(present, maps.float(), torch.full_like(maps, -math.inf, dtype=torch.float32))
    label = masked.argmax(dim=1)  # first maximum on ties
    peak = masked.gather(1, label[:, None]).squeeze(1)
    return peak, label + 1


def predict_segmentation(maps: Tensor, labels: Tensor, threshold: float) -> Tensor:
    """Segmentation ``(B, H, W)`` long from attention maps at one background threshold.

    Each pixel takes ``argmax([threshold, maps of the ground-truth classes])``: background (0)
    where every ground-truth map is ``<= threshold`` (ties go to background), else ``1 + c`` for
    the strongest ground-truth class ``c``. Classes not in ``labels`` are never predicted.

    Args:
        maps: ``(B, C, H, W)`` attention maps in [0, 1] (entries of non-ground-truth classes are
            ignored).
        labels: ``(B, C)`` multi-hot image labels.
        threshold: background score ``t``.
    """
    peak, label = _strongest_ground_truth_map(maps, labels)
    above = _num_thresholds_below(peak, _as_thresholds([threshold])) > 0  # the sweep's comparison
    return torch.where(above, label, torch.zeros_like(label))


def sweep_confusion_matrices(
    maps: Tensor,
    labels: Tensor,
    segmentation: Tensor,
    thresholds: Tensor | Sequence[float],
    ignore_index: int | None = 255,
) -> Tensor:
    """One ``(C+1) x (C+1)`` confusion matrix per background threshold, ``(T, C+1, C+1)`` int64.

    ``result[i]`` equals the confusion matrix (rows = ground truth, columns = prediction) of
    :func:`predict_segmentation` at the ``i``-th threshold in ascending order (the thresholds are
    sorted and de-duplicated; maps and thresholds are compared in float32).

    Args:
        maps: ``(B, C, H, W)`` attention maps in [0, 1].
        labels: ``(B, C)`` multi-hot image labels.
        segmentation: ``(B, H, W)`` long, 0 = background, ``k`` = class ``k - 1`` of ``maps``
            (``1..C``), ``ignore_index`` = not counted.
        thresholds: ``T`` background thresholds.
        ignore_index: label to skip, or ``None``.
    """
    thresholds = _as_thresholds(thresholds)
    num_labels = maps.shape[1] + 1
    if segmentation.shape != (maps.shape[0], *maps.shape[2:]):
        raise ValueError(
            f"segmentation {tuple(segmentation.shape)} must be (B, H, W) = "
            f"{(maps.shape[0], *maps.shape[2:])}; resize the maps to the label size first"
        )
    peak, label = _strongest_ground_truth_map(maps, labels)
    target = segmentation.to(maps.device).long()
    if ignore_index is not None:
        keep = target != ignore_index
        peak, label, target = peak[keep], label[keep], target[keep]
    else:
        peak, label, target = peak.reshape(-1), label.reshape(-1), target.reshape(-1)
    bins = thresholds.numel() + 1
    if target.numel() == 0:
        return torch.zeros(bins - 1, num_labels, num_labels, dtype=torch.long)
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= num_labels:
        raise ValueError(f"segmentation label out of range [0, {num_labels}): found {low}..{high}")
    below = _num_thresholds_below(peak, thresholds)  # foreground at threshold i  <=>  i < below
    index = (target * num_labels + label) * bins + below
    histogram = torch.bincount(index, minlength=num_labels * num_labels * bins).reshape(num_labels, num_labels, bins)
    background_up_to = histogram.cpu().cumsum(-1)  # [y, a, i]: pixels of (y, a) that are background at t_i
    total = background_up_to[..., -1:]
    foreground = (total - background_up_to)[..., :-1]  # (K, K, T)
    background = background_up_to[..., :-1].sum(1)  # (K, T)
    matrices = foreground.permute(2, 0, 1).clone()  # (T, K, K)
    matrices[:, :, 0] += background.T
    return matrices


class AttentionSweep:
    """Background-threshold sweep of attention-derived segmentations ("eval-cam"), over batches.

    For each threshold ``t`` in ``thresholds`` it accumulates the ``(C+1) x (C+1)`` confusion
    matrix of :func:`predict_segmentation` against the ground-truth segmentation.

    :meth:`compute` returns ``best_threshold``, ``best_miou`` (mIoU over the ``C + 1`` labels,
    background included, classes absent from ground truth and prediction left out), ``curve``
    (list of ``(t, miou)``, ascending ``t``), ``per_class_iou`` (list of ``C + 1`` floats at the best
    threshold, index 0 = background), ``pixel_accuracy`` and ``confusion`` at the best threshold.
    Ties in mIoU go to the lowest threshold. :attr:`matrices` holds the ``(T, C+1, C+1)`` counts.
    """

    def __init__(
        self,
        num_classes: int,
        thresholds: Tensor | Sequence[float] | None = None,
        ignore_index: int | None = 255,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.thresholds = _as_thresholds(default_thresholds() if thresholds is None else thresholds)
        self.ignore_index = ignore_index
        size = num_classes + 1
        self.matrices = torch.zeros(self.thresholds.numel(), size, size, dtype=torch.long)

    def reset(self) -> None:
        """Zero every matrix."""
        self.matrices.zero_()

    def update(self, maps: Tensor, labels: Tensor, segmentation: Tensor) -> None:
        """Add a batch.

        Args:
            maps: ``(B, C, H, W)`` attention maps in [0, 1] at the label resolution; only the
                image's ground-truth classes are read (the others may be zero).
            labels: ``(B, C)`` multi-hot image labels.
            segmentation: ``(B, H, W)`` long, 0 = background, ``k`` = class ``k`` (``1..C``),
                ``ignore_index`` (255) = not counted.
        """
        if maps.shape[1] != self.num_classes:
            raise ValueError(f"maps have {maps.shape[1]} classes, expected {self.num_classes}")
        self.matrices += sweep_confusion_matrices(
            maps.detach(), labels.detach(), segmentation.detach(), self.thresholds, self.ignore_index
        )

    def compute(self) -> dict[str, Any]:
        """Best threshold, its mIoU and per-class IoU, and the whole mIoU curve."""
        if int(self.matrices[0].sum()) == 0:
            raise RuntimeError("AttentionSweep.compute() called before any counted pixel")
        curve = [(float(t), miou_from_confusion(m)[0]) for t, m in zip(self.thresholds, self.matrices)]
        best = max(range(len(curve)), key=lambda i: (curve[i][1], -i))  # first maximum
        best_matrix = self.matrices[best]
        return {
            "best_threshold": curve[best][0],
            "best_miou": curve[best][1],
            "curve": curve,
            "per_class_iou": iou_from_confusion(best_matrix).tolist(),
            "pixel_accuracy": pixel_accuracy_from_confusion(best_matrix),
            "confusion": best_matrix.tolist(),
        }


# --------------------------------------------------------------------------------------------
# One map per (image, class) pair against that class's object mask
# --------------------------------------------------------------------------------------------


def pair_masks(segmentation: Tensor, pairs: Tensor, ignore_index: int | None = 255) -> tuple[Tensor, Tensor]:
    """Object masks and valid-pixel masks for (image, class) pairs, from a segmentation.

    Args:
        segmentation: ``(B, H, W)`` long, 0 = background, ``k`` = class ``k - 1`` (0-based class
            index ``c`` is label ``c + 1``), ``ignore_index`` = unknown.
        pairs: ``(P, 2)`` long ``(image_index, class_index)`` with 0-based classes, as
            :func:`gainet.core.label_pairs` gives.

    Returns:
        ``(object_masks, valid)``, both ``(P, H, W)``: float {0, 1} where the pixel belongs to the
        pair's class, and bool where the pixel is not ``ignore_index``.
    """
    pairs = pairs.to(segmentation.device).long()
    selected = segmentation[pairs[:, 0]]
    masks = (selected == (pairs[:, 1] + 1)[:, None, None]).float()
    valid = selected != ignore_index if ignore_index is not None else torch.ones_like(selected, dtype=torch.bool)
    return masks, valid


def _check_pair_shapes(maps: Tensor, **others: Tensor | None) -> None:
    if maps.dim() != 3:
        raise ValueError(f"maps must be (P, H, W), got {tuple(maps.shape)}")
    for name, value in others.items():
        if value is not None and value.shape != maps.shape:
            raise ValueError(f"{name} {tuple(value.shape)} must match maps {tuple(maps.shape)}")


def pointing_hits(maps: Tensor, object_masks: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Pointing game (Zhang et al., no tolerance): is each map's maximum on its object?

    The point is the first maximal valid pixel in row-major order. A map whose valid maximum is
    ``<= 0`` (an empty map) points nowhere and misses.

    Args:
        maps: ``(P, H, W)`` attention maps.
        object_masks: ``(P, H, W)`` in {0, 1}.
        valid: ``(P, H, W)`` bool, pixels to consider (default: all).

    Returns:
        ``(hit, counted)``, both ``(P,)`` bool; ``counted`` is False for a map whose object has no
        valid pixel (nothing to point at), and ``hit`` is False there.
    """
    _check_pair_shapes(maps, object_masks=object_masks, valid=valid)
    _check_no_nan("maps", maps)
    on_object = object_masks > 0
    if valid is None:
        valid = torch.ones_like(on_object)
    valid = valid.bool()
    flat = torch.where(valid, maps.float(), torch.full_like(maps, -math.inf, dtype=torch.float32)).flatten(1)
    where = flat.argmax(dim=1)
    peak = flat.gather(1, where[:, None]).squeeze(1)
    counted = (on_object & valid).flatten(1).any(1)
    hit = on_object.flatten(1).gather(1, where[:, None]).squeeze(1) & (peak > 0) & counted
    return hit, counted


def energy_in_boxes(maps: Tensor, box_masks: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Energy-based pointing game (Score-CAM): share of each map's mass inside its box mask.

    Args:
        maps: ``(P, H, W)`` non-negative attention maps.
        box_masks: ``(P, H, W)`` in {0, 1}, 1 inside the object's boxes.
        valid: ``(P, H, W)`` bool, pixels to consider (default: all).

    Returns:
        ``(energy, counted)``, both ``(P,)``: ``sum(map * box) / sum(map)`` over valid pixels in
        [0, 1] (0 for an all-zero map: it puts no energy in the box), and bool, False for a map
        whose box has no valid pixel (energy 0 there).
    """
    _check_pair_shapes(maps, box_masks=box_masks, valid=valid)
    _check_no_nan("maps", maps)
    in_box = (box_masks > 0).float()
    weights = maps.double() if valid is None else maps.double() * valid.double()
    total = weights.flatten(1).sum(1)
    inside = (weights * in_box).flatten(1).sum(1)
    counted = (in_box.bool() if valid is None else in_box.bool() & valid.bool()).flatten(1).any(1)
    energy = torch.where((total > 0) & counted, inside / total.clamp_min(1e-300), torch.zeros_like(total))
    return energy, counted


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


class CoverageMeter:
    """Coverage, precision, IoU, pointing game and box energy of attention maps, over batches.

    Each update brings one map per (image, class) pair with that class's object mask. Pixel metrics
    are micro-averaged: pixel counts are pooled over every map of the dataset before dividing
    (so large objects weigh more); the pointing game and box energy are means over maps.

    :meth:`compute` returns, with ``M = map > threshold`` and ``O`` = object, over valid pixels:

    - ``coverage`` = ``|M & O| / |O|`` (recall of the object; NaN if no object pixel was seen),
    - ``precision`` = ``|M & O| / |M|`` (NaN if no pixel was ever above the threshold),
    - ``iou`` = ``|M & O| / |M | O|``,
    - ``pointing``: share of maps whose maximum lies on the object (:func:`pointing_hits`, maps
      with an empty object left out),
    - ``box_energy``: mean of :func:`energy_in_boxes` over the maps given box masks (NaN if none),
    - ``curve``: list of ``{"threshold", "coverage", "precision", "iou"}`` at ``curve_thresholds``,
    - ``threshold``, ``num_maps``, ``num_pointing_maps``, ``num_box_maps``.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        curve_thresholds: Tensor | Sequence[float] | None = None,
    ) -> None:
        self.threshold = float(_as_thresholds([threshold])[0])
        curve = default_thresholds() if curve_thresholds is None else curve_thresholds
        self.curve_thresholds = _as_thresholds(curve)
        self._thresholds = _as_thresholds(torch.cat([self.curve_thresholds, torch.tensor([self.threshold]).double()]))
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        bins = self._thresholds.numel() + 1
        self._object_histogram = torch.zeros(bins, dtype=torch.long)  # object pixels by #thresholds below
        self._background_histogram = torch.zeros(bins, dtype=torch.long)
        self.num_maps = 0
        self._hits = 0
        self._pointing_maps = 0
        self._energy_sum = 0.0
        self._box_maps = 0

    def update(
        self,
        maps: Tensor,
        object_masks: Tensor,
        valid: Tensor | None = None,
        box_masks: Tensor | None = None,
    ) -> None:
        """Add a batch of maps.

        Args:
            maps: ``(P, H, W)`` attention maps in [0, 1], one per (image, class) pair.
            object_masks: ``(P, H, W)`` in {0, 1}, the pair's object (pixel mask of its class).
            valid: ``(P, H, W)`` bool, pixels to count (e.g. not 255 in VOC); default all.
            box_masks: ``(P, H, W)`` in {0, 1}, 1 inside the class's boxes, for ``box_energy``.
        """
        maps, object_masks = maps.detach(), object_masks.detach().to(maps.device)
        valid = None if valid is None else valid.detach().to(maps.device).bool()
        box_masks = None if box_masks is None else box_masks.detach().to(maps.device)
        _check_pair_shapes(maps, object_masks=object_masks, valid=valid, box_masks=box_masks)
        _check_no_nan("maps", maps)
        on_object = object_masks > 0
        counted = torch.ones_like(on_object) if valid is None else valid
        below = _num_thresholds_below(maps, self._thresholds)
        bins = self._thresholds.numel() + 1
        self._object_histogram += torch.bincount(below[on_object & counted], minlength=bins).cpu()
        self._background_histogram += torch.bincount(below[~on_object & counted], minlength=bins).cpu()
        hit, pointed = pointing_hits(maps, object_masks, valid)
        self._hits += int(hit.sum())
        self._pointing_maps += int(pointed.sum())
        if box_masks is not None:
            energy, boxed = energy_in_boxes(maps, box_masks, valid)
            self._energy_sum += float(energy[boxed].sum())
            self._box_maps += int(boxed.sum())
        self.num_maps += maps.shape[0]

    def _pixel_metrics(self, threshold: float) -> dict[str, float]:
        index = int(torch.searchsorted(self._thresholds, torch.tensor([threshold], dtype=torch.float64)))
        # pixels above thresholds[index] are those whose bin (#thresholds below them) exceeds index
        true_positive = int(self._object_histogram[index + 1:].sum())
        false_positive = int(self._background_histogram[index + 1:].sum())
        object_pixels = int(self._object_histogram.sum())
        return {
            "threshold": threshold,
            "coverage": _ratio(true_positive, object_pixels),
            "precision": _ratio(true_positive, true_positive + false_positive),
            "iou": _ratio(true_positive, object_pixels + false_positive),
        }

    def compute(self) -> dict[str, Any]:
        """Dataset-level metrics (see the class docstring)."""
        if self.num_maps == 0:
            raise RuntimeError("CoverageMeter.compute() called before any update()")
        result: dict[str, Any] = self._pixel_metrics(self.threshold)
        result.update(
            pointing=_ratio(self._hits, self._pointing_maps),
            box_energy=_ratio(self._energy_sum, self._box_maps),
            curve=[self._pixel_metrics(float(t)) for t in self.curve_thresholds],
            num_maps=self.num_maps,
            num_pointing_maps=self._pointing_maps,
            num_box_maps=self._box_maps,
        )
        return result


# --------------------------------------------------------------------------------------------
# Class sensitivity: what object blobs alone would score
# --------------------------------------------------------------------------------------------


def class_agnostic_maps(maps: Tensor) -> Tensor:
    """The class-agnostic baseline of a model's attention, ``(B, H, W)`` in [0, 1].

    The mean of all ``C`` class maps of each image (``maps`` ``(B, C, H, W)``, each in [0, 1]),
    min-max normalised again per image so that thresholds mean the same as for a class map (an
    all-constant mean becomes zero). A map that merely marks "some object" scores as well as
    this one; a class map counts as class evidence only where it beats it.
    """
    if maps.dim() != 4:
        raise ValueError(f"maps must be (B, C, H, W), got {tuple(maps.shape)}")
    _check_no_nan("maps", maps)
    mean = maps.float().mean(dim=1)
    flat = mean.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    high = flat.max(dim=1).values[:, None, None]
    span = high - low
    return torch.where(span > 0, (mean - low) / span.clamp_min(1e-12), torch.zeros_like(mean))


class RegionCoverageMeter:
    """Share of a region's pixels where attention exceeds a threshold, pooled over batches, for
    any number of named regions.

    ``update(name, maps, regions, valid)`` adds ``|M & R & V|`` and ``|R & V|`` to the counts of
    ``name`` (``M = maps > threshold``, compared in float32 as :class:`CoverageMeter` does);
    :meth:`compute` returns ``{name: hits / pixels}`` (NaN for a region never seen). Used for the
    part / body-minus-part coverage of the ``parts`` world and for the wrong-class maps' overlap
    with the objects.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = float(_as_thresholds([threshold])[0])
        self._thresholds = _as_thresholds([self.threshold])
        self.reset()

    def reset(self) -> None:
        """Forget every batch."""
        self._hits: dict[str, int] = {}
        self._pixels: dict[str, int] = {}

    def update(self, name: str, maps: Tensor, regions: Tensor, valid: Tensor | None = None) -> None:
        """Add a batch for region ``name``.

        Args:
            maps: ``(P, H, W)`` attention maps in [0, 1].
            regions: ``(P, H, W)`` in {0, 1}, the region each map is scored on.
            valid: ``(P, H, W)`` bool, pixels to count (default all).
        """
        maps = maps.detach()
        regions = regions.detach().to(maps.device) > 0
        valid = None if valid is None else valid.detach().to(maps.device).bool()
        _check_pair_shapes(maps, regions=regions, valid=valid)
        _check_no_nan("maps", maps)
        if valid is not None:
            regions = regions & valid
        above = _num_thresholds_below(maps, self._thresholds) > 0
        self._hits[name] = self._hits.get(name, 0) + int((above & regions).sum())
        self._pixels[name] = self._pixels.get(name, 0) + int(regions.sum())

    def compute(self) -> dict[str, float]:
        """``{name: share of the region's pixels above the threshold}``."""
        return {name: _ratio(self._hits[name], self._pixels[name]) for name in self._hits}
