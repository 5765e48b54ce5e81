"""One round of self-training: a trained ``train-seg`` network's predictions on its own training
images, written as a ``pseudo-labels`` folder that ``train-seg`` reads like any other.

The rule (the usual one, no threshold to choose): per pixel, the argmax of the network's softmax
over background and the classes of the image's image-level labels only (a class absent from the
image cannot be predicted there); no pixel is left unsure (255).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from gainet.io.progress import progress_bar
from gainet.wsss import data as io
from gainet.wsss.cams import require_complete
from gainet.wsss.pseudo_labels import LABELS_DIR, LABELS_STAGE, eval_if_possible
from gainet.wsss.seg_trainer import _device, load_seg_model, predict_probabilities

logger = logging.getLogger(__name__)

SELF_TRAINING_RULE = "argmax over background + the image's classes"


def image_class_argmax(probabilities: torch.Tensor, labels: Sequence[int]) -> np.ndarray:
    """Class index map ``(H, W)`` int64 in ``{0} ∪ {1 + k : k in labels}``: the argmax of
    ``probabilities`` ``(1 + C, H, W)`` (channel 0 background, channel 1 + k class k) over the
    background and the image's 0-based foreground class ids ``labels`` only (ties: the lower index)."""
    if probabilities.ndim != 3:
        raise ValueError(f"probabilities must be (1 + C, H, W), got {tuple(probabilities.shape)}")
    allowed = torch.tensor([0, *sorted(1 + int(k) for k in set(labels))], dtype=torch.long)
    if int(allowed.max()) >= probabilities.shape[0]:
        raise ValueError(f"image labels {sorted(labels)} name a class beyond the {probabilities.shape[0] - 1} "
                         "classes of the network")
    return allowed[probabilities[allowed].argmax(0)].numpy()


def self_training_labels(
    checkpoint: str | Path,
    labels_dir: str | Path,
    output_dir: str | Path,
    *,
    data_root: str | None = None,
    overwrite: bool = False,
    evaluate: bool = True,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Labels ``output_dir/labels/<image_id>.png`` for every training image of the ``pseudo-labels``
    folder ``labels_dir`` (the labels the network at ``checkpoint`` was trained on), predicted by
    that network at the native size (scale 1, no flip: ``eval-seg``'s defaults) and restricted to
    each image's classes (:func:`image_class_argmax`). Resumes per file; ``output_dir`` holds a
    ``pseudo-labels`` ``meta.json`` (with ``self_training`` naming checkpoint, source and rule).

    Returns ``{"written", "skipped", "images", "output", "eval"}`` (``eval``: :func:`eval_pseudo_labels`
    of the new labels, or ``None``).
    """
    source = io.read_meta(labels_dir, LABELS_STAGE, "gainet pseudo-labels")
    dataset, classes = io.open_stage_dataset(source, data_root)
    model, state = load_seg_model(checkpoint, _device(device))
    io.check_classes(["background", *classes], list(state["classes"]), f"checkpoint {checkpoint}")
    output = Path(output_dir)
    meta = {
        "stage": LABELS_STAGE, "method": source.get("method"), "classes": classes,
        "data": {**source["data"], **({"root": str(data_root)} if data_root else {})},
        "fg_threshold": None, "bg_threshold": None, "crf": None, "mean": source.get("mean"), "std": source.get("std"),
        "self_training": {"checkpoint": str(Path(checkpoint).resolve()), "epoch": state["epoch"],
                          "source_labels": str(Path(labels_dir).resolve()), "rule": SELF_TRAINING_RULE},
    }
    io.claim_folder(output, meta, ["data", "self_training"], overwrite)
    folder = output / LABELS_DIR
    train_size = int(state["config"].get("crop_size") or source["data"]["image_size"])
    todo = io.pending(dataset, folder, ".png", overwrite)
    for index, path in progress_bar(todo, desc="self-training labels", enabled=progress, dynamic_ncols=True):
        item = io.raw_item(dataset, index)
        probabilities = predict_probabilities(model, item.image, mean=state["mean"], std=state["std"],
                                              train_size=train_size)
        io.save_index_png(path, image_class_argmax(probabilities, item.labels))
    written, skipped = len(todo), dataset.wsss_size - len(todo)
    require_complete(folder, dataset, ".png", "self-training labels")
    logger.info("self-training labels: %d written, %d already there, in %s", written, skipped, folder)
    result: dict[str, Any] = {"written": written, "skipped": skipped, "images": dataset.wsss_size,
                              "output": str(output), "eval": None}
    if evaluate:
        result["eval"] = eval_if_possible(output, data_root=data_root, progress=progress, what="self-training labels")
    return result
