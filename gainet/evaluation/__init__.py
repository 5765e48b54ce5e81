"""Evaluation of GAIN models: pure functions and batch accumulators on tensors.

The modules imported here import no trainer, data or CLI: classification metrics, segmentation IoU,
attention localisation (threshold sweep, coverage / precision / pointing game), overlays and reports.
Two modules sit above training and data and are imported only by name: :mod:`gainet.evaluation.jobs`
(checkpoints scored for ``gainet evaluate``) and :mod:`gainet.evaluation.explain` (``gainet explain``).
"""

from gainet.evaluation.classification import ClassificationMeter
from gainet.evaluation.localization import (
    AttentionSweep,
    CoverageMeter,
    RegionCoverageMeter,
    class_agnostic_maps,
    default_thresholds,
    energy_in_boxes,
    pair_masks,
    pointing_hits,
    predict_segmentation,
    sweep_confusion_matrices,
)
from gainet.evaluation.overlays import denormalise, overlay, overlay_grid, save_png
from gainet.evaluation.report import markdown_table, markdown_table_to_html, render_html, write_html_report
from gainet.evaluation.segmentation import (
    ConfusionMatrix,
    confusion_matrix,
    iou_from_confusion,
    miou_from_confusion,
    pixel_accuracy_from_confusion,
)

__all__ = [
    "AttentionSweep",
    "ClassificationMeter",
    "ConfusionMatrix",
    "CoverageMeter",
    "RegionCoverageMeter",
    "class_agnostic_maps",
    "confusion_matrix",
    "default_thresholds",
    "denormalise",
    "energy_in_boxes",
    "iou_from_confusion",
    "markdown_table",
    "markdown_table_to_html",
    "miou_from_confusion",
    "overlay",
    "overlay_grid",
    "pair_masks",
    "pixel_accuracy_from_confusion",
    "pointing_hits",
    "predict_segmentation",
    "render_html",
    "save_png",
    "sweep_confusion_matrices",
    "write_html_report",
]
