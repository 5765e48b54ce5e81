"""Datasets for training: which images GAIN_ext may see supervision on, and the loaders."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler, Sampler

from gainet.core.losses import IGNORE_INDEX
from gainet.data import build_dataset
from gainet.data.errors import skip_line, skip_summary
from gainet.data.factory import WORLDS
from gainet.training.config import TrainConfig
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


def parse_supervision(values: Sequence[str | int | float], train_size: int) -> list[int]:
    """Numbers of supervised images (``--supervised-count`` of ``bias-study`` and ``fix``): ``"5%"`` and fractions below 1 (``"0.05"``) are shares of the
    training set (rounded), integers (``"20"``) are counts. Sorted, duplicates removed."""
    counts = []
    for value in values:
        text = str(value).strip()
        try:
            if text.endswith("%"):
                count = round(float(text[:-1]) / 100.0 * train_size)
            elif any(c in text for c in ".eE"):
                fraction = float(text)
                if not 0.0 <= fraction <= 1.0:
                    raise ValueError
                count = round(fraction * train_size)
            else:
                count = int(text)
        except ValueError:
            raise ValueError(f"supervision {text!r}: expected a count (20), a fraction (0.05) or a percentage (5%)") from None
        if not 0 <= count <= train_size:
            raise ValueError(f"supervision {text!r}: {count} images is outside 0..{train_size}")
        counts.append(count)
    return sorted(set(counts))


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


def build_datasets(config: TrainConfig, context: DistributedContext | None = None) -> tuple[Dataset, Dataset]:
    """Training set (with GAIN_ext's supervision view) and validation set. Under DDP (``context``)
    rank 0 estimates GrabCut's masks first and the other ranks then read its cache."""
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
    if config.uses_supervision and config.supervised_indices is not None:
        supervised = sorted({int(i) for i in config.supervised_indices})
        outside = [i for i in supervised if not 0 <= i < len(train)]
        if outside:
            raise ValueError(f"supervised_indices: position {outside[0]} is outside split {config.train_split!r} "
                             f"({len(train)} images)")
    elif config.uses_supervision:
        supervised = choose_supervised(
            train, config.supervision, config.supervised_fraction, config.supervised_count, config.seed
        )
        logger.info("%s: %d of %d training images carry %s", config.method, len(supervised), len(train), config.supervision)
        if not supervised:
            logger.warning("%s: no training image carries %s: L_e and the guidance terms stay zero",
                           config.method, config.supervision)
    view = SupervisionView(train, supervised, config.supervision)
    view.paste_mask_stats = None
    if config.swap_mask == "grabcut" and "context-swap" in config.guidance_modes and supervised:
        view.paste_mask_stats = _attach_grabcut(train, supervised, config, context)
    return view, val


def _attach_grabcut(dataset: Dataset, supervised: list[int], config: TrainConfig,
                    context: DistributedContext | None = None) -> dict[str, float]:
    """GrabCut once per supervised image (cached on disk), handed to the dataset as paste masks.

    Under DDP every rank needs the masks of every supervised image (any of them can land in its
    share of a batch): rank 0 estimates them while the others wait at a barrier, then they read
    rank 0's cache (a rank on another disk estimates again, with the same result). Every rank
    makes the one barrier call, so the collectives match.
    """
    from gainet.data.grabcut import attach_paste_masks, estimate_paste_masks

    distributed = context is not None and context.enabled
    if distributed and not context.is_main:
        context.barrier()
    masks, stats = estimate_paste_masks(dataset, supervised, cache_dir=config.grabcut_cache)
    if distributed and context.is_main:
        context.barrier()
    attach_paste_masks(dataset, masks)
    logger.info("grabcut: %d supervised images, %d estimated now (%.1f CPU-s, once), %d from the cache, "
                "%d kept the whole box, %d without a box", len(supervised), stats.estimated, stats.seconds,
                stats.cached, stats.kept_box, stats.no_box)
    return {"estimated": stats.estimated, "cached": stats.cached, "kept_box": stats.kept_box,
            "no_box": stats.no_box, "cpu_seconds": round(stats.seconds, 3)}


def epoch_loader(
    dataset: Dataset, config: TrainConfig, epoch: int, context: DistributedContext, pin_memory: bool,
    collate_fn: Callable | None = None,
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
    process, other ranks draw independent augmentation. ``collate_fn`` (e.g. a
    :class:`~gainet.core.batch_transforms.CounterfactualCollate`) runs in the workers.
    """
    world_size = context.world_size
    supervised = sorted(getattr(dataset, "supervised", ()))
    if config.supervised_share is not None and supervised:
        batches = SupervisedShareBatchSampler(len(dataset), supervised, config.batch_size, config.supervised_share,
                                              seed=config.seed, epoch=epoch, rank=context.rank, world_size=world_size)
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch + (context.rank << 40))
        return DataLoader(dataset, batch_sampler=batches, num_workers=config.num_workers, generator=generator,
                          pin_memory=pin_memory, persistent_workers=False, collate_fn=collate_fn)
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
        drop_last=True, generator=generator, pin_memory=pin_memory, persistent_workers=False, collate_fn=collate_fn,
    )


class SupervisedShareBatchSampler(Sampler[list[int]]):
    """Batches of which a fixed number of images comes from the supervised ones.

    Each global batch of ``batch_size`` holds ``k = max(1, round(share * batch_size))``
    supervised images (at most as many as there are) and ``batch_size - k`` others. Both pools are
    walked through seeded permutations, restarting when exhausted, so over an epoch every
    supervised image is seen about ``k * steps / len(supervised)`` times; the number of steps per
    epoch is ``floor(len(dataset) / batch_size)`` as with plain shuffling. The order within a
    batch is shuffled. Seeded by ``(seed, epoch)`` only; under DDP rank ``r`` takes positions
    ``r, r + W, ...`` of each global batch.
    """

    def __init__(self, size: int, supervised: list[int], batch_size: int, share: float, *, seed: int, epoch: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.size, self.batch_size = size, batch_size
        self.supervised = sorted(set(supervised))
        chosen = set(self.supervised)
        self.others = [i for i in range(size) if i not in chosen] or list(range(size))
        wanted = max(1, round(share * batch_size)) if share > 0 and self.supervised else 0
        self.per_batch = min(wanted, len(self.supervised), batch_size)
        self.steps = size // batch_size
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size

    def __len__(self) -> int:
        return self.steps

    @staticmethod
    def _take(queue: deque[int], pool: list[int], count: int, generator: torch.Generator) -> list[int]:
        """``count`` distinct images from the front of ``queue``, refilled with a fresh permutation
        of ``pool`` when empty; an image already in this batch waits for the next one."""
        taken: list[int] = []
        deferred: list[int] = []
        while len(taken) < min(count, len(pool)):
            if not queue:
                queue.extend(pool[i] for i in torch.randperm(len(pool), generator=generator).tolist())
            item = queue.popleft()
            (deferred if item in taken else taken).append(item)
        queue.extendleft(reversed(deferred))
        return taken

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7_919 + 17)
        supervised, others = deque(), deque()
        per_rank = max(1, self.batch_size // self.world_size)
        for _ in range(self.steps):
            batch = self._take(supervised, self.supervised, self.per_batch, generator) if self.per_batch else []
            batch += self._take(others, self.others, self.batch_size - len(batch), generator)
            batch = [batch[i] for i in torch.randperm(len(batch), generator=generator).tolist()]
            yield batch[self.rank::self.world_size][:per_rank]


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=SequentialSampler(dataset), num_workers=num_workers,
        pin_memory=pin_memory,
    )
