"""The training loop for cam, gain and gain-ext: warm-up, mixed precision, DDP, atomic
checkpoints with exact resume, progress bars, CSV and TensorBoard logs."""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from gainet.core import GAIN, AdversarialGAIN, guidance_losses
from gainet.evaluation.evaluate import evaluate_gain
from gainet.models import build_classifier
from gainet.training.checkpoint import load_checkpoint, resolve_resume, save_atomic
from gainet.training.config import ADVERSARIAL_METHODS, SUPERVISED_METHODS, TrainConfig
from gainet.training.data import build_datasets, epoch_loader, eval_loader
from gainet.training.distributed import DistributedContext

logger = logging.getLogger(__name__)


def resolve_device(name: str, context: DistributedContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", context.local_rank)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_gain(config: TrainConfig, num_classes: int, multi_label: bool) -> GAIN:
    """The classifier of ``config.model`` wrapped in GAIN with the config's hyperparameters."""
    pretrained: bool | str = False
    if config.pretrained:
        pretrained = True if config.pretrained in ("imagenet", "true", "True") else config.pretrained
    model = build_classifier(config.model, num_classes, pretrained=pretrained, width=config.model_width)
    options: dict[str, Any] = dict(
        multi_label=multi_label, sigma=config.sigma, omega=config.omega, alpha=config.alpha,
        omega_e=config.omega_e, am_gradient=config.am_gradient, erased_batchnorm=config.erased_batchnorm,
        weights_grad=config.weights_grad, probe_size=config.image_size,
    )
    if config.method in ADVERSARIAL_METHODS:
        return AdversarialGAIN(model, config.attention_layer, area_weight=config.area_weight, **options)
    return GAIN(model, config.attention_layer, **options)


def build_optimizer(config: TrainConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, (2 * config.epochs) // 3), gamma=0.1)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or config.amp == "off":
        return None
    if config.amp == "fp16":
        return torch.float16
    if config.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


class Trainer:
    """Train one method on one dataset as ``config`` says; ``fit()`` runs to the last epoch.

    Output directory: ``last.pt`` (every epoch), ``best.pt`` (best validation classification
    score), ``metrics.csv`` (one row per epoch), ``config.yaml``, ``tensorboard/``, ``final.json``.
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.context = DistributedContext.from_env()
        self.device = resolve_device(config.device, self.context)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.context.init(self.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.output_dir = Path(config.output_dir)
        seed_everything(config.seed)

        self.train_set, self.val_set = build_datasets(config)
        self.num_classes = len(self.train_set.classes)
        self.multi_label = bool(self.train_set.multi_label)
        self.gain = build_gain(config, self.num_classes, self.multi_label).to(self.device)
        if config.channels_last:
            self.gain = self.gain.to(memory_format=torch.channels_last)
        # DDP: BatchNorm normalises with the global batch's statistics (as one process would).
        self.gain = self.context.sync_batchnorm(self.gain, self.device)
        self.module: nn.Module = (
            DistributedDataParallel(self.gain, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.context.enabled else self.gain
        )
        self.adversarial = isinstance(self.gain, AdversarialGAIN)
        attention_parameters = self.gain.attention_parameters() if self.adversarial else list(self.gain.parameters())
        self.optimizer = build_optimizer(config, [p for p in attention_parameters if p.requires_grad])
        self.scheduler = build_scheduler(config, self.optimizer)
        # The adversary has its own optimiser and schedule (same settings), stepped on its own loss.
        self.adversary_optimizer = (
            build_optimizer(config, [p for p in self.gain.adversary.parameters() if p.requires_grad])
            if self.adversarial else None
        )
        self.adversary_scheduler = build_scheduler(config, self.adversary_optimizer) if self.adversary_optimizer else None
        self.amp_dtype = _amp_dtype(config, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.start_epoch = 0
        self.best_score: float | None = None
        self.history: list[dict[str, Any]] = []
        self._writer = None

        resume = resolve_resume(config.resume, self.output_dir)
        if resume:
            self.load(resume)

    # ------------------------------------------------------------------ state
    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "format": "gainet-checkpoint-1",
            "config": self.config.to_dict(),
            "epoch": epoch,
            "classes": list(self.train_set.classes),
            "multi_label": self.multi_label,
            "mean": list(self.train_set.mean),
            "std": list(self.train_set.std),
            "model": self.gain.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "adversary_optimizer": self.adversary_optimizer.state_dict() if self.adversary_optimizer else None,
            "adversary_scheduler": self.adversary_scheduler.state_dict() if self.adversary_scheduler else None,
            "best_score": self.best_score,
            "history": self.history,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }

    def load(self, path: str | Path) -> None:
        """Restore model, optimiser, schedule, scaler and history; training continues after the
        checkpoint's epoch."""
        state = load_checkpoint(path, map_location=self.device)
        if list(state["classes"]) != list(self.train_set.classes):
            raise ValueError(f"{path}: checkpoint classes {state['classes']} differ from the dataset's")
        self.gain.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.adversary_optimizer is not None:
            if state.get("adversary_optimizer") is None:
                raise ValueError(f"{path}: checkpoint has no adversary optimiser state (method {state['config']['method']})")
            self.adversary_optimizer.load_state_dict(state["adversary_optimizer"])
            self.adversary_scheduler.load_state_dict(state["adversary_scheduler"])
        self.best_score = state["best_score"]
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"])
        logger.info("resumed from %s after epoch %d", path, self.start_epoch)

    def save(self, epoch: int, is_best: bool) -> None:
        if not self.context.is_main:
            return
        state = self.state_dict(epoch)
        save_atomic(state, self.output_dir / "last.pt")
        if self.config.keep_epoch_checkpoints:
            save_atomic(state, self.output_dir / f"epoch-{epoch}.pt")
        if is_best:
            save_atomic(state, self.output_dir / "best.pt")

    # ------------------------------------------------------------------ loop
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        config = self.config
        # Epoch-seeded RNG (augmentation, dropout): resuming at an epoch boundary is exact.
        torch.manual_seed(config.seed * 100_003 + epoch * 1_009 + self.context.rank)
        self.module.train()
        mine = config.method != "cam" and epoch >= config.warmup_epochs
        modes = config.guidance_modes
        use_masks = (config.method in SUPERVISED_METHODS or "l_e" in modes) and epoch >= config.warmup_epochs
        guided = [m for m in modes if m != "l_e"]
        # Own seeded stream for swap partners and fill grain: resuming at an epoch boundary is exact.
        guidance_generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch * 1_009 + self.context.rank + 7)
        skipped: dict[str, float] = {}
        loader = epoch_loader(self.train_set, config, epoch, self.context, pin_memory=self.device.type == "cuda")
        sums: dict[str, float] = {}
        steps = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs} {config.method}", leave=False,
                   disable=not (config.progress and self.context.is_main), dynamic_ncols=True)
        for batch in bar:
            images = batch["image"].to(self.device, non_blocking=True)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = batch["labels"].to(self.device, non_blocking=True)
            masks = supervised = None
            if use_masks or guided:
                masks = batch["target_masks"].to(self.device, non_blocking=True)
                supervised = batch["supervised"].to(self.device, non_blocking=True)
            with self._autocast():
                output = self.module(images, labels, masks if use_masks else None, supervised if use_masks else None,
                                     mine=mine)
                guidance = guidance_losses(
                    self.gain, images, labels, masks, supervised, guided, scores=output.scores,
                    weights={m: config.guidance_weight for m in guided},
                    swap_mask=config.swap_mask if epoch >= config.warmup_epochs else "mask",
                    context_target=config.context_target, generator=guidance_generator,
                ) if guided else None
            loss = output.loss.float() if guidance is None else output.loss.float() + guidance.loss.float()
            total = loss if output.loss_adversary is None else loss + output.loss_adversary.float()
            if not torch.isfinite(total):
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch + 1} step {steps + 1}: L_cl={output.loss_cl.item():.4g} "
                    f"L_am={output.loss_am.item():.4g} L_e={output.loss_e.item():.4g} (lower lr or check the data)"
                )
            values = {"loss": loss.item(), "loss_cl": output.loss_cl.item(), "loss_am": output.loss_am.item(),
                      "loss_e": output.loss_e.item()}
            if guidance is not None:
                values.update({f"guide_{m.replace('-', '_')}": t.item() for m, t in guidance.terms.items()})
                for key, count in guidance.counts.items():
                    skipped[key] = skipped.get(key, 0.0) + count
            if output.loss_adversary is not None:
                values["loss_adversary"] = output.loss_adversary.item()
                values["loss_area"] = output.loss_area.item()
            if self.context.enabled and (mine or use_masks or self.adversarial):
                total = total + self._global_batch_correction(output, supervised, values)
            optimizers = [o for o in (self.optimizer, self.adversary_optimizer) if o is not None]
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            # The adversary's loss touches only its own parameters: one backward fills both.
            self.scaler.scale(total).backward()
            if config.grad_clip:
                for optimizer in optimizers:
                    self.scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(
                        [p for group in optimizer.param_groups for p in group["params"]], config.grad_clip)
            for optimizer in optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
            steps += 1
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{values['loss']:.3f}", am=f"{values['loss_am']:.3f}")
        if steps == 0:
            raise ValueError(
                f"no training step: {len(self.train_set)} images < batch size {config.batch_size} (drop_last)"
            )
        means = {f"train/{k}": v / steps for k, v in sums.items()}
        # Counterfactuals built and images skipped (empty mask, no context, no partner): epoch totals.
        means.update({f"guidance/{k}": v for k, v in skipped.items()})
        if any(skipped.get(k, 0) for k in ("empty_mask", "no_context", "no_partner")):
            logger.info("epoch %d guidance skipped: %s", epoch + 1,
                        ", ".join(f"{k}={int(skipped[k])}" for k in ("empty_mask", "no_context", "no_partner") if skipped.get(k)))
        return self.context.mean(means, self.device)

    def _global_batch_correction(self, output: Any, supervised: torch.Tensor | None,
                                 values: dict[str, float]) -> torch.Tensor:
        """DDP only: the term that turns this rank's loss into its share of the global-batch loss.

        L_am (mean over the images with a label), L_e (mean over the supervised images), the
        adversary's loss (mean over clean + erased rows) and L_area (mean over the maps) average
        over a number of items that can differ between ranks; DDP's plain average of the per-rank
        means would then weight them differently from one process on the same global batch (L_e
        with 1 supervised image on one rank and 0 on the other would get half its weight). Each
        term is rescaled by ``W n_r / N`` (:meth:`DistributedContext.global_mean_scales`); the
        logged ``values`` are rescaled too, so their mean over ranks is the global-batch mean.
        L_cl is a mean over the equal per-rank batches and needs nothing.
        """
        gain = self.gain
        images = torch.unique(output.pairs[:, 0])
        n_am = images.numel() if output.erased_scores is not None else 0
        n_e = int(supervised[images].sum()) if supervised is not None and output.loss_e.requires_grad else 0
        n_maps = output.pairs.shape[0] if output.attention is not None else 0
        rows = output.scores.shape[0] + (output.pairs.shape[0] if output.erased is not None else 0)
        s_am, s_e, s_area, s_adv = self.context.global_mean_scales([n_am, n_e, n_maps, rows], self.device)
        correction = (s_am - 1.0) * gain.alpha * output.loss_am.float() + (s_e - 1.0) * gain.omega_e * output.loss_e.float()
        values["loss"] += (s_am - 1.0) * gain.alpha * values["loss_am"] + (s_e - 1.0) * gain.omega_e * values["loss_e"]
        values["loss_am"] *= s_am
        values["loss_e"] *= s_e
        if output.loss_adversary is not None:
            area_weight = gain.area_weight if output.loss_area.requires_grad else 0.0
            correction = correction + (s_area - 1.0) * area_weight * output.loss_area.float()
            correction = correction + (s_adv - 1.0) * output.loss_adversary.float()
            values["loss"] += (s_area - 1.0) * area_weight * values["loss_area"]
            values["loss_area"] *= s_area
            values["loss_adversary"] *= s_adv
        return correction

    def evaluate(self) -> dict[str, Any]:
        """Validation metrics (rank 0 evaluates the whole split; other ranks wait)."""
        loader = eval_loader(self.val_set, max(1, self.config.batch_size), self.config.num_workers,
                             pin_memory=self.device.type == "cuda")
        return evaluate_gain(
            self.gain, loader, device=self.device, max_batches=self.config.eval_batches,
            progress=self.config.progress, desc=f"val {self.config.method}",
        )

    def _score(self, metrics: dict[str, Any]) -> float:
        return float(metrics.get("mAP", metrics.get("accuracy", float("nan"))))

    def _log(self, row: dict[str, Any]) -> None:
        if not self.context.is_main:
            return
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        csv_path = self.output_dir / "metrics.csv"
        rows = [*self.history]
        columns: list[str] = []
        for r in rows:
            columns += [k for k in r if k not in columns and not isinstance(r[k], (list, dict))]
        with open(csv_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        if self.config.tensorboard:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.output_dir / "tensorboard"))
            for key, value in scalars.items():
                if key != "epoch" and math.isfinite(float(value)):
                    self._writer.add_scalar(key, value, int(row["epoch"]))
            self._writer.flush()

    def fit(self) -> dict[str, Any]:
        """Train from ``start_epoch`` to ``epochs``; returns the final validation metrics."""
        config = self.config
        if self.context.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(_yaml(config.to_dict()))
        final: dict[str, Any] = dict(self.history[-1]) if self.history else {}
        for epoch in range(self.start_epoch, config.epochs):
            started = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(self.train_epoch(epoch))
            self.scheduler.step()
            if self.adversary_scheduler is not None:
                self.adversary_scheduler.step()
            row["train/seconds"] = time.perf_counter() - started
            last = epoch + 1 == config.epochs
            is_best = False
            if last or (epoch + 1) % max(1, config.eval_every) == 0:
                metrics = self.evaluate() if self.context.is_main else {}
                row.update({f"val/{k}": v for k, v in metrics.items() if not isinstance(v, (list, dict))})
                score = self._score(metrics) if metrics else float("nan")
                is_best = math.isfinite(score) and (self.best_score is None or score > self.best_score)
                if is_best:
                    self.best_score = score
                final = {**row, "val": metrics}
            self.history.append(row)
            self.save(epoch + 1, is_best)
            self._log(row)
            self.context.barrier()
            if self.context.is_main:
                logger.info("epoch %d: %s", epoch + 1, _summary(row))
        if self.context.is_main:
            (self.output_dir / "final.json").write_text(json.dumps(_jsonable(final), indent=2))
        if self._writer is not None:
            self._writer.close()
        return final


def _summary(row: dict[str, Any]) -> str:
    keys = ["train/loss", "train/loss_am", "val/mAP", "val/accuracy", "val/cam_miou", "val/coverage"]
    return " ".join(f"{k}={row[k]:.4f}" for k in keys if k in row and isinstance(row[k], float))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _yaml(values: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(values, sort_keys=False)


def train(config: TrainConfig) -> dict[str, Any]:
    """Run one training job (single process or one rank of a torchrun job)."""
    trainer = Trainer(config)
    try:
        return trainer.fit()
    finally:
        trainer.context.shutdown()
