"""Datasets for training: which images GAIN_ext may see supervision on, and the loaders."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from gainet.data import build_dataset
from gainet.training.config import SUPERVISED_METHODS, TrainConfig
from gainet.training.distributed import DistributedContext

logger = logging.getLogger(__name__)

GENERATED_WORLDS = ("parts", "bias")


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
    """Adds ``supervised`` (bool) and ``target_masks`` ``(C, H, W)`` (masks or box masks) to samples."""

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
        sample["target_masks"] = sample[self.key]
        return sample


def build_datasets(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """Training set (with GAIN_ext's supervision view) and validation set."""
    options = dict(config.dataset_options)
    sizes = {"train": config.train_images, "val": config.val_images}
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
    """The training loader of one epoch. Its order and worker seeds depend only on (seed, epoch),
    so a run resumed at an epoch boundary sees exactly the batches of an uninterrupted one."""
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    if context.enabled:
        sampler = DistributedSampler(dataset, context.world_size, context.rank, shuffle=True, seed=config.seed)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    per_process = max(1, config.batch_size // context.world_size)
    return DataLoader(
        dataset, batch_size=per_process, sampler=sampler, num_workers=config.num_workers,
        drop_last=True, generator=generator, pin_memory=pin_memory, persistent_workers=False,
    )


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=SequentialSampler(dataset), num_workers=num_workers,
        pin_memory=pin_memory,
    )
