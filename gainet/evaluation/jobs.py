"""Checkpoint-level jobs behind ``gainet evaluate`` (and the checkpoint loading of ``gainet explain``).

Sits above training, data and the rest of evaluation (it loads what the trainer wrote) and below the CLI;
with :mod:`gainet.evaluation.explain`, the only modules of :mod:`gainet.evaluation` that import training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from gainet.core import GAIN
from gainet.data import build_dataset
from gainet.data.errors import skip_line, skip_summary
from gainet.evaluation.classification import AP_DEFINITIONS
from gainet.evaluation.evaluate import check_same_classes, evaluate_gain, with_agnostic_rows
from gainet.evaluation.report import markdown_table
from gainet.training.checkpoint import load_checkpoint
from gainet.training.config import TrainConfig
from gainet.training.data import eval_loader
from gainet.training.trainer import build_gain, resolve_device
from gainet.training.distributed import DistributedContext

logger = logging.getLogger(__name__)

# Splits evaluated by default for datasets that have them (the bias world's two test sets).
DEFAULT_TEST_SPLITS = {"bias": ["test_biased", "test_decorrelated"],
                       "garments-bias": ["test_biased", "test_decorrelated"]}
# Columns of the metrics table; each split's row is followed by its class-agnostic baseline row.
METRIC_COLUMNS = ("mAP", "mAP_voc", "accuracy", "cam_miou", "cam_threshold", "coverage", "precision", "attention_iou", "pointing",
                  "box_energy", "part_coverage", "body_coverage", "wrong_class_coverage",
                  # opt-in (evaluate --faithfulness N / --randomisation N): docs/faithfulness.md
                  "deletion_auc", "insertion_auc", "road", "randomisation_spearman", "images")


def load_trained(checkpoint: str | Path, device: str | torch.device = "cpu",
                 attention_layer: str | None = None) -> tuple[GAIN, TrainConfig, dict[str, Any]]:
    """The trained GAIN model (eval mode) of a checkpoint, its config and the raw state;
    ``attention_layer`` replaces the layer the model was trained with (maps of another layer of
    the same weights, e.g. ``stride16``)."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    config = TrainConfig.from_dict(state["config"])
    if attention_layer is not None:
        config = config.replace(attention_layer=attention_layer)
    gain = build_gain(config.replace(pretrained=None), len(state["classes"]), bool(state["multi_label"]))
    if attention_layer is None:
        gain.load_state_dict(state["model"])
    else:
        # backbone.linear_head is the model's own final Linear (the closed-form path), registered
        # a second time; another layer may have it where the trained one had not, or the reverse.
        result = gain.load_state_dict(state["model"], strict=False)
        stray = [k for k in result.missing_keys + result.unexpected_keys if not k.startswith("backbone.linear_head.")]
        if stray:
            raise ValueError(f"{checkpoint}: weights do not fit the model, e.g. {stray[0]!r}")
    return gain.to(device).eval(), config, state


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    splits: Sequence[str] | None = None,
    data_root: str | None = None,
    output_dir: str | Path | None = None,
    batch_size: int = 32,
    device: str = "auto",
    max_batches: int | None = None,
    progress: bool = False,
    attention_layer: str | None = None,
    faithfulness: int = 0,
    randomisation: int = 0,
) -> dict[str, Any]:
    """Evaluate a checkpoint on each split; write ``metrics.json`` and ``metrics.md``.
    ``attention_layer``: score the maps of another layer than the training config's;
    ``faithfulness`` / ``randomisation``: images per split for those opt-in metrics (0: off)."""
    for flag, value in (("--faithfulness", faithfulness), ("--randomisation", randomisation)):
        if value < 0:
            raise ValueError(f"{flag} must be >= 0 images, got {value}")
    torch_device = resolve_device(device, DistributedContext())
    gain, config, state = load_trained(checkpoint, torch_device, attention_layer)
    splits = list(splits or DEFAULT_TEST_SPLITS.get(config.dataset, [config.val_split]))
    results: dict[str, dict[str, Any]] = {}
    for split in splits:
        dataset = build_dataset(config.dataset, split, root=data_root or config.data_root,
                                image_size=config.image_size, train_transforms=False, **config.dataset_options)
        check_same_classes(state["classes"], dataset.classes, f"{checkpoint} on split {split!r}")
        if skip_summary(dataset)["count"]:  # also in metrics.json / metrics.md (skipped, skipped_files)
            logger.warning(skip_line(f"split {split!r}", skip_summary(dataset)))
        results[split] = evaluate_gain(gain, eval_loader(dataset, batch_size), device=torch_device,
                                       max_batches=max_batches, progress=progress, desc=f"evaluate {split}",
                                       faithfulness=faithfulness, randomisation=randomisation)
    rows = with_agnostic_rows(
        [{"split": s, **{k: v for k, v in m.items() if isinstance(v, (int, float))}} for s, m in results.items()], "split")
    columns = ["split"] + [c for c in METRIC_COLUMNS if any(c in r for r in rows)]
    columns += ["skipped"] if any(r.get("skipped") for r in rows) else []
    table = markdown_table(rows, columns)
    output = Path(output_dir) if output_dir else Path(checkpoint).parent
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(
        {"checkpoint": str(checkpoint), "method": config.method, "attention_layer": gain.backbone.layer_name,
         "splits": results}, indent=2, default=_json_default))
    # Which average precision each mAP column is (torchmetrics' vs the VOC devkit's differ).
    table += "".join(f"\n\n{key}: {text}" for key, text in AP_DEFINITIONS.items() if key in columns)
    (output / "metrics.md").write_text(f"# {Path(checkpoint).name} ({config.method})\n\n{table}\n")
    return {"splits": results, "markdown": table, "output": str(output)}


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")
