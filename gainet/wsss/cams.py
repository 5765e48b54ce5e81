"""Stages 1 and 2: attention maps of every training image (``make-cams``) and their mIoU against
the ground truth over a swept background threshold (``eval-cams``)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gainet.core import GAIN, normalise_maps
from gainet.evaluation.localization import AttentionSweep, class_agnostic_maps, default_thresholds
from gainet.evaluation.report import markdown_table
from gainet.io.input_size import smallest_input_size
from gainet.io.progress import progress_bar
from gainet.wsss import data as io
from gainet.wsss.config import DEFAULT_SCALES

logger = logging.getLogger(__name__)

CAMS_DIR = "cams"
CAMS_STAGE = "cams"
EVAL_CAMS_JSON = "eval_cams.json"
EVAL_CAMS_MD = "eval_cams.md"


def parse_base_size(value: str | int | None) -> str | int:
    """``"train"`` (the checkpoint's square input size), ``"native"`` (the image as it is) or a
    positive integer ``N`` (an ``N x N`` square)."""
    if value is None:
        return "train"
    if isinstance(value, int) or str(value).isdigit():
        size = int(value)
        if size < 8:
            raise ValueError(f"base size must be >= 8 pixels, got {size}")
        return size
    if value not in ("train", "native"):
        raise ValueError(f"base size must be 'train', 'native' or a number of pixels, got {value!r}")
    return str(value)


def scaled_sizes(image_hw: tuple[int, int], base: str | int, train_size: int,
                 scales: Sequence[float]) -> list[tuple[int, int]]:
    """Network input ``(h, w)`` for each scale: the base size (see :func:`parse_base_size`) times
    the scale, at least 8 pixels a side."""
    if base == "native":
        height, width = image_hw
    else:
        height = width = train_size if base == "train" else int(base)
    return [(max(8, round(height * s)), max(8, round(width * s))) for s in scales]


def to_input(image: np.ndarray, mean: Sequence[float], std: Sequence[float], device: torch.device) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> normalised float ``(1, 3, H, W)``."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float() / 255.0
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (tensor - mean_t) / std_t


@torch.no_grad()
def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def image_cams(
    gain: GAIN,
    image: np.ndarray,
    class_ids: Sequence[int],
    num_classes: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    train_size: int,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    base: str | int = "train",
    class_agnostic: bool = False,
) -> np.ndarray:
    """Normalised attention maps ``(K, H, W)`` float32 of ``class_ids`` (in ascending order) on one image, at its
    native resolution ``(H, W)``; ``num_classes`` is the classifier's ``C``.

    For every scale (and its horizontal mirror with ``flip``) the image is resized to the scale's
    input size, :meth:`GAIN.label_attention` gives the min-max normalised map of each class
    (METHOD.md step 4), which is mirrored back and resized bilinearly to ``(H, W)``. The maps of
    all scales and flips are averaged and min-max normalised again, so the result is in [0, 1]
    whatever the number of views (the all-zero map stays zero).

    ``class_agnostic``: the baseline row of docs/ablation.md instead: in every view the mean of
    all ``num_classes`` maps, min-max normalised
    (:func:`~gainet.evaluation.localization.class_agnostic_maps`), stands for each class's map.
    """
    height, width = image.shape[:2]
    class_ids = sorted({int(c) for c in class_ids})
    if not class_ids:
        return np.zeros((0, height, width), dtype=np.float32)
    device = next(gain.parameters()).device
    labels = torch.zeros(1, num_classes, device=device)
    labels[0, list(range(num_classes)) if class_agnostic else class_ids] = 1.0
    mapped = num_classes if class_agnostic else len(class_ids)
    original = to_input(image, mean, std, device)
    total = torch.zeros(len(class_ids), height, width, device=device)
    views = 0
    for size in scaled_sizes((height, width), base, train_size, scales):
        batch = _resize(original, size)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        _, pairs, maps = gain.label_attention(batch, labels.expand(batch.shape[0], -1))
        maps = maps.float().view(batch.shape[0], mapped, *size)  # pairs are ordered by image, class
        if class_agnostic:
            maps = class_agnostic_maps(maps)[:, None].expand(-1, len(class_ids), -1, -1).contiguous()
        if flip:
            maps[1] = maps[1].flip(-1)
        maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
        total += maps.sum(0)
        views += batch.shape[0]
    return normalise_maps(total / views).cpu().numpy()


def make_cams(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    split: str | None = None,
    data_root: str | None = None,
    limit: int | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = False,
    base_size: str | int | None = "train",
    attention_layer: str | None = None,
    class_agnostic: bool = False,
    dtype: str = "float16",
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Stage 1: ``output_dir/cams/<image_id>.npy`` for every image of ``split`` (default: the
    checkpoint's training split), plus ``output_dir/meta.json``. Images whose file exists are
    skipped unless ``overwrite``. Returns ``{"written", "skipped", "images", "output"}``.

    ``attention_layer``: maps of another layer of the same weights than the one the classifier was
    trained with, in ``gainet train --attention-layer``'s vocabulary (``stride16``, ``stride32`` or a
    dotted module name; see :mod:`gainet.models`); ``class_agnostic``: the class-agnostic baseline
    (see :func:`image_cams`)."""
    from gainet.evaluation.jobs import load_trained
    from gainet.training.distributed import DistributedContext
    from gainet.training.trainer import resolve_device

    if not scales or any(not (s > 0) for s in scales):
        raise ValueError(f"scales must be positive numbers, got {list(scales)}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
    base = parse_base_size(base_size)
    torch_device = resolve_device(device, DistributedContext())
    gain, config, state = load_trained(checkpoint, torch_device, attention_layer)
    classes = list(state["classes"])
    spec = io.spec_from_config(config, split or config.train_split, limit)
    if data_root:
        spec["root"] = str(data_root)
    dataset = io.open_dataset(spec)
    io.check_classes(dataset.classes, classes, f"dataset {spec['dataset']!r}")
    output = Path(output_dir)
    meta = {
        "stage": CAMS_STAGE, "checkpoint": str(Path(checkpoint).resolve()), "method": config.method,
        "classes": classes, "data": spec, "scales": [float(s) for s in scales], "flip": bool(flip),
        "base_size": base, "train_size": int(config.image_size), "dtype": dtype,
        "attention_layer": attention_layer, "class_agnostic": True if class_agnostic else None,  # None: old folders resume
        "mean": list(state["mean"]), "std": list(state["std"]),
    }
    io.claim_folder(output, meta, ["checkpoint", "data", "scales", "flip", "base_size", "dtype", "attention_layer",
                                   "class_agnostic"], overwrite)
    cams_dir = output / CAMS_DIR
    # --scales times the base size must stay a side the network takes (measured once per model).
    smallest = smallest_input_size(gain.model) or 1
    if base != "native":
        _check_scaled_size(scaled_sizes((0, 0), base, config.image_size, scales), scales, smallest, config.model, "")
    total = dataset.wsss_size
    todo = io.pending(dataset, cams_dir, ".npy", overwrite)
    for index, path in progress_bar(todo, desc=f"make-cams {spec['split']}", enabled=progress, dynamic_ncols=True):
        item = io.raw_item(dataset, index)
        if base == "native":
            _check_scaled_size(scaled_sizes(item.image.shape[:2], base, config.image_size, scales), scales,
                               smallest, config.model, f"{dataset.image_id(index)}: ")
        maps = image_cams(gain, item.image, item.labels, len(classes), mean=state["mean"], std=state["std"],
                          train_size=config.image_size, scales=scales, flip=flip, base=base,
                          class_agnostic=class_agnostic)
        io.save_cams(path, np.asarray(item.labels, dtype=np.int64), maps, dtype)
    written, skipped = len(todo), total - len(todo)
    logger.info("make-cams: %d written, %d already there, in %s", written, skipped, cams_dir)
    return {"written": written, "skipped": skipped, "images": total, "output": str(output)}


def _check_scaled_size(sizes: Sequence[tuple[int, int]], scales: Sequence[float], smallest: int, model: str,
                       where: str) -> None:
    """One-line ``ValueError`` naming ``--scales`` / ``--base-size`` when a scaled input is smaller
    than ``smallest``, the side ``model`` takes at least."""
    side = min(min(size) for size in sizes)
    if side < smallest:
        raise ValueError(f"{where}--scales {min(scales)} gives {side}-pixel inputs, too small "
                         f"for {model}: the smallest input it takes is {smallest} x {smallest} pixels (raise --scales "
                         "or --base-size)")


def _missing(folder: Path, dataset, suffix: str) -> list[str]:
    return [dataset.image_id(i) for i in range(dataset.wsss_size)
            if not io.item_path(folder, dataset.image_id(i), suffix).is_file()]


def require_complete(folder: Path, dataset, suffix: str, hint: str) -> None:
    """One-line ``FileNotFoundError`` when some image of ``dataset`` has no file in ``folder``."""
    missing = _missing(folder, dataset, suffix)
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} of {dataset.wsss_size} images have no {suffix} file "
                                f"(first: {missing[0]}); run {hint} to finish it")


def dense_maps(keys: np.ndarray, maps: np.ndarray, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(maps (1, C, H, W), labels (1, C))`` from a cams file's keys and maps."""
    dense = torch.zeros(1, num_classes, *maps.shape[-2:])
    labels = torch.zeros(1, num_classes)
    if keys.size:
        if keys.min() < 0 or keys.max() >= num_classes:
            raise ValueError(f"cams keys {keys.tolist()} out of range for {num_classes} classes")
        dense[0, torch.from_numpy(keys)] = torch.from_numpy(maps)
        labels[0, torch.from_numpy(keys)] = 1.0
    return dense, labels


def per_class_rows(names: Sequence[str], iou: Sequence[float]) -> list[dict[str, Any]]:
    return [{"class": name, "IoU": (None if math.isnan(v) else 100 * v)} for name, v in zip(names, iou)]


def eval_cams(
    cams_dir: str | Path,
    *,
    thresholds: Sequence[float] | None = None,
    data_root: str | None = None,
    output: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Stage 2: mIoU of the maps in ``cams_dir`` (a ``make-cams`` output) against the ground-truth
    masks: background where no ground-truth class's map exceeds ``t``, else the strongest class
    (:class:`~gainet.evaluation.localization.AttentionSweep`), ``C + 1`` classes with background,
    255 ignored, ``t`` swept over ``thresholds`` (default 0.05..0.95). Images without a mask are
    skipped. Writes ``eval_cams.json`` and ``eval_cams.md`` into ``output`` (default ``cams_dir``).

    Returns ``best_threshold``, ``best_miou``, ``curve`` ``[(t, mIoU)]``, ``per_class_iou``,
    ``pixel_accuracy``, ``classes`` (background first), ``images`` (with masks) and ``markdown``.
    """
    cams_dir = Path(cams_dir)
    meta = io.read_meta(cams_dir, CAMS_STAGE, "gainet make-cams")
    dataset, classes = io.open_stage_dataset(meta, data_root)
    folder = cams_dir / CAMS_DIR
    require_complete(folder, dataset, ".npy", "gainet make-cams")
    sweep = AttentionSweep(len(classes), default_thresholds() if thresholds is None else thresholds)
    images = 0
    for _, item in progress_bar(io.iterate(dataset), total=dataset.wsss_size, desc="eval-cams", enabled=progress,
                        dynamic_ncols=True):
        if item.segmentation is None:
            continue
        keys, maps = io.load_cams(io.item_path(folder, item.image_id, ".npy"))
        if maps.shape[-2:] != item.segmentation.shape:
            raise ValueError(f"{item.image_id}: maps {maps.shape[-2:]} and mask {item.segmentation.shape} differ in size")
        dense, labels = dense_maps(keys, maps, len(classes))
        sweep.update(dense, labels, torch.from_numpy(item.segmentation)[None])
        images += 1
    if images == 0:
        raise ValueError(f"{cams_dir}: none of the {dataset.wsss_size} images has a ground-truth mask to compare with")
    result = sweep.compute()
    names = ["background", *classes]
    summary = {
        "best_threshold": result["best_threshold"], "best_miou": result["best_miou"], "curve": result["curve"],
        "per_class_iou": result["per_class_iou"], "pixel_accuracy": result["pixel_accuracy"],
        "classes": names, "images": images, "method": meta.get("method"),
    }
    markdown = (
        f"# CAM mIoU: {cams_dir} ({meta.get('method')}, {images} images)\n\n"
        f"Best background threshold {summary['best_threshold']:.2f}: mIoU {100 * summary['best_miou']:.1f}, "
        f"pixel accuracy {100 * summary['pixel_accuracy']:.1f}.\n\n"
        + markdown_table(per_class_rows(names, summary["per_class_iou"]), ["class", "IoU"], ".1f")
        + "\n\n## mIoU by background threshold\n\n"
        + markdown_table([{"threshold": t, "mIoU": 100 * m} for t, m in summary["curve"]], ["threshold", "mIoU"], ".2f")
        + "\n"
    )
    out = Path(output) if output else cams_dir
    io.write_json(out / EVAL_CAMS_JSON, summary)
    (out / EVAL_CAMS_MD).write_text(markdown)
    return {**summary, "markdown": markdown}
