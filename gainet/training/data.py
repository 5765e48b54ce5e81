"""Datasets for training: which images GAIN_ext may see supervision on, and the loaders."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from gainet.core.losses import IGNORE_INDEX
from gainet.data import build_dataset
from gainet.data.errors import skip_line, skip_summary
from gainet.data.factory import WORLDS
from gainet.training.config import SUPERVISED_METHODS, TrainConfig
from gainet.training.distributed import DistributedContext

logger = logging.getLogger(__name__)

GENERATED_WORLDS = tuple(WORLDS)  # worlds that draw their images: their sizes are options


def supervision_candidates(dataset: Dataset, source: str) -> list[int]:
    """Indices of images that carry real ground truth of ``source`` ("masks" or "boxes")."""
    lookup = getattr(dataset, "has_masks_at" if source == "masks" else "has_boxes_at", None)
    if callable(lookup):  # cheap: no image decoding
        return [i for i in range(len(dataset)) if lookup(i)]
    key = "has_masks" if source == "masks" else "has_boxes"
    return [i for i in range(len(dataset)) if bool(dataset[i][key])]


def choose_supervised(dataset: Dataset, source: str, fraction: float, count: int | None, seed: int) -> list[int]:
    """A seeded random choice of ``count`` (or ``round(fraction * len)``) annotated images."""
    candidates = supervision_candidates(dataset, source)
    wanted = count if count is not None else round(fraction * len(dataset))
    if wanted > len(candidates):
        raise ValueError(f"asked for {wanted} supervised images but only {len(candidates)} carry {source}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(candidates), generator=generator)[:wanted]
    return sorted(candidates[i] for i in order.tolist())


class SupervisionView(Dataset):
    """Adds ``supervised`` (bool) and ``target_masks`` ``(C, H, W)`` (masks or box masks) to samples;
    pixel masks carry 255 (:data:`~gainet.core.losses.IGNORE_INDEX`) where the segmentation does."""

    def __init__(self, dataset: Dataset, supervised: list[int], source: str) -> None:
        self.dataset = dataset
        self.supervised = frozenset(supervised)
        self.key = "masks" if source == "masks" else "box_masks"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.dataset[index])
        sample["supervised"] = torch.tensor(index in self.supervised)
        target = sample[self.key]
        if self.key == "masks":  # ignore pixels (VOC's 255, padding) stay ignored by L_e, not background
            target = target.masked_fill(sample["segmentation"][None] == IGNORE_INDEX, IGNORE_INDEX)
        sample["target_masks"] = target
        return sample


def build_datasets(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """Training set (with GAIN_ext's supervision view) and validation set."""
    options = dict(config.dataset_options)
    sizes = {"train": config.train_images, "val": config.val_images}
    own = [key for key in ("root", "split", "image_size", "train_transforms") if key in options]
    own += ["num_images"] if "num_images" in options and any(sizes.values()) else []
    if own:
        raise ValueError(f"dataset option {own[0]!r}: set by the training config (data_root, train_split/val_split, "
                         "image_size, augment, train_images/val_images), not by dataset_options")
    if any(sizes.values()) and config.dataset not in GENERATED_WORLDS:
        raise ValueError(f"train_images/val_images apply to the generated worlds, not to {config.dataset!r}")
    train = build_dataset(
        config.dataset, config.train_split, root=config.data_root, image_size=config.image_size,
        train_transforms=config.augment, **options, **({"num_images": sizes["train"]} if sizes["train"] else {}),
    )
    val = build_dataset(
        config.dataset, config.val_split, root=config.data_root, image_size=config.image_size,
        train_transforms=False, **options, **({"num_images": sizes["val"]} if sizes["val"] else {}),
    )
    for split, dataset in ((config.train_split, train), (config.val_split, val)):
        summary = skip_summary(dataset)
        if summary["count"]:  # also counted in metrics.csv / final.json (train/skipped, val/skipped)
            logger.warning(skip_line(f"split {split!r}", summary))
    prerender = getattr(train, "prerender", None)
    if config.num_workers > 0 and callable(prerender):
        prerender()  # generated worlds: forked workers then share one in-memory cache
    supervised: list[int] = []
    if config.method in SUPERVISED_METHODS:
        supervised = choose_supervised(
            train, config.supervision, config.supervised_fraction, config.supervised_count, config.seed
        )
        logger.info("%s: %d of %d training images carry %s", config.method, len(supervised), len(train), config.supervision)
    return SupervisionView(train, supervised, config.supervision), val


def epoch_loader(
    dataset: Dataset, config: TrainConfig, epoch: int, context: DistributedContext, pin_memory: bool
) -> DataLoader:
    """The training loader of one epoch (of this process's share of it under DDP).

    Order: one global permutation per ``(seed, epoch)``, the same whatever the number of
    processes. Every process uses a :class:`DistributedSampler` with ``num_replicas = world_size``
    (a single process is ``world_size = 1``): rank ``r`` takes positions ``r, r + W, r + 2W, ...``
    of the permutation, so step ``k``'s per-rank batches of ``B / W`` images together are exactly
    the global block ``[kB, (k + 1)B)`` that a single process sees at step ``k``. ``drop_last`` on
    both sampler and loader gives every rank ``floor(n / B)`` steps, like one process.
    A run resumed at an epoch boundary sees exactly the batches of an uninterrupted one.

    Worker seeds come from a generator seeded by ``(seed, epoch, rank)``: rank 0 matches a single
    process, other ranks draw independent augmentation.
    """
    world_size = context.world_size
    if config.batch_size % world_size:
        logger.warning("batch_size %d is not a multiple of the %d processes: each takes %d images, %d per step",
                       config.batch_size, world_size, max(1, config.batch_size // world_size),
                       world_size * max(1, config.batch_size // world_size))
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=context.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch + (context.rank << 40))
    per_process = max(1, config.batch_size // world_size)
    return DataLoader(
        dataset, batch_size=per_process, sampler=sampler, num_workers=config.num_workers,
        drop_last=True, generator=generator, pin_memory=pin_memory, persistent_workers=False,
    )


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=SequentialSampler(dataset), num_workers=num_workers,
        pin_memory=pin_memory,
    )
