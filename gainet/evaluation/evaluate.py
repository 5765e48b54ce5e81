"""One pass over a labelled loader: classification metrics and attention localisation of a GAIN model,
with the class-sensitive checks that tell class evidence from object blobs."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import DataLoader

from gainet.core import GAIN, label_pairs
from gainet.evaluation.classification import ClassificationMeter
from gainet.evaluation.faithfulness import faithfulness_summary
from gainet.evaluation.localization import AttentionSweep, CoverageMeter, RegionCoverageMeter, class_agnostic_maps
from gainet.io.progress import progress_bar

IGNORE_INDEX = 255
SKIP_EXAMPLES = 5  # skipped files named in the results (all are counted)
# Prefix of the class-agnostic baseline's metrics (the mean of all class maps of the same model).
AGNOSTIC = "agnostic_"
AGNOSTIC_LABEL = "class-agnostic"
# Localisation metrics that both the class maps and the class-agnostic baseline get.
SHARED_ATTENTION_METRICS = ("cam_miou", "cam_threshold", "coverage", "precision", "attention_iou", "pointing",
                            "box_energy", "part_coverage", "body_coverage", "wrong_class_coverage")


def _part_masks(dataset: Any, indices: Sequence[int]) -> torch.Tensor | None:
    """``(B, C, H, W)`` part masks of a dataset that has them (the ``parts`` world) in the samples'
    geometry, else ``None`` (random train transforms move pixels the masks cannot follow)."""
    lookup = getattr(dataset, "part_masks", None)
    transform = getattr(dataset, "transform", None)
    if not callable(lookup) or getattr(transform, "train", True):
        return None
    return torch.stack([lookup(int(i)) for i in indices])


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
    class_sensitive: bool = True,
    faithfulness: int = 0,
    randomisation: int = 0,
) -> dict[str, Any]:
    """Evaluate ``gain`` (in eval mode; its mode is restored) on ``loader``'s samples.

    The attention of every ground-truth class is scored against the ground-truth masks of the
    images that have them (``has_masks``): ``cam_miou`` is the best mIoU over background
    thresholds (``cam_threshold``, ``cam_curve``: the whole sweep), ``coverage`` / ``precision`` /
    ``attention_iou`` / ``pointing`` at threshold 0.5, ``box_energy`` where boxes exist.

    With ``class_sensitive`` (default) the maps of *all* classes are computed, and:

    - ``agnostic_<metric>``: the same metrics for the class-agnostic baseline, the mean of all
      class maps of the image (:func:`class_agnostic_maps`) used as every class's map: what a
      map that marks "an object" without telling which scores;
    - ``wrong_class_coverage``: share of the image's object pixels (every class) above 0.5 in the
      maps of the classes *absent* from the image (low is right: a map of class evidence has
      nothing to find there; an object blob covers them as well as the right class's map);
    - ``part_coverage`` / ``body_coverage`` (datasets with ``part_masks``, the ``parts`` world):
      coverage at 0.5 of the class's discriminative part and of its object minus the part.

    Opt-in, as they cost many forward passes per image (docs/faithfulness.md), on the first
    ``faithfulness`` / ``randomisation`` images, each with the map of its first label:

    - ``faithfulness``: ``deletion_auc``, ``insertion_auc``, ``road_morf``, ``road_lerf``, ``road``
      (:func:`~gainet.evaluation.faithfulness.faithfulness_summary`; score: sigmoid for a
      multi-label model, softmax otherwise), and the same for the class-agnostic map
      (``agnostic_*``) with ``class_sensitive``;
    - ``randomisation``: ``randomisation_spearman``, the cascading randomisation check's mean
      Spearman similarity (low: the maps depend on the weights) and ``randomisation_curve``.

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
    sweeps = {"": AttentionSweep(num_classes), AGNOSTIC: AttentionSweep(num_classes)}
    coverages = {"": CoverageMeter(threshold=0.5), AGNOSTIC: CoverageMeter(threshold=0.5)}
    regions = RegionCoverageMeter(threshold=0.5)
    seen_masks = images_seen = 0
    kept: dict[str, list[torch.Tensor]] = {"images": [], "classes": [], "maps": [], "agnostic": []}
    wanted = max(faithfulness, randomisation)
    load_skipped: list[str] = []  # items that failed to load while iterating (on_error=skip)
    try:
        for step, batch in enumerate(progress_bar(loader, desc=desc, leave=False, enabled=progress, dynamic_ncols=True)):
            if max_batches is not None and step >= max_batches:
                break
            batch, failed = _without_stand_ins(batch)
            load_skipped.extend(failed)
            if not len(batch["image"]):
                continue
            images = batch["image"].to(device)
            labels = batch["labels"]
            batch_size, height, width = images.shape[0], images.shape[-2], images.shape[-1]
            if class_sensitive:
                # Every class's map in one pass: pairs come ordered by image, then class.
                scores, _, all_maps = gain.label_attention(images, torch.ones_like(labels).to(device))
                dense = all_maps.cpu().reshape(batch_size, num_classes, height, width)
                pairs = label_pairs(labels)
                maps = dense[pairs[:, 0], pairs[:, 1]]
            else:
                scores, pairs, maps = gain.label_attention(images, labels.to(device))
                pairs, maps = pairs.cpu(), maps.cpu()
                dense = torch.zeros(batch_size, num_classes, height, width)
                dense[pairs[:, 0], pairs[:, 1]] = maps
            classification.update(scores.float().cpu(), labels)
            images_seen += batch_size
            if sum(len(x) for x in kept["images"]) < wanted:
                _keep_for_faithfulness(kept, images.cpu(), pairs, dense, class_sensitive)
            has_masks = batch["has_masks"].bool()
            if not bool(has_masks.any()):
                continue
            seen_masks += int(has_masks.sum())
            keep = has_masks[pairs[:, 0]]
            b, c = pairs[keep, 0], pairs[keep, 1]
            segmentation = batch["segmentation"]
            valid = segmentation != IGNORE_INDEX
            has_boxes = batch["has_boxes"].bool()[b]
            # Box energy per map, over the images that have boxes (an empty box mask is not counted),
            # so that one image without boxes does not drop the rest of its batch.
            box_masks = batch["box_masks"][b, c] * has_boxes.view(-1, 1, 1).to(batch["box_masks"].dtype)
            views = {"": (dense, maps[keep])}
            if class_sensitive:
                agnostic = class_agnostic_maps(dense)
                views[AGNOSTIC] = (agnostic[:, None].expand(-1, num_classes, -1, -1), agnostic[b])
            parts = _part_masks(dataset, batch["index"]) if class_sensitive else None
            for prefix, (image_maps, pair_maps) in views.items():
                sweeps[prefix].update(image_maps[has_masks], labels[has_masks], segmentation[has_masks])
                coverages[prefix].update(pair_maps, batch["masks"][b, c], valid=valid[b], box_masks=box_masks)
                if parts is not None:
                    part = parts[b, c]
                    regions.update(prefix + "part_coverage", pair_maps, part, valid[b])
                    regions.update(prefix + "body_coverage", pair_maps, batch["masks"][b, c] * (1 - part), valid[b])
            if class_sensitive:
                absent = torch.nonzero((labels == 0) & has_masks[:, None])
                objects = ((segmentation > 0) & valid).float()[absent[:, 0]]
                wrong = dense[absent[:, 0], absent[:, 1]]
                regions.update("wrong_class_coverage", wrong, objects, valid[absent[:, 0]])
                regions.update(AGNOSTIC + "wrong_class_coverage", agnostic[absent[:, 0]], objects, valid[absent[:, 0]])
        if wanted and kept["images"]:
            metrics_extra = _model_dependence(gain, kept, faithfulness, randomisation, device, progress)
        else:
            metrics_extra = {}
    finally:
        gain.train(was_training)
    metrics: dict[str, Any] = dict(classification.compute())
    metrics.update(metrics_extra)
    metrics["label_prior"] = classification.label_prior()
    metrics["images"] = images_seen
    # Items the dataset dropped under on_error="skip" ((file, reason) in its ``skipped``): the
    # numbers above cover the rest, so the results say how many and which.
    # Those that broke while the loader ran were left out above (their stand-ins too): counted alike.
    skipped = [f"{file}: {reason}" for file, reason in getattr(dataset, "skipped", None) or []] + load_skipped
    metrics["skipped"] = len(skipped)
    if skipped:
        metrics["skipped_files"] = skipped[:SKIP_EXAMPLES]
    if not seen_masks:
        return metrics
    for prefix in sweeps if class_sensitive else ("",):
        swept = sweeps[prefix].compute()
        metrics[prefix + "cam_miou"] = float(swept["best_miou"])
        metrics[prefix + "cam_threshold"] = float(swept["best_threshold"])
        metrics[prefix + "cam_curve"] = [[float(t), float(m)] for t, m in swept["curve"]]
        located = coverages[prefix].compute()
        for key in ("coverage", "precision", "iou", "pointing", "box_energy"):
            if key in located and located[key] is not None:
                metrics[prefix + ("attention_iou" if key == "iou" else key)] = float(located[key])
        metrics[prefix + "coverage_curve"] = located["curve"]
    metrics.update(regions.compute())
    return metrics


def _keep_for_faithfulness(kept: dict[str, list[torch.Tensor]], images: torch.Tensor, pairs: torch.Tensor,
                           dense: torch.Tensor, class_sensitive: bool) -> None:
    """Keep each labelled image of the batch with its first label and that label's map (and the
    class-agnostic map) for the opt-in faithfulness / randomisation metrics."""
    first = torch.ones(len(pairs), dtype=torch.bool)
    first[1:] = pairs[1:, 0] != pairs[:-1, 0]
    b, c = pairs[first, 0], pairs[first, 1]
    kept["images"].append(images[b])
    kept["classes"].append(c)
    kept["maps"].append(dense[b, c])
    if class_sensitive:
        kept["agnostic"].append(class_agnostic_maps(dense)[b])


def _model_dependence(gain: GAIN, kept: dict[str, list[torch.Tensor]], faithfulness: int, randomisation: int,
                      device: torch.device | str, progress: bool) -> dict[str, Any]:
    """The opt-in metrics of :func:`evaluate_gain` on the kept images."""
    from gainet.evaluation.randomisation import cascading_randomisation, gradcam_explain

    images, classes = torch.cat(kept["images"]).to(device), torch.cat(kept["classes"]).to(device)
    score = "sigmoid" if gain.multi_label else "softmax"
    out: dict[str, Any] = {}
    if faithfulness:
        n = faithfulness
        views = {"": kept["maps"]} | ({AGNOSTIC: kept["agnostic"]} if kept["agnostic"] else {})
        for prefix, maps in views.items():
            summary = faithfulness_summary(gain.model, images[:n], torch.cat(maps)[:n].to(device), classes[:n],
                                           score=score, progress=progress)
            out.update({prefix + key: value for key, value in summary.items()})
        out["faithfulness_images"] = int(images[:n].shape[0])
    if randomisation:
        n = randomisation
        result = cascading_randomisation(gain.model, images[:n], classes[:n], gradcam_explain(gain.backbone.layer_name),
                                         progress=progress)
        out["randomisation_spearman"] = result.score
        out["randomisation_curve"] = result.curve
        out["randomisation_images"] = int(images[:n].shape[0])
    return out


def _without_stand_ins(batch: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``(batch, failed)``: the batch without the rows that stand in for an item that failed to load
    (a non-empty ``"load_skipped"``, see ``FileDataset.__getitem__``), and those items' ``"file:
    reason"``. A stand-in is another item of the split: scoring it would count that item twice."""
    flags = batch.get("load_skipped")
    if flags is None or not any(flags):
        return batch, []
    keep = [not flag for flag in flags]
    mask = torch.tensor(keep)

    def rows(value: Any) -> Any:  # per-row entries (tensors, lists of length B) lose the stand-ins
        if isinstance(value, torch.Tensor) and value.shape[:1] == mask.shape:
            return value[mask]
        if isinstance(value, list) and len(value) == len(keep):
            return [item for item, kept in zip(value, keep) if kept]
        return value

    return {key: rows(value) for key, value in batch.items()}, [flag for flag in flags if flag]


def agnostic_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The class-agnostic baseline's metrics of an :func:`evaluate_gain` result under the plain
    names (``agnostic_cam_miou`` -> ``cam_miou``), for a table row beside the model's own;
    empty when the result has none."""
    return {key[len(AGNOSTIC):]: value for key, value in metrics.items() if key.startswith(AGNOSTIC)}


def with_agnostic_rows(rows: Sequence[Mapping[str, Any]], label: str) -> list[dict[str, Any]]:
    """Each row followed by its class-agnostic baseline row (``<label> (class-agnostic)`` in column
    ``label``), where the row carries ``agnostic_*`` metrics; the ``agnostic_*`` keys are dropped."""
    out: list[dict[str, Any]] = []
    for row in rows:
        out.append({k: v for k, v in row.items() if not k.startswith(AGNOSTIC)})
        baseline = agnostic_metrics(row)
        if baseline:
            out.append({label: f"{row.get(label, '')} ({AGNOSTIC_LABEL})", **baseline})
    return out
