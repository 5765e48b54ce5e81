"""``build_dataset``: one entry point from a dataset name and split to a dataset object."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from gainet.io.options import check_options, keyword_types

from .folder import load_folder
from .garments import GarmentsBiasWorld, GarmentsWorld
from .voc import VOC_SPLITS, VOCDataset
from .worlds import BiasWorld, PartsWorld

WORLDS = {"parts": PartsWorld, "bias": BiasWorld, "garments": GarmentsWorld, "garments-bias": GarmentsBiasWorld}
# Worlds composed from image files (Fashion-MNIST): they take ``root`` (default: the Debian package's folder).
FILE_WORLDS = ("garments", "garments-bias")
DATASET_NAMES = ("parts", "bias", "garments", "garments-bias", "voc", "folder")
DEFAULT_IMAGE_SIZE = {"parts": 64, "bias": 64, "garments": 64, "garments-bias": 64, "voc": 224, "folder": 224}
# Arguments build_dataset sets itself (from its own parameters), so not dataset options.
OWN_ARGUMENTS = ("split", "root", "image_size", "train_transforms")


def dataset_splits(name: str) -> tuple[str, ...]:
    """The fixed split names of dataset ``name`` (``folder`` splits depend on the data: ())."""
    if name in WORLDS:
        return tuple(WORLDS[name].splits)
    if name == "voc":
        return VOC_SPLITS
    if name == "folder":
        return ()
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASET_NAMES)}")


def build_dataset(
    name: str,
    split: str,
    *,
    root: str | Path | None = None,
    image_size: int | None = None,
    train_transforms: bool | None = None,
    **options,
) -> Dataset:
    """Build dataset ``name`` (``parts``, ``bias``, ``garments``, ``garments-bias``, ``voc``,
    ``folder``) for ``split``.

    Args:
        root: data directory (``voc``, ``folder``; for ``garments*`` the Fashion-MNIST idx files or
            torchvision's ``FashionMNIST/raw`` inside it, default the Debian package's folder); the
            drawn worlds need none and ignore it.
        image_size: output side in pixels (default 64 for the worlds, 224 otherwise).
        train_transforms: random augmentation; default True for ``voc`` / ``folder`` splits
            whose name starts with ``train`` and False for the worlds (their generator already
            randomises every image).
        options: passed to the dataset class (``PartsWorld``, ``BiasWorld``, ``VOCDataset``,
            ``FolderDataset``, ``GarmentsWorld``, ``GarmentsBiasWorld``), e.g. ``seed``, ``bias_p``,
            ``sbd_root``, ``on_error``, ``download`` (garments: let torchvision fetch the files).

    Raises:
        ValueError: unknown name or split, unknown option name or option value of the wrong
            type (one line naming it).
        DataError: bad data on disk.
    """
    splits = dataset_splits(name)
    if name in WORLDS and split not in splits:
        raise ValueError(f"unknown split {split!r} for dataset {name!r}; valid: {', '.join(splits)}")
    size = DEFAULT_IMAGE_SIZE[name] if image_size is None else int(image_size)
    if name in WORLDS:
        options = check_options(options, keyword_types(WORLDS[name], exclude=OWN_ARGUMENTS), f"{name} dataset option")
        if name in FILE_WORLDS and root is not None:
            options["root"] = root
        return WORLDS[name](split, image_size=size, train_transforms=bool(train_transforms), **options)
    if root is None:
        raise ValueError(f"dataset {name!r} needs root=<data directory>")
    augment = str(split).startswith("train") if train_transforms is None else bool(train_transforms)
    if name == "voc":
        # VOCDataset checks the split: VOC's names, or any ImageSets file present.
        options = check_options(options, keyword_types(VOCDataset, exclude=OWN_ARGUMENTS), "voc dataset option")
        return VOCDataset(root, split, image_size=size, train_transforms=augment, **options)
    return load_folder(root, split, image_size=size, train_transforms=augment, **options)
