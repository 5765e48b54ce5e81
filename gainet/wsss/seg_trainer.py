"""Stages 4 and 5: a torchvision segmentation network trained on the pseudo labels
(``train-seg``), and its mIoU on the ground-truth validation split (``eval-seg``)."""

from __future__ import annotations

import csv
import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from gainet.data.transforms import IGNORE_INDEX, JointTransform
from gainet.evaluation.report import markdown_table
from gainet.evaluation.segmentation import ConfusionMatrix
from gainet.io.outputs import refuse_existing_run, remove_outputs
from gainet.io.progress import progress_bar
from gainet.training.checkpoint import load_checkpoint, remove_stale_temporaries, resolve_resume, save_atomic
from gainet.training.output_lock import OutputDirLock
from gainet.wsss import data as io
from gainet.wsss.cams import parse_base_size, per_class_rows, require_complete, scaled_sizes, to_input
from gainet.wsss.crf import CRFParams, crf_probabilities
from gainet.wsss.config import SegConfig
from gainet.wsss.pseudo_labels import LABELS_DIR, LABELS_STAGE
from gainet.wsss.segmentation_model import build_segmentation_model, logits

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "gainet-seg-checkpoint-1"
PREDICTIONS_DIR = "predictions"
PREDICTIONS_STAGE = "seg-predictions"
EVAL_SEG_JSON = "eval_seg.json"
EVAL_SEG_MD = "eval_seg.md"
# Settings a resumed run must share with its checkpoint (epochs may grow: a run can be continued).
RESUME_FIXED = ("weights", "weights_backbone", "bn_momentum", "crop_size", "crop_scale", "batch_size", "optimizer",
                "lr", "momentum", "weight_decay", "schedule", "seed", "limit")
# A train-seg output holding a run (finished or resumable), and every file a run writes (--overwrite).
SEG_RUN_MARKERS = ("final.json", "last.pt")
SEG_RUN_FILES = ("last.pt", "epoch-*.pt", "metrics.csv", "config.json", "final.json")


class PseudoLabelDataset(Dataset):
    """Images of a ``pseudo-labels`` output with their label PNGs, randomly cropped and flipped
    together (``JointTransform``; the label is resized with nearest neighbour and padded with
    255). Items: ``{"image": (3, S, S) float, "target": (S, S) long}``."""

    def __init__(self, labels_dir: str | Path, meta: dict[str, Any], crop_size: int,
                 crop_scale: Sequence[float] = (0.5, 1.0), data_root: str | None = None,
                 limit: int | None = None) -> None:
        self.folder = Path(labels_dir) / LABELS_DIR
        self.dataset = io.open_dataset(meta["data"], root=data_root)
        if limit is not None:
            self.dataset.wsss_size = min(int(limit), self.dataset.wsss_size)
        require_complete(self.folder, self.dataset, ".png", "gainet pseudo-labels")
        self.transform = JointTransform(crop_size, train=True, mean=meta["mean"], std=meta["std"],
                                        crop_scale=tuple(crop_scale), color_jitter=None)

    def __len__(self) -> int:
        return self.dataset.wsss_size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = io.raw_item(self.dataset, index)
        label = io.load_index_png(io.item_path(self.folder, item.image_id, ".png"))
        if label.shape != item.image.shape[:2]:
            raise ValueError(f"{item.image_id}: label {label.shape} and image {item.image.shape[:2]} differ in size")
        height, width = label.shape
        image, target, _, _ = self.transform(
            tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(item.image)).permute(2, 0, 1)),
            tv_tensors.Mask(torch.from_numpy(label)[None]),
            tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(height, width)),
        )
        return {"image": image, "target": target}


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class SegTrainer:
    """Train a segmentation network on pseudo labels as ``config`` says; ``fit()`` runs to the last
    epoch. Output: ``last.pt`` (every epoch), ``metrics.csv``, ``config.json``, ``final.json``.
    Resuming from an epoch checkpoint continues exactly (epoch-seeded data order and crops)."""

    def __init__(self, config: SegConfig) -> None:
        if not config.labels_dir:
            raise ValueError("train-seg needs labels_dir (a gainet pseudo-labels output)")
        self.output_dir = Path(config.output_dir)
        if not config.resume and not config.overwrite:  # never replace a run silently
            refuse_existing_run(self.output_dir, SEG_RUN_MARKERS)
        # One run per output directory, as for `gainet train`: held until fit() ends (or this fails).
        self.lock = OutputDirLock(self.output_dir).acquire()
        try:
            self._build(config)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the output directory's lock."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _build(self, config: SegConfig) -> None:
        if config.overwrite:  # under the lock: no other run's files are in flight
            removed = remove_outputs(self.output_dir, SEG_RUN_FILES)
            if removed:
                logger.info("--overwrite: deleted %d file(s) of the earlier run in %s", len(removed), self.output_dir)
            config = config.replace(overwrite=False)  # recorded as a plain run, which --resume auto continues
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = _device(config.device)
        self.labels_meta = io.read_meta(config.labels_dir, LABELS_STAGE, "gainet pseudo-labels")
        self.classes = ["background", *self.labels_meta["classes"]]
        crop = config.crop_size or int(self.labels_meta["data"]["image_size"])
        self.train_set = PseudoLabelDataset(config.labels_dir, self.labels_meta, crop, config.crop_scale,
                                            config.data_root, config.limit)
        io.check_classes(self.train_set.dataset.classes, self.labels_meta["classes"], "the pseudo labels' dataset")
        torch.manual_seed(config.seed)
        self.model = build_segmentation_model(
            config.model, len(self.classes), weights=config.weights, weights_backbone=config.weights_backbone,
            bn_momentum=config.bn_momentum,
        ).to(self.device)
        self.steps_per_epoch = max(1, len(self.train_set) // config.batch_size)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        elif config.optimizer == "adam":
            self.optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
        total = config.epochs * self.steps_per_epoch
        if config.schedule == "poly":
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: (1 - min(step, total) / total) ** 0.9)
        elif config.schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total)
        else:
            self.scheduler = torch.optim.lr_scheduler.ConstantLR(self.optimizer, factor=1.0, total_iters=0)
        self.amp_dtype = _amp_dtype(config.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        resume = resolve_resume(config.resume, self.output_dir)
        if resume:
            self.load(resume)

    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "epoch": epoch,
            "classes": self.classes,
            "data": self.labels_meta["data"],
            "mean": list(self.labels_meta["mean"]),
            "std": list(self.labels_meta["std"]),
            "labels": {k: self.labels_meta.get(k) for k in ("method", "cams", "fg_threshold", "bg_threshold", "crf")},
            "model_name": self.config.model,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
        }

    def load(self, path: str | Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a train-seg checkpoint")
        io.check_classes(state["classes"], self.classes, f"checkpoint {path}")
        if state["config"]["model"] != self.config.model:
            raise ValueError(f"{path}: checkpoint model {state['config']['model']!r} differs from {self.config.model!r}")
        # A resumed run continues the same recipe on the same labels (more epochs may be asked for);
        # anything else would silently train a hybrid into the folder of the earlier run.
        current = json.loads(json.dumps(self.config.to_dict()))
        differs = [key for key in RESUME_FIXED if key in state["config"] and state["config"][key] != current[key]]
        labels = {k: self.labels_meta.get(k) for k in ("method", "cams", "fg_threshold", "bg_threshold", "crf")}
        if "labels" in state and json.loads(json.dumps(state["labels"])) != json.loads(json.dumps(labels)):
            differs.append("pseudo labels")
        if differs:
            raise ValueError(f"{path}: made with other settings ({', '.join(differs)}); use --overwrite or another "
                             "--output-dir")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"])
        logger.info("resumed from %s after epoch %d", path, self.start_epoch)

    def _autocast(self):
        return nullcontext() if self.amp_dtype is None else torch.autocast("cuda", dtype=self.amp_dtype)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        config = self.config
        torch.manual_seed(config.seed * 100_003 + epoch * 1_009)  # crops and flips of this epoch
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        loader = DataLoader(self.train_set, batch_size=config.batch_size, shuffle=True, generator=generator,
                            drop_last=len(self.train_set) >= config.batch_size, num_workers=config.num_workers,
                            pin_memory=self.device.type == "cuda")
        self.model.train()
        total = steps = 0.0
        bar = progress_bar(loader, desc=f"train-seg epoch {epoch + 1}/{config.epochs}", leave=False,
                   enabled=config.progress, dynamic_ncols=True)
        for batch in bar:
            images = batch["image"].to(self.device, non_blocking=True)
            targets = batch["target"].to(self.device, non_blocking=True)
            with self._autocast():
                loss = F.cross_entropy(logits(self.model, images).float(), targets, ignore_index=IGNORE_INDEX)
            if not torch.isfinite(loss):
                if bool((targets == IGNORE_INDEX).all()):
                    loss = loss.new_zeros((), requires_grad=True)  # a batch of unsure pixels only
                else:
                    raise FloatingPointError(f"non-finite loss at epoch {epoch + 1} step {int(steps) + 1} (lower lr)")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            total += loss.item()
            steps += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
        return {"train/loss": total / max(steps, 1), "train/steps": int(steps)}

    def fit(self) -> dict[str, Any]:
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict[str, Any]:
        config = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.output_dir)  # left by a write that a kill interrupted
        (self.output_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        for epoch in range(self.start_epoch, config.epochs):
            started = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(self.train_epoch(epoch))
            row["train/seconds"] = time.perf_counter() - started
            self.history.append(row)
            state = self.state_dict(epoch + 1)
            save_atomic(state, self.output_dir / "last.pt")
            if config.keep_epoch_checkpoints:
                save_atomic(state, self.output_dir / f"epoch-{epoch + 1}.pt")
            with open(self.output_dir / "metrics.csv", "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=list(self.history[0]))
                writer.writeheader()
                writer.writerows(self.history)
            logger.info("train-seg epoch %d: loss %.4f", epoch + 1, row["train/loss"])
        final = dict(self.history[-1]) if self.history else {}
        (self.output_dir / "final.json").write_text(json.dumps(final, indent=2))
        return final


def train_seg(config: SegConfig) -> dict[str, Any]:
    """Run one ``train-seg`` job; returns the last epoch's log row."""
    return SegTrainer(config).fit()


# ----------------------------------------------------------------------------- eval-seg
def load_seg_model(checkpoint: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The trained segmentation network (eval mode) of a ``train-seg`` checkpoint and its state."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{checkpoint}: not a train-seg checkpoint (a classifier's? use gainet evaluate)")
    model = build_segmentation_model(state["model_name"], len(state["classes"]), bn_momentum=None)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    image: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    base: str | int = "native",
    train_size: int = 64,
) -> torch.Tensor:
    """Class probabilities ``(L, H, W)`` on one uint8 ``(H, W, 3)`` image: softmax of the logits
    at each scale (and mirrored with ``flip``), resized bilinearly to ``(H, W)`` and averaged."""
    height, width = image.shape[:2]
    device = next(model.parameters()).device
    original = to_input(image, mean, std, device)
    total = None
    views = 0
    for size in scaled_sizes((height, width), base, train_size, scales):
        batch = original if tuple(size) == (height, width) else F.interpolate(
            original, size=size, mode="bilinear", align_corners=False, antialias=True)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        probabilities = logits(model, batch).float().softmax(1)
        if flip:
            probabilities[1] = probabilities[1].flip(-1)
        probabilities = F.interpolate(probabilities, size=(height, width), mode="bilinear", align_corners=False)
        total = probabilities.sum(0) if total is None else total + probabilities.sum(0)
        views += batch.shape[0]
    return (total / views).cpu()


def evaluate_segmentation(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    split: str = "val",
    data_root: str | None = None,
    limit: int | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    base_size: str | int | None = "native",
    crf: bool = False,
    crf_params: CRFParams | None = None,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Stage 5: predictions ``output_dir/predictions/<image_id>.png`` for every image of ``split``
    (skipped where present unless ``overwrite``), then the mIoU of those saved PNGs against the
    ground truth (``C + 1`` classes, 255 ignored): ``eval_seg.json`` / ``eval_seg.md``.

    Returns ``miou``, ``per_class_iou``, ``pixel_accuracy``, ``confusion``, ``classes``,
    ``images`` (with masks), ``written``, ``skipped``, ``markdown``.
    """
    if not scales or any(not (s > 0) for s in scales):
        raise ValueError(f"scales must be positive numbers, got {list(scales)}")
    base = parse_base_size(base_size if base_size is not None else "native")
    params = (crf_params or CRFParams()) if crf else None
    if params is not None:
        from gainet.wsss.crf import _densecrf

        _densecrf()
    torch_device = _device(device)
    model, state = load_seg_model(checkpoint, torch_device)
    classes = list(state["classes"])
    spec = {**state["data"], "split": split, "num_images": limit}
    if data_root:
        spec["root"] = str(data_root)
    dataset = io.open_dataset(spec)
    io.check_classes(["background", *dataset.classes], classes, f"dataset {spec['dataset']!r}")
    output = Path(output_dir)
    meta = {
        "stage": PREDICTIONS_STAGE, "checkpoint": str(Path(checkpoint).resolve()), "epoch": state["epoch"],
        "classes": classes[1:], "data": spec, "scales": [float(s) for s in scales], "flip": bool(flip),
        "base_size": base, "crf": None if params is None else params.to_dict(), "method": state["labels"].get("method"),
    }
    io.claim_folder(output, meta, ["checkpoint", "epoch", "data", "scales", "flip", "base_size", "crf"], overwrite)
    folder = output / PREDICTIONS_DIR
    train_size = int(state["config"].get("crop_size") or spec["image_size"])
    todo = io.pending(dataset, folder, ".png", overwrite)
    for index, path in progress_bar(todo, desc=f"eval-seg predict {split}", enabled=progress, dynamic_ncols=True):
        item = io.raw_item(dataset, index)
        probabilities = predict_probabilities(model, item.image, mean=state["mean"], std=state["std"], scales=scales,
                                              flip=flip, base=base, train_size=train_size)
        if params is not None:
            probabilities = torch.from_numpy(crf_probabilities(item.image, probabilities.numpy(), params))
        io.save_index_png(path, probabilities.argmax(0).numpy())
    result = score_predictions(output, dataset, classes, progress=progress)
    return {**result, "written": len(todo), "skipped": dataset.wsss_size - len(todo)}


def score_predictions(output: Path, dataset: Dataset, classes: Sequence[str], *, progress: bool = True) -> dict[str, Any]:
    """mIoU of the saved ``output/predictions/*.png`` against ``dataset``'s ground truth; writes
    ``eval_seg.json`` / ``eval_seg.md`` in ``output``."""
    folder = Path(output) / PREDICTIONS_DIR
    require_complete(folder, dataset, ".png", "gainet eval-seg")
    matrix = ConfusionMatrix(len(classes))
    images = 0
    for _, item in progress_bar(io.iterate(dataset), total=dataset.wsss_size, desc="eval-seg score", enabled=progress,
                        dynamic_ncols=True):
        if item.segmentation is None:
            continue
        prediction = torch.from_numpy(io.load_index_png(io.item_path(folder, item.image_id, ".png")))
        if tuple(prediction.shape) != item.segmentation.shape:
            raise ValueError(f"{item.image_id}: prediction {tuple(prediction.shape)} and mask "
                             f"{item.segmentation.shape} differ in size")
        matrix.update(prediction[None], torch.from_numpy(item.segmentation)[None])
        images += 1
    if images == 0:
        raise ValueError(f"{output}: none of the {dataset.wsss_size} images has a ground-truth mask to compare with")
    scores = matrix.compute()
    meta = json.loads((Path(output) / io.META_FILE).read_text())
    summary = {
        "miou": scores["miou"], "per_class_iou": scores["iou_per_class"], "pixel_accuracy": scores["pixel_accuracy"],
        "confusion": scores["confusion"], "classes": list(classes), "images": images, "method": meta.get("method"),
        "split": meta["data"]["split"], "scales": meta["scales"], "flip": meta["flip"], "crf": meta["crf"] is not None,
    }
    markdown = (
        f"# Segmentation mIoU: {output} ({summary['method']}, {summary['split']}, {images} images)\n\n"
        f"mIoU {100 * summary['miou']:.1f}, pixel accuracy {100 * summary['pixel_accuracy']:.1f} "
        f"(scales {summary['scales']}, flip {summary['flip']}, CRF {summary['crf']}).\n\n"
        + markdown_table(per_class_rows(classes, summary["per_class_iou"]), ["class", "IoU"], ".1f") + "\n"
    )
    io.write_json(Path(output) / EVAL_SEG_JSON, summary)
    (Path(output) / EVAL_SEG_MD).write_text(markdown)
    return {**summary, "markdown": markdown}
