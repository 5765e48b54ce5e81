"""One pass over a labelled loader: classification metrics and attention localisation of a GAIN model."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from gainet.core import GAIN
from gainet.evaluation.classification import ClassificationMeter
from gainet.evaluation.localization import AttentionSweep, CoverageMeter

IGNORE_INDEX = 255


def evaluate_gain(
    gain: GAIN,
    loader: DataLoader,
    *,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
    progress: bool = False,
    desc: str = "evaluate",
) -> dict[str, Any]:
    """Evaluate ``gain`` (in eval mode; its mode is restored) on ``loader``'s samples.

    The attention of every ground-truth class is scored against the ground-truth masks of the
    images that have them (``has_masks``): ``cam_miou`` is the best mIoU over background
    thresholds (``cam_threshold``, ``cam_curve``: the whole sweep), ``coverage`` / ``precision`` /
    ``attention_iou`` / ``pointing`` at threshold 0.5, ``box_energy`` where boxes exist.

    Returns:
        flat metrics: ``mAP`` (multi-label) or ``accuracy`` (single-label), ``label_prior`` (what
        the label frequencies alone score on the same metric), the attention metrics above when
        masks exist, ``images``: number of images seen.
    """
    dataset = loader.dataset
    num_classes = len(dataset.classes)
    multi_label = bool(dataset.multi_label)
    was_training = gain.training
    gain.eval()
    classification = ClassificationMeter(num_classes, multi_label)
    sweep = AttentionSweep(num_classes)
    coverage = CoverageMeter(threshold=0.5)
    seen_masks = seen_boxes = images_seen = 0
    try:
        for step, batch in enumerate(tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)):
            if max_batches is not None and step >= max_batches:
                break
            images = batch["image"].to(device)
            labels = batch["labels"]
            scores, pairs, maps = gain.label_attention(images, labels.to(device))
            pairs, maps = pairs.cpu(), maps.cpu()
            classification.update(scores.float().cpu(), labels)
            images_seen += images.shape[0]
            has_masks = batch["has_masks"].bool()
            if not bool(has_masks.any()):
                continue
            batch_size, height, width = images.shape[0], images.shape[-2], images.shape[-1]
            dense = torch.zeros(batch_size, num_classes, height, width)
            dense[pairs[:, 0], pairs[:, 1]] = maps
            sweep.update(dense[has_masks], labels[has_masks], batch["segmentation"][has_masks])
            seen_masks += int(has_masks.sum())
            keep = has_masks[pairs[:, 0]]
            b, c = pairs[keep, 0], pairs[keep, 1]
            has_boxes = batch["has_boxes"].bool()[b]
            box_masks = batch["box_masks"][b, c] if bool(has_boxes.all()) else None
            seen_boxes += int(has_boxes.all()) * int(keep.sum())
            coverage.update(
                maps[keep], batch["masks"][b, c], valid=batch["segmentation"][b] != IGNORE_INDEX, box_masks=box_masks
            )
    finally:
        gain.train(was_training)
    metrics: dict[str, Any] = dict(classification.compute())
    metrics["label_prior"] = classification.label_prior()
    metrics["images"] = images_seen
    if seen_masks:
        swept = sweep.compute()
        metrics["cam_miou"] = float(swept["best_miou"])
        metrics["cam_threshold"] = float(swept["best_threshold"])
        metrics["cam_curve"] = [[float(t), float(m)] for t, m in swept["curve"]]
        located = coverage.compute()
        for key in ("coverage", "precision", "iou", "pointing", "box_energy"):
            if key in located and located[key] is not None:
                metrics["attention_iou" if key == "iou" else key] = float(located[key])
        metrics["coverage_curve"] = located["curve"]
    return metrics
