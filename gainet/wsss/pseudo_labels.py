"""Stage 3: pseudo labels (index PNGs) from the attention maps, optionally CRF-refined, and their
mIoU against the ground truth.

Rule, per pixel, with ``m`` = the largest ground-truth-class map there (IRN's ``cam_to_ir_label``):

- ``m > fg_threshold``: confident foreground, label ``1 + argmax`` class;
- ``m <= bg_threshold``: confident background, label 0;
- otherwise (``bg_threshold < m <= fg_threshold``): unsure, label 255, ignored by ``train-seg``.

``bg_threshold == fg_threshold`` gives labels without an ignore band: exactly
:func:`~gainet.evaluation.localization.predict_segmentation` at that threshold, i.e. the
segmentation that ``eval-cams`` scores. With ``crf``, both the foreground-threshold and the
background-threshold segmentations are refined by a dense CRF and combined as IRN does:
foreground where the first says so, background where both say so, 255 elsewhere.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gainet.data.transforms import IGNORE_INDEX
from gainet.evaluation.localization import predict_segmentation
from gainet.evaluation.report import markdown_table
from gainet.evaluation.segmentation import ConfusionMatrix
from gainet.io.progress import progress_bar
from gainet.wsss import data as io
from gainet.wsss.cams import CAMS_DIR, CAMS_STAGE, EVAL_CAMS_JSON, dense_maps, per_class_rows, require_complete
from gainet.wsss.crf import CRFParams, crf_labels

logger = logging.getLogger(__name__)

LABELS_DIR = "labels"
LABELS_STAGE = "pseudo-labels"
EVAL_LABELS_JSON = "eval_labels.json"
EVAL_LABELS_MD = "eval_labels.md"


def threshold_segmentation(keys: np.ndarray, maps: np.ndarray, num_classes: int, threshold: float) -> np.ndarray:
    """int64 ``(H, W)``: 0 where every map is ``<= threshold``, else ``1 + class`` of the strongest
    map (the comparison of :func:`predict_segmentation`)."""
    dense, labels = dense_maps(keys, maps, num_classes)
    return predict_segmentation(dense, labels, threshold)[0].numpy()


def pseudo_label(
    keys: np.ndarray,
    maps: np.ndarray,
    num_classes: int,
    fg_threshold: float,
    bg_threshold: float,
    *,
    image: np.ndarray | None = None,
    crf: CRFParams | None = None,
) -> np.ndarray:
    """uint8 ``(H, W)`` pseudo label of one image (see the module docstring).

    Args:
        keys: ``(K,)`` 0-based ground-truth classes; maps: ``(K, H, W)`` their maps in [0, 1].
        num_classes: ``C`` (foreground classes).
        fg_threshold, bg_threshold: ``0 <= bg_threshold <= fg_threshold``.
        image: uint8 ``(H, W, 3)``, needed with ``crf``.
        crf: CRF settings, or ``None`` for no CRF.
    """
    if not 0.0 <= bg_threshold <= fg_threshold:
        raise ValueError(f"need 0 <= bg_threshold ({bg_threshold}) <= fg_threshold ({fg_threshold})")
    foreground = threshold_segmentation(keys, maps, num_classes, fg_threshold)
    background = threshold_segmentation(keys, maps, num_classes, bg_threshold)
    if crf is not None:
        if image is None:
            raise ValueError("CRF refinement needs the image")
        # CRF over the image's own labels only: background + its K classes, compact indices.
        lookup = np.concatenate([[0], np.sort(keys) + 1]).astype(np.int64)
        compact = np.zeros(num_classes + 1, dtype=np.int64)
        compact[lookup] = np.arange(len(lookup))
        foreground = lookup[crf_labels(image, compact[foreground], len(lookup), crf)]
        background = lookup[crf_labels(image, compact[background], len(lookup), crf)]
    label = foreground.copy()
    label[(foreground == 0) & (background != 0)] = IGNORE_INDEX
    return label.astype(np.uint8)


def best_threshold(cams_dir: Path) -> float:
    """The background threshold ``eval-cams`` found best for ``cams_dir``."""
    path = Path(cams_dir) / EVAL_CAMS_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run gainet eval-cams first or give --fg-threshold")
    return float(json.loads(path.read_text())["best_threshold"])


def make_pseudo_labels(
    cams_dir: str | Path,
    output_dir: str | Path,
    *,
    fg_threshold: float | str = "auto",
    bg_threshold: float | None = None,
    band: float = 0.1,
    crf: bool = False,
    crf_params: CRFParams | None = None,
    data_root: str | None = None,
    overwrite: bool = False,
    evaluate: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Stage 3: ``output_dir/labels/<image_id>.png`` for every image of a ``make-cams`` output.

    Args:
        fg_threshold: number, or ``"auto"``: the best background threshold of ``eval-cams``.
        bg_threshold: default ``max(0, fg_threshold - band)``.
        crf: refine with a dense CRF (needs ``pydensecrf2``).
        evaluate: score the labels against the ground truth afterwards (:func:`eval_pseudo_labels`).

    Returns ``{"written", "skipped", "images", "fg_threshold", "bg_threshold", "output", "eval"}``.
    """
    cams_dir = Path(cams_dir)
    meta = io.read_meta(cams_dir, CAMS_STAGE, "gainet make-cams")
    fg = best_threshold(cams_dir) if fg_threshold == "auto" else float(fg_threshold)
    bg = max(0.0, round(fg - band, 6)) if bg_threshold is None else float(bg_threshold)
    if not 0.0 <= bg <= fg <= 1.0:
        raise ValueError(f"need 0 <= bg_threshold ({bg}) <= fg_threshold ({fg}) <= 1")
    params = (crf_params or CRFParams()) if crf else None
    if params is not None:
        from gainet.wsss.crf import _densecrf

        _densecrf()  # fail before any work when the package is missing
    dataset, classes = io.open_stage_dataset(meta, data_root)
    folder = cams_dir / CAMS_DIR
    require_complete(folder, dataset, ".npy", "gainet make-cams")
    output = Path(output_dir)
    labels_meta = {
        "stage": LABELS_STAGE, "cams": str(cams_dir.resolve()), "method": meta.get("method"), "classes": classes,
        "data": {**meta["data"], **({"root": str(data_root)} if data_root else {})},
        "fg_threshold": fg, "bg_threshold": bg, "crf": None if params is None else params.to_dict(),
        "mean": meta.get("mean"), "std": meta.get("std"),
    }
    io.claim_folder(output, labels_meta, ["cams", "data", "fg_threshold", "bg_threshold", "crf"], overwrite)
    labels_dir = output / LABELS_DIR
    todo = io.pending(dataset, labels_dir, ".png", overwrite)
    for index, path in progress_bar(todo, desc="pseudo-labels", enabled=progress, dynamic_ncols=True):
        keys, maps = io.load_cams(io.item_path(folder, dataset.image_id(index), ".npy"))
        image = io.raw_item(dataset, index).image if params is not None else None
        io.save_index_png(path, pseudo_label(keys, maps, len(classes), fg, bg, image=image, crf=params))
    written, skipped = len(todo), dataset.wsss_size - len(todo)
    logger.info("pseudo-labels: %d written, %d already there, in %s", written, skipped, labels_dir)
    result: dict[str, Any] = {"written": written, "skipped": skipped, "images": dataset.wsss_size,
                              "fg_threshold": fg, "bg_threshold": bg, "output": str(output), "eval": None}
    if evaluate:
        result["eval"] = eval_if_possible(output, data_root=data_root, progress=progress, what="pseudo-labels")
    return result


def eval_if_possible(labels_dir: str | Path, *, data_root: str | None, progress: bool, what: str) -> dict[str, Any] | None:
    """:func:`eval_pseudo_labels` of a labels folder just written, or ``None`` (logged) where there is
    no ground truth to compare with: the labels are still made."""
    try:
        return eval_pseudo_labels(labels_dir, data_root=data_root, progress=progress)
    except ValueError as error:
        logger.warning("%s not evaluated: %s", what, error)
        return None


def eval_pseudo_labels(labels_dir: str | Path, *, data_root: str | None = None, progress: bool = True) -> dict[str, Any]:
    """mIoU of the pseudo labels of ``labels_dir`` against the ground-truth masks (``C + 1``
    classes, ground-truth 255 ignored). Writes ``eval_labels.json`` / ``eval_labels.md``.

    Returns:
        ``miou`` and ``per_class_iou``: unsure pixels (255) counted as background (IRN's
        ``eval_sem_seg`` convention, the number comparable across papers); ``confident_miou``,
        ``confident_precision``: the same over the confidently labelled pixels only (the labels'
        precision); ``ignored_fraction``: share of valid ground-truth pixels left unsure;
        ``images``, ``classes``, ``markdown``.
    """
    labels_dir = Path(labels_dir)
    meta = io.read_meta(labels_dir, LABELS_STAGE, "gainet pseudo-labels")
    dataset, classes = io.open_stage_dataset(meta, data_root)
    folder = labels_dir / LABELS_DIR
    require_complete(folder, dataset, ".png", "gainet pseudo-labels")
    all_pixels, confident = ConfusionMatrix(len(classes) + 1), ConfusionMatrix(len(classes) + 1)
    unsure = valid = images = 0
    for _, item in progress_bar(io.iterate(dataset), total=dataset.wsss_size, desc="eval pseudo-labels",
                        enabled=progress, dynamic_ncols=True):
        if item.segmentation is None:
            continue
        label = torch.from_numpy(io.load_index_png(io.item_path(folder, item.image_id, ".png")))
        target = torch.from_numpy(item.segmentation)
        if label.shape != target.shape:
            raise ValueError(f"{item.image_id}: pseudo label {tuple(label.shape)} and mask {tuple(target.shape)} differ in size")
        is_unsure = label == IGNORE_INDEX
        all_pixels.update(torch.where(is_unsure, torch.zeros_like(label), label)[None], target[None])
        confident.update(torch.where(is_unsure, torch.zeros_like(label), label)[None],
                         torch.where(is_unsure, torch.full_like(target, IGNORE_INDEX), target)[None])
        counted = target != IGNORE_INDEX
        unsure += int((is_unsure & counted).sum())
        valid += int(counted.sum())
        images += 1
    if images == 0:
        raise ValueError(f"{labels_dir}: none of the {dataset.wsss_size} images has a ground-truth mask to compare with")
    scores, sure = all_pixels.compute(), confident.compute()
    names = ["background", *classes]
    summary = {
        "miou": scores["miou"], "per_class_iou": scores["iou_per_class"], "pixel_accuracy": scores["pixel_accuracy"],
        "confident_miou": sure["miou"], "confident_precision": sure["pixel_accuracy"],
        "ignored_fraction": unsure / valid if valid else float("nan"), "images": images, "classes": names,
        "fg_threshold": meta["fg_threshold"], "bg_threshold": meta["bg_threshold"], "crf": meta["crf"] is not None,
        "method": meta.get("method"),
    }
    markdown = (
        f"# Pseudo-label mIoU: {labels_dir} ({meta.get('method')}, {images} images)\n\n"
        + (f"Thresholds fg {summary['fg_threshold']:.2f} / bg {summary['bg_threshold']:.2f}, CRF {summary['crf']}. "
           if summary["fg_threshold"] is not None else "No thresholds (labels not made from maps). ")
        + f"mIoU {100 * summary['miou']:.1f} (unsure pixels as background); on confident pixels "
        f"mIoU {100 * summary['confident_miou']:.1f}, accuracy {100 * summary['confident_precision']:.1f}; "
        f"unsure {100 * summary['ignored_fraction']:.1f}% of pixels.\n\n"
        + markdown_table(per_class_rows(names, summary["per_class_iou"]), ["class", "IoU"], ".1f") + "\n"
    )
    io.write_json(labels_dir / EVAL_LABELS_JSON, summary)
    (labels_dir / EVAL_LABELS_MD).write_text(markdown)
    return {**summary, "markdown": markdown}
