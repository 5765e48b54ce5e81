"""Weakly-supervised semantic segmentation from GAIN's attention (issue 5), in resumable stages:

1. :func:`make_cams` — normalised attention maps of each image's ground-truth classes, at native
   resolution, optionally multi-scale and flip-averaged, one ``.npy`` per image;
2. :func:`eval_cams` — their mIoU against the ground truth over a swept background threshold;
3. :func:`make_pseudo_labels` — index PNGs with an ignore band (255), optionally CRF-refined,
   and their mIoU (:func:`eval_pseudo_labels`);
4. :func:`train_seg` — a torchvision segmentation network trained on them (255 ignored);
5. :func:`evaluate_segmentation` — its mIoU on the ground-truth validation split, from saved
   prediction PNGs, optionally multi-scale + flip and CRF.

Imports core, data, evaluation (with its jobs), training and models; only the CLI imports this
package. Names are imported lazily, so ``gainet --help`` does not load torch through here. See
``docs/wsss.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CRFParams": "crf", "crf_available": "crf", "crf_labels": "crf", "crf_probabilities": "crf",
    "SEG_MODELS": "config", "SegConfig": "config",
    "eval_cams": "cams", "image_cams": "cams", "make_cams": "cams",
    "eval_pseudo_labels": "pseudo_labels", "make_pseudo_labels": "pseudo_labels", "pseudo_label": "pseudo_labels",
    "SegTrainer": "seg_trainer", "evaluate_segmentation": "seg_trainer", "train_seg": "seg_trainer",
    "build_segmentation_model": "segmentation_model",
    "run_pipeline": "pipeline",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
