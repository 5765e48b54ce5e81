"""The training loop for cam, gain and gain-ext: warm-up, mixed precision, DDP, atomic
checkpoints with exact resume, progress bars, CSV and TensorBoard logs."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gainet.core import (
    GAIN,
    AdversarialGAIN,
    CounterfactualCollate,
    CounterfactualRows,
    GuidanceBatch,
    batch_transforms,
    build_guides,
    empty_target_pairs,
    term_mean,
)
from gainet.data.errors import SKIP_EXAMPLES, skip_line, skip_summary
from gainet.evaluation.evaluate import evaluate_gain
from gainet.io.input_size import check_input_size
from gainet.io.outputs import refuse_existing_run, remove_outputs
from gainet.io.progress import progress_bar
from gainet.models import attention_layer_name, build_classifier
from gainet.training.checkpoint import (
    load_checkpoint,
    load_init_weights,
    non_finite_tensors,
    remove_stale_temporaries,
    resolve_resume,
    save_atomic,
    write_text_atomic,
)
from gainet.training.config import ADVERSARIAL_METHODS, SUPERVISED_METHODS, TrainConfig, check_resume
from gainet.training.data import build_datasets, epoch_loader, eval_loader
from gainet.training.defaults import warn_at_label_prior
from gainet.training.distributed import DistributedContext
from gainet.training.output_lock import OutputDirLock

logger = logging.getLogger(__name__)

# Files whose presence means the output directory holds a run (finished: final.json; or one that
# can be resumed: last.pt), and every file a run writes (what --overwrite deletes; result.json is
# a bias-study run's cached evaluation).
RUN_MARKERS = ("final.json", "last.pt")
RUN_FILES = ("last.pt", "best.pt", "epoch-*.pt", "metrics.csv", "config.yaml", "final.json", "result.json",
             "tensorboard")


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


def build_gain(config: TrainConfig, num_classes: int, multi_label: bool, log_level: int = logging.INFO) -> GAIN:
    """The classifier of ``config.model`` wrapped in GAIN with the config's hyperparameters;
    ``log_level`` of the lines describing its attention layer (DEBUG for a model rebuilt again)."""
    pretrained: bool | str = False
    if config.pretrained:
        pretrained = True if config.pretrained in ("imagenet", "true", "True") else config.pretrained
    model = build_classifier(config.model, num_classes, pretrained=pretrained, width=config.model_width)
    # Before GAIN's probes run the model at this size: a side too small is a one-line error.
    check_input_size(model, config.image_size, "--image-size", config.model)
    options: dict[str, Any] = dict(
        multi_label=multi_label, sigma=config.sigma, omega=config.omega, alpha=config.alpha,
        omega_e=config.omega_e, am_gradient=config.am_gradient, erased_batchnorm=config.erased_batchnorm,
        counterfactual_batchnorm=config.counterfactual_batchnorm,
        weights_grad=config.weights_grad, probe_size=config.image_size, log_level=log_level,
    )
    layer = attention_layer_name(config.model, config.attention_layer)  # "stride16" -> its module
    if config.method in ADVERSARIAL_METHODS:
        return AdversarialGAIN(model, layer, area_weight=config.area_weight, **options)
    return GAIN(model, layer, **options)


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
        self.output_dir = Path(config.output_dir)
        # A resume that cannot continue this checkpoint fails here, before anything is written.
        self.resume_path = resolve_resume(config.resume, self.output_dir)
        resume_state = load_checkpoint(self.resume_path) if self.resume_path else None
        self.overridden: list[str] = []
        if resume_state is not None:
            self.overridden = check_resume(resume_state["config"], config, int(resume_state["epoch"]), self.resume_path)
        # A run already there is continued (--resume) or replaced on purpose (--overwrite), never
        # silently: checked on every rank, before anything is written.
        if not config.resume and not config.overwrite:
            refuse_existing_run(self.output_dir, RUN_MARKERS)
        # One run per output directory (rank 0 writes every file); temporaries of killed writes go.
        self.lock = OutputDirLock(self.output_dir).acquire() if self.context.is_main else None
        self._writer = None
        try:
            if self.context.is_main:
                remove_stale_temporaries(self.output_dir)
                if config.overwrite:  # under the lock: no other run's files are in flight
                    removed = remove_outputs(self.output_dir, RUN_FILES)
                    if removed:
                        logger.info("--overwrite: deleted %d file(s) of the earlier run in %s", len(removed),
                                    self.output_dir)
            # The deletion is done; the run's recorded config (config.yaml, checkpoints) is a plain
            # run, which a later --resume auto can continue.
            self.config = config = config.replace(overwrite=False)
            self._build(config, resume_state)
        except BaseException:
            self.close()
            raise

    def _build(self, config: TrainConfig, resume_state: dict[str, Any] | None) -> None:
        self.device = resolve_device(config.device, self.context)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.context.init(self.device, timeout=config.dist_timeout)
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)

        self.train_set, self.val_set = build_datasets(config, self.context)
        self.num_classes = len(self.train_set.classes)
        self.multi_label = bool(self.train_set.multi_label)
        self.gain = build_gain(config, self.num_classes, self.multi_label)
        if config.init_weights and resume_state is None:  # a resume's checkpoint has the weights
            load_init_weights(self.gain, config.init_weights)
        self.gain = self.gain.to(self.device)
        if config.channels_last:
            self.gain = self.gain.to(memory_format=torch.channels_last)
        # Guidance: one small unit per mode; the counterfactual rows they read are built in the
        # DataLoader workers (collate) and go through GAIN's forward with the originals (as a
        # BatchNorm batch of their own by default: counterfactual_batchnorm).
        self.guides = build_guides(config.guidance_modes, context_target=config.context_target)
        self.input_gradient = any(guide.input_gradient for guide in self.guides)
        # DDP: BatchNorm normalises with the global batch's statistics (as one process would); a
        # loss through BatchNorm's backward (rrr, weights_grad) needs one whose backward has a
        # derivative (torch's SyncBatchNorm has none).
        self.gain = self.context.sync_batchnorm(self.gain, self.device,
                                                second_order=self.input_gradient or config.weights_grad,
                                                timeout=config.dist_timeout)
        self.module: nn.Module = (
            DistributedDataParallel(self.gain, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.context.enabled else self.gain
        )
        self.adversarial = isinstance(self.gain, AdversarialGAIN)
        transforms = batch_transforms(self.guides, multi_label=self.multi_label, partners=config.swap_partners)
        self.collate = CounterfactualCollate(transforms) if transforms else None
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
        self.best_epoch: int | None = None
        self.history: list[dict[str, Any]] = []
        self.load_skipped_files: list[str] = []  # the first few items that failed to load in this run
        self.final: dict[str, Any] = {}  # the last evaluated epoch's row with its "val" metrics
        self._writer = None
        self._resumed_config: dict[str, Any] | None = None

        if resume_state is not None:
            self.load_state(resume_state, self.resume_path)

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
            "best_epoch": self.best_epoch,
            "history": self.history,
            "final": _jsonable(self.final),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_rng_state(),
                "python": random.getstate(),
            },
        }

    def load(self, path: str | Path) -> None:
        """Restore model, optimiser, schedule, scaler and history from ``path``; training continues
        after the checkpoint's epoch."""
        state = load_checkpoint(path)
        self.overridden = check_resume(state["config"], self.config, int(state["epoch"]), path)
        self.load_state(state, path)

    def load_state(self, state: dict[str, Any], path: str | Path) -> None:
        """:meth:`load` from a checkpoint already read (and checked with ``check_resume``).

        A new ``epochs`` or ``lr`` (``self.overridden``) restarts the learning-rate schedule as if the
        run had begun with the new values: the next epoch's rate is the one a fresh run with this
        config would use at that epoch. Optimiser moments and everything else continue exactly."""
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
        # Checkpoints of older versions lack best_epoch and final: recovered from the history.
        self.best_epoch = state.get("best_epoch", _best_epoch(self.history, self.best_score))
        self.final = dict(state.get("final") or _final_row(self.history))
        self.start_epoch = int(state["epoch"])
        self._resumed_config = dict(state["config"])
        if self.overridden:
            self._restart_schedules()
            logger.info("resume overrides %s: learning-rate schedule recomputed for epoch %d",
                        ", ".join(f"{k}={getattr(self.config, k)}" for k in self.overridden), self.start_epoch + 1)
        logger.info("resumed from %s after epoch %d", path, self.start_epoch)

    def _restart_schedules(self) -> None:
        """New schedulers for the config's lr and epochs, stepped through the epochs already done."""
        for optimizer_name, scheduler_name in (("optimizer", "scheduler"),
                                               ("adversary_optimizer", "adversary_scheduler")):
            optimizer = getattr(self, optimizer_name)
            if optimizer is None:
                continue
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] = self.config.lr
            scheduler = build_scheduler(self.config, optimizer)
            with warnings.catch_warnings():  # stepping a schedule without optimiser steps is the point here
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(self.start_epoch):
                    scheduler.step()
            setattr(self, scheduler_name, scheduler)

    def save(self, epoch: int, is_best: bool) -> None:
        """Write this epoch's files, ``last.pt`` last: once it holds epoch N, best.pt, epoch-N.pt
        and metrics.csv hold epoch N too; a kill before it means a resume redoes epoch N exactly."""
        if not self.context.is_main:
            return
        state = self.state_dict(epoch)
        if is_best:
            save_atomic(state, self.output_dir / "best.pt")
        if self.config.keep_epoch_checkpoints:
            save_atomic(state, self.output_dir / f"epoch-{epoch}.pt")
        self._write_metrics_csv()
        save_atomic(state, self.output_dir / "last.pt")
        write_text_atomic(self.output_dir / "config.yaml", _yaml(self.config.to_dict()))

    def _write_metrics_csv(self) -> None:
        columns: list[str] = []
        for row in self.history:
            columns += [k for k in row if k not in columns and not isinstance(row[k], (list, dict))]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.history)
        write_text_atomic(self.output_dir / "metrics.csv", text.getvalue())

    def _repair_outputs(self) -> None:
        """Resuming: bring metrics.csv, config.yaml and best.pt in line with the checkpoint, so that
        a run killed between its writes (or one written by an older gainet, which saved last.pt
        first) ends with a consistent set. final.json is written when fit() ends."""
        if not self.context.is_main or self._resumed_config is None:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.history:
            self._write_metrics_csv()
        # config.yaml describes the checkpoint until a new epoch is saved with the new config
        write_text_atomic(self.output_dir / "config.yaml", _yaml(self._resumed_config))
        best = self.output_dir / "best.pt"
        if self.best_epoch is not None and self.best_epoch == self.start_epoch:
            best_epoch = None
            if best.is_file():
                try:
                    best_epoch = int(load_checkpoint(best)["epoch"])
                except ValueError:
                    best_epoch = None
            if best_epoch != self.best_epoch:
                logger.info("rewriting %s: it did not hold the best epoch %d", best, self.best_epoch)
                state = self.state_dict(self.start_epoch)
                state["config"] = self._resumed_config
                save_atomic(state, best)

    # ------------------------------------------------------------------ loop
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        config = self.config
        # Epoch-seeded RNG (augmentation, dropout, counterfactual draws in the main process; the
        # workers' are seeded from the loader's generator): resuming at an epoch boundary is exact.
        torch.manual_seed(config.seed * 100_003 + epoch * 1_009 + self.context.rank)
        self.module.train()
        mine = config.method != "cam" and epoch >= config.warmup_epochs
        # gain-ext's L_e follows its warm-up; --guidance l_e, like every guidance mode, runs from
        # the first step (so l_e and context-swap are compared over the same epochs).
        use_masks = ((config.method in SUPERVISED_METHODS and epoch >= config.warmup_epochs)
                     or "l_e" in config.guidance_modes)
        needs_masks = use_masks or bool(self.guides)
        skipped: dict[str, float] = {}
        loader = epoch_loader(self.train_set, config, epoch, self.context, pin_memory=self.device.type == "cuda",
                              collate_fn=self.collate)
        sums: dict[str, float] = {}
        steps = 0
        supervised_steps = 0  # L_e is averaged over the steps that had a supervised image only
        skipped_e = 0
        load_skipped: list[str] = []  # "file: reason" of items that failed to load (on_error=skip)
        bar = progress_bar(loader, desc=f"epoch {epoch + 1}/{config.epochs} {config.method}", leave=False,
                   enabled=config.progress and self.context.is_main, dynamic_ncols=True)
        for batch in bar:
            # Built in the workers: a file that broke mid-epoch comes back as a stand-in sample
            # flagged with what it replaced (FileDataset.__getitem__); counted here, in the trainer.
            load_skipped.extend(item for item in batch.get("load_skipped", ()) if item)
            total, values, supervised_step, counts, skipped_pairs = self._step_loss(batch, mine, use_masks, needs_masks)
            if not torch.isfinite(total):
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch + 1} step {steps + 1}: "
                    + " ".join(f"{k}={v:.4g}" for k, v in values.items()) + " (lower lr or check the data)"
                )
            skipped_e += skipped_pairs  # supervised pairs with an empty mask (e.g. cropped away)
            for key, count in counts.items():
                skipped[key] = skipped.get(key, 0.0) + count
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
            supervised_steps += int(supervised_step)
            for key, value in values.items():
                if key != "loss_e" or supervised_step:
                    sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{values['loss']:.3f}", am=f"{values['loss_am']:.3f}")
        if steps == 0:
            raise ValueError(
                f"no training step: {len(self.train_set)} images < batch size {config.batch_size} (drop_last)"
            )
        means = {f"train/{k}": v / steps for k, v in sums.items() if k != "loss_e"}
        means["train/loss_e"] = sums.get("loss_e", 0.0) / supervised_steps if supervised_steps else 0.0
        # A count, summed over the ranks: the mean over ranks of W * n_r.
        means["train/load_skipped"] = float(len(load_skipped) * self.context.world_size)
        means = self.context.mean(means, self.device)
        if load_skipped:
            logger.warning("epoch %d: %s (another item stood in for each)", epoch + 1,
                           skip_line("train, while loading", {"count": len(load_skipped), "first": [
                               dict(zip(("file", "reason"), item.split(": ", 1))) for item in load_skipped[:SKIP_EXAMPLES]]}))
            self.load_skipped_files.extend(load_skipped[:SKIP_EXAMPLES - len(self.load_skipped_files)])
        # Counts over the epoch (this process's share under DDP), not means: L_e's pairs left out for
        # an empty mask, and the counterfactuals built / images skipped by guidance (empty mask, no
        # context, no partner).
        if use_masks:
            means["train/skipped_e_pairs"] = skipped_e
        means.update({f"guidance/{k}": v for k, v in skipped.items()})
        if any(skipped.get(k, 0) for k in ("empty_mask", "no_context", "no_partner")):
            logger.info("epoch %d guidance skipped: %s", epoch + 1,
                        ", ".join(f"{k}={int(skipped[k])}" for k in ("empty_mask", "no_context", "no_partner") if skipped.get(k)))
        return means

    def _step_loss(self, batch: dict[str, Any], mine: bool, use_masks: bool, needs_masks: bool):
        """Batch in, loss out: GAIN's streams and every guidance term from GAIN's forward over the
        batch and its counterfactual rows, as this rank's share of the global-batch loss.

        Returns ``(total, values, supervised_step, counts, skipped_e)``: the loss to back-propagate
        (the adversary's included), the logged values (global-batch means under DDP), whether some
        rank had a supervised image (for L_e's average), the rows' counts, and L_e's skipped pairs.
        """
        images, labels, masks, supervised, rows = self._batch_to_device(batch, needs_masks)
        with self._autocast():
            output = self.module(images, labels, masks if use_masks else None, supervised if use_masks else None,
                                 mine=mine, counterfactuals=rows.images if rows is not None else None)
            terms = self._guide_terms(output, images, labels, masks, supervised, rows)
        loss = output.loss.float()
        total = loss if output.loss_adversary is None else loss + output.loss_adversary.float()
        values = {"loss": loss.item(), "loss_cl": output.loss_cl.item(), "loss_am": output.loss_am.item(),
                  "loss_e": output.loss_e.item()}
        if output.loss_adversary is not None:
            values["loss_adversary"] = output.loss_adversary.item()
            values["loss_area"] = output.loss_area.item()
        supervised_step = use_masks and supervised is not None and bool(supervised.any())
        guide_scales = [1.0] * len(terms)
        # The same collective on every rank, every step, whatever its data (config decides).
        if self.context.enabled and (mine or use_masks or self.adversarial or self.guides):
            correction, guide_scales = self._global_batch_correction(
                output, supervised, masks, values, [term.count for term in terms.values()])
            total = total + correction
            supervised_step = values.pop("supervised_anywhere") > 0
        for (name, term), scale in zip(terms.items(), guide_scales):
            mean = term_mean(term, scale).float()
            total = total + self.config.guidance_weight * mean
            values["loss"] += self.config.guidance_weight * mean.item()
            values[f"guide_{name.replace('-', '_')}"] = mean.item()
        counts = {_ROW_COUNT_NAMES.get(k, k): float(v) for k, v in rows.counts.items()} if rows is not None else {}
        return total, values, supervised_step, counts, int(output.skipped_e)

    def _batch_to_device(self, batch: dict[str, Any], needs_masks: bool):
        """``(images, labels, masks, supervised, rows)`` of a loader batch on the training device;
        ``images`` require grad where a guide needs input gradients (rrr)."""
        images = batch["image"].to(self.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.input_gradient:
            images.requires_grad_(True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        masks = supervised = None
        if needs_masks:
            masks = batch["target_masks"].to(self.device, non_blocking=True)
            supervised = batch["supervised"].to(self.device, non_blocking=True)
        rows = batch.get("counterfactual")
        if rows is not None:
            rows = rows.to(self.device, non_blocking=True)
            if self.config.channels_last:
                rows.images = rows.images.contiguous(memory_format=torch.channels_last)
        return images, labels, masks, supervised, rows

    def _guide_terms(self, output: Any, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None,
                     supervised: torch.Tensor | None, rows: Any) -> dict[str, Any]:
        """Each guidance mode's :class:`~gainet.core.GuideTerm` from the step's one forward pass."""
        if not self.guides:
            return {}
        if supervised is None:
            supervised = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        if rows is None:
            rows = CounterfactualRows.empty(images.detach(), labels.shape[1])
        batch = GuidanceBatch(images, output.all_scores, output.features, labels, masks, supervised.bool(), rows,
                              self.multi_label)
        return {guide.name: guide(batch) for guide in self.guides}

    def _global_batch_correction(self, output: Any, supervised: torch.Tensor | None, masks: torch.Tensor | None,
                                 values: dict[str, float], guide_counts: list[float]) -> tuple[torch.Tensor, list[float]]:
        """DDP only: the term that turns this rank's loss into its share of the global-batch loss.

        L_am (mean over the images with a label), L_e (mean over the supervised images), the
        adversary's loss (mean over clean + erased rows) and L_area (mean over the maps) average
        over a number of items that can differ between ranks; DDP's plain average of the per-rank
        means would then weight them differently from one process on the same global batch (L_e
        with 1 supervised image on one rank and 0 on the other would get half its weight). Each
        term is rescaled by ``W n_r / N`` (:meth:`DistributedContext.global_mean_scales`); the
        logged ``values`` are rescaled too, so their mean over ranks is the global-batch mean.
        L_cl is a mean over the equal per-rank batches and needs nothing. The guidance terms'
        scales (``W n_r / N`` of each term's item count) come from the same all_reduce and are
        returned for the caller: every rank makes this one collective every step, whatever its data.
        """
        gain = self.gain
        images = torch.unique(output.pairs[:, 0])
        n_am = images.numel() if output.erased_scores is not None else 0
        n_e = 0
        if supervised is not None and masks is not None and output.loss_e.requires_grad:
            # L_e's n: supervised images with at least one pair L_e kept (a non-empty target).
            image_index, class_index = output.pairs[:, 0], output.pairs[:, 1]
            kept = supervised[image_index] & ~empty_target_pairs(masks[image_index, class_index])
            n_e = int(torch.unique(image_index[kept]).numel())
        n_maps = output.pairs.shape[0] if output.attention is not None else 0
        rows = output.scores.shape[0] + (output.pairs.shape[0] if output.erased is not None else 0)
        scales = self.context.global_mean_scales([n_am, n_e, n_maps, rows, *guide_counts], self.device)
        s_am, s_e, s_area, s_adv = scales[:4]
        # Some rank had a supervised image: here (n_e > 0), or elsewhere (then this rank's scale is 0).
        values["supervised_anywhere"] = float(n_e > 0 or s_e == 0.0)
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
        return correction, scales[4:]

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
        if self.config.tensorboard:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.output_dir / "tensorboard"))
            for key, value in scalars.items():
                if key != "epoch" and math.isfinite(float(value)):
                    self._writer.add_scalar(key, value, int(row["epoch"]))
            self._writer.flush()

    def _check_finite(self, epoch: int) -> None:
        """Stop before a diverged model (NaN/inf in a weight or a buffer such as BatchNorm's
        running_var, which a finite loss does not reveal) is evaluated, selected or saved: the
        checkpoints of the last good epoch stay."""
        bad = non_finite_tensors(self.gain.state_dict())
        if bad:
            raise FloatingPointError(
                f"non-finite values (NaN/inf) in {len(bad)} model tensor(s) after epoch {epoch + 1}, first {bad[0]!r}; "
                "nothing of this epoch is saved (lower lr or set --grad-clip)"
            )

    def fit(self) -> dict[str, Any]:
        """Train from ``start_epoch`` to ``epochs``; returns the final validation metrics."""
        try:
            return self._fit()
        finally:
            self.close()

    def close(self) -> None:
        """Release the output directory and the TensorBoard writer (the trainer's state stays usable)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _fit(self) -> dict[str, Any]:
        config = self.config
        if self.context.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if self._resumed_config is None:
                write_text_atomic(self.output_dir / "config.yaml", _yaml(config.to_dict()))
        self._repair_outputs()
        for epoch in range(self.start_epoch, config.epochs):
            started = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                                   "train/skipped": skip_summary(self.train_set)["count"]}
            row.update(self.train_epoch(epoch))
            self._check_finite(epoch)
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
                    self.best_epoch = epoch + 1
                self.final = {**row, "val": metrics}
                warn_at_label_prior(metrics, config, epoch + 1)
            self.history.append(row)
            self.save(epoch + 1, is_best)
            self._log(row)
            self.context.barrier()
            if self.context.is_main:
                logger.info("epoch %d: %s", epoch + 1, _summary(row))
        if self.context.is_main:
            final_record = {**self.final, "train_skipped_files": skip_summary(self.train_set)["first"],
                            "train_load_skipped": int(sum(row.get("train/load_skipped", 0) for row in self.history)),
                            "train_load_skipped_files": self.load_skipped_files}
            if getattr(self.train_set, "paste_mask_stats", None):
                final_record["grabcut"] = self.train_set.paste_mask_stats
            write_text_atomic(self.output_dir / "final.json", json.dumps(_jsonable(final_record), indent=2))
        return self.final


# Logged names of the counterfactual row counts (guidance/<name> in metrics.csv).
_ROW_COUNT_NAMES = {"rows/context-swap": "swaps", "rows/context-only": "context_images",
                    "rows/counterpart": "counterparts"}


def _score_of(row: dict[str, Any]) -> float | None:
    return row.get("val/mAP", row.get("val/accuracy"))


def _best_epoch(history: list[dict[str, Any]], best_score: float | None) -> int | None:
    """The last epoch whose validation score is ``best_score``."""
    if best_score is None:
        return None
    return next((int(row["epoch"]) for row in reversed(history) if _score_of(row) == best_score), None)


def _final_row(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last evaluated epoch's row with its flat ``val/`` metrics under ``"val"``."""
    for row in reversed(history):
        if _score_of(row) is not None:
            return {**row, "val": {k[len("val/"):]: v for k, v in row.items() if k.startswith("val/")}}
    return dict(history[-1]) if history else {}


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state as a tensor and plain values: ``weights_only`` loading accepts it
    (numpy arrays would need unpickling arbitrary globals)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


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
