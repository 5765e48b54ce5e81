"""Checkpoint-level jobs behind ``gainet evaluate`` and ``gainet explain``.

Sits above training, data and evaluation (it loads what the trainer wrote) and below the CLI.
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
from gainet.data.readers import read_rgb
from gainet.data.transforms import build_transform
from gainet.evaluation.evaluate import evaluate_gain, with_agnostic_rows
from gainet.evaluation.overlays import denormalise, overlay, save_png
from gainet.evaluation.report import markdown_table
from gainet.training.checkpoint import load_checkpoint
from gainet.training.config import TrainConfig
from gainet.training.data import eval_loader
from gainet.training.trainer import build_gain, resolve_device
from gainet.training.distributed import DistributedContext

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Splits evaluated by default for datasets that have them (the bias world's two test sets).
DEFAULT_TEST_SPLITS = {"bias": ["test_biased", "test_decorrelated"],
                       "garments-bias": ["test_biased", "test_decorrelated", "test_context_only"]}
# Columns of the metrics table; each split's row is followed by its class-agnostic baseline row.
METRIC_COLUMNS = ("mAP", "accuracy", "cam_miou", "cam_threshold", "coverage", "precision", "attention_iou", "pointing",
                  "box_energy", "part_coverage", "body_coverage", "wrong_class_coverage", "images")


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
    attention_layer: str | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on each split; write ``metrics.json`` and ``metrics.md``.
    ``attention_layer``: score the maps of another layer than the training config's."""
    torch_device = resolve_device(device, DistributedContext())
    gain, config, _ = load_trained(checkpoint, torch_device, attention_layer)
    splits = list(splits or DEFAULT_TEST_SPLITS.get(config.dataset, [config.val_split]))
    results: dict[str, dict[str, Any]] = {}
    for split in splits:
        dataset = build_dataset(config.dataset, split, root=data_root or config.data_root,
                                image_size=config.image_size, train_transforms=False, **config.dataset_options)
        results[split] = evaluate_gain(gain, eval_loader(dataset, batch_size), device=torch_device,
                                       max_batches=max_batches, desc=f"evaluate {split}")
    rows = with_agnostic_rows(
        [{"split": s, **{k: v for k, v in m.items() if isinstance(v, (int, float))}} for s, m in results.items()], "split")
    columns = ["split"] + [c for c in METRIC_COLUMNS if any(c in r for r in rows)]
    table = markdown_table(rows, columns)
    output = Path(output_dir) if output_dir else Path(checkpoint).parent
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(
        {"checkpoint": str(checkpoint), "method": config.method, "attention_layer": gain.backbone.layer_name,
         "splits": results}, indent=2, default=_json_default))
    (output / "metrics.md").write_text(f"# {Path(checkpoint).name} ({config.method})\n\n{table}\n")
    return {"splits": results, "markdown": table, "output": str(output)}


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (non-recursively, sorted) in directories."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image file or directory")
    if not files:
        raise ValueError(f"no image files in {', '.join(map(str, inputs))}")
    return files


def explain_images(
    inputs: Sequence[str | Path],
    checkpoint: str | Path,
    *,
    output_dir: str | Path = "runs/explain",
    classes: Sequence[str] | None = None,
    top_k: int = 1,
    save_npy: bool = False,
    device: str = "auto",
) -> list[Path]:
    """Attention overlays ``<stem>_<class>.png`` (and ``.npy`` maps) for each image.

    Classes: the named ones, else the ``top_k`` highest-scoring. Images are resized to the
    checkpoint's input size and normalised with its training statistics.
    """
    torch_device = resolve_device(device, DistributedContext())
    gain, config, state = load_trained(checkpoint, torch_device)
    names = list(state["classes"])
    if classes:
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise ValueError(f"unknown class {unknown[0]!r}; classes of this model: {', '.join(names)}")
    transform = build_transform(config.image_size, train=False, mean=state["mean"], std=state["std"])
    output = Path(output_dir)
    written: list[Path] = []
    from torchvision import tv_tensors

    for path in image_files(inputs):
        rgb = read_rgb(path)
        image, _, _, _ = transform(
            tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1)), None,
            tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=rgb.shape[:2]),
        )
        batch = image[None].to(torch_device)
        with torch.no_grad():
            scores = gain(batch)[0]
        targets = [names.index(c) for c in classes] if classes else scores.topk(min(top_k, len(names))).indices.tolist()
        _, maps = gain.explain(batch.expand(len(targets), -1, -1, -1), targets)
        picture = denormalise(image, state["mean"], state["std"])
        for class_index, attention in zip(targets, maps.cpu()):
            stem = f"{path.stem}_{names[class_index]}"
            written.append(save_png(overlay(picture, attention), output / f"{stem}.png"))
            if save_npy:
                np.save(output / f"{stem}.npy", attention.numpy())
    return written
