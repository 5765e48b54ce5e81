"""One pass over a labelled loader: classification metrics and attention localisation of a GAIN model."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from gainet.core import GAIN
from gainet.evaluation.classification import ClassificationMeter
from gainet.evaluation.localization import AttentionSweep, CoverageMeter
from gainet.progress import progress_bar

IGNORE_INDEX = 255
SKIP_EXAMPLES = 5  # skipped files named in the results (all are counted)


def check_same_classes(model: Sequence[str], data: Sequence[str], where: str) -> None:
    """Raise a one-line ``ValueError`` starting with ``where`` unless the model's class list
    (a checkpoint's) equals the data's, order included: output ``k`` is scored against label
    ``k``, so the same classes in another order would be scored silently wrong.
    """
    model, data = [str(c) for c in model], [str(c) for c in data]
    if model == data:
        return
    if sorted(model) == sorted(data):
        index = next(i for i, (m, d) in enumerate(zip(model, data)) if m != d)
        raise ValueError(f"{where}: the model's classes are the dataset's in another order (position {index + 1}: model "
                         f"{model[index]!r}, data {data[index]!r}); evaluate with the class list it was trained on")
    only_model = [c for c in model if c not in data]
    only_data = [c for c in data if c not in model]
    detail = "; ".join(part for part in (
        f"only the model has {', '.join(only_model)}" if only_model else "",
        f"only the data has {', '.join(only_data)}" if only_data else "",
    ) if part) or "same names, repeated differently"
    raise ValueError(f"{where}: the model's {len(model)} classes differ from the dataset's {len(data)}: {detail}")


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
        flat metrics: ``mAP`` (multi-label; on a dataset with ``ap_definition == "voc"`` also
        ``mAP_voc``, the VOC devkit's AP, and ``ap_definition``) or ``accuracy`` (single-label),
        ``label_prior`` (what the label frequencies alone score on the same metric), the attention
        metrics above when masks exist, ``images``: number of images seen, ``skipped``: number of
        items the dataset dropped under ``on_error="skip"`` (and ``skipped_files``: the first few,
        ``"file: reason"``, when there are any).
    """
    dataset = loader.dataset
    num_classes = len(dataset.classes)
    multi_label = bool(dataset.multi_label)
    was_training = gain.training
    gain.eval()
    # Datasets whose benchmark defines its own AP say so (VOCDataset.ap_definition = "voc"): report
    # that one too (mAP_voc), beside the torchmetrics mAP that model selection uses everywhere.
    voc_ap = getattr(dataset, "ap_definition", None) == "voc"
    classification = ClassificationMeter(num_classes, multi_label, voc_ap=voc_ap)
    sweep = AttentionSweep(num_classes)
    coverage = CoverageMeter(threshold=0.5)
    seen_masks = images_seen = 0
    try:
        for step, batch in enumerate(progress_bar(loader, desc=desc, leave=False, enabled=progress, dynamic_ncols=True)):
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
            # Box energy per map, over the images that have boxes (an empty box mask is not counted),
            # so that one image without boxes does not drop the rest of its batch.
            has_boxes = batch["has_boxes"].bool()[b]
            box_masks = batch["box_masks"][b, c] * has_boxes.view(-1, 1, 1).to(batch["box_masks"].dtype)
            coverage.update(
                maps[keep], batch["masks"][b, c], valid=batch["segmentation"][b] != IGNORE_INDEX, box_masks=box_masks
            )
    finally:
        gain.train(was_training)
    metrics: dict[str, Any] = dict(classification.compute())
    metrics["label_prior"] = classification.label_prior()
    metrics["images"] = images_seen
    # Items the dataset dropped under on_error="skip" ((file, reason) in its ``skipped``): the
    # numbers above cover the rest, so the results say how many and which.
    skipped = list(getattr(dataset, "skipped", None) or [])
    metrics["skipped"] = len(skipped)
    if skipped:
        metrics["skipped_files"] = [f"{file}: {reason}" for file, reason in skipped[:SKIP_EXAMPLES]]
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
