"""What every WSSS stage reads and writes: images at their native resolution, per-image files,
and the ``meta.json`` that ties a stage's output folder to its inputs.

A *data spec* (a plain dict, stored in every stage's ``meta.json``) names the images a stage ran
on: ``{"dataset", "split", "root", "image_size", "options", "num_images"}``. Later stages rebuild
the dataset from it, so ``eval-cams`` or ``train-seg`` never need the classifier's checkpoint.

Images are taken *before* the datasets' square resize (:func:`raw_item`): VOC at its own size,
the generated worlds at their native ``image_size``. Attention maps, pseudo labels and
predictions are stored at that resolution and compared with the untouched ground truth, as the
WSSS literature's evaluation does.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from gainet.data import build_dataset
from gainet.data.factory import WORLDS
from gainet.data.files import FileDataset
from gainet.data.readers import read_index_mask
from gainet.data.transforms import IGNORE_INDEX
from gainet.data.voc import voc_palette
from gainet.data.worlds import World

META_FILE = "meta.json"
FORMAT = 1
GENERATED_WORLDS = tuple(WORLDS)


# ----------------------------------------------------------------------------- data specs
def data_spec(
    dataset: str,
    split: str,
    *,
    root: str | None = None,
    image_size: int = 64,
    options: dict[str, Any] | None = None,
    num_images: int | None = None,
) -> dict[str, Any]:
    """A JSON-able description of one split of one dataset (see the module docstring).

    ``num_images``: the generated worlds draw that many images; file datasets keep their first
    ``num_images`` items (``None``: all).
    """
    return {
        "dataset": dataset, "split": split, "root": None if root is None else str(root),
        "image_size": int(image_size), "options": dict(options or {}),
        "num_images": None if num_images is None else int(num_images),
    }


def spec_from_config(config: Any, split: str, num_images: int | None = None) -> dict[str, Any]:
    """The data spec of ``split`` under a classifier's :class:`~gainet.training.config.TrainConfig`.

    Without ``num_images``, the generated worlds use the config's ``train_images`` / ``val_images``
    for its own train / val split (the images the classifier saw) and the split's default size
    otherwise.
    """
    if num_images is None and config.dataset in GENERATED_WORLDS:
        if split == config.train_split:
            num_images = config.train_images
        elif split == config.val_split:
            num_images = config.val_images
    return data_spec(config.dataset, split, root=config.data_root, image_size=config.image_size,
                     options=config.dataset_options, num_images=num_images)


def open_dataset(spec: dict[str, Any], *, split: str | None = None, root: str | None = None,
                 num_images: int | None = None) -> Dataset:
    """Build the dataset of ``spec`` (optionally with another split, data root or size), without
    augmentation. The returned object has ``wsss_size``: the number of items the stages use."""
    split = spec["split"] if split is None else split
    root = spec.get("root") if root is None else str(root)
    count = spec.get("num_images") if num_images is None else num_images
    options = dict(spec.get("options") or {})
    if spec["dataset"] in GENERATED_WORLDS and count is not None:
        options["num_images"] = int(count)
    dataset = build_dataset(spec["dataset"], split, root=root, image_size=spec["image_size"],
                            train_transforms=False, **options)
    dataset.wsss_size = len(dataset) if count is None else min(int(count), len(dataset))
    return dataset


# ----------------------------------------------------------------------------- native images
@dataclass(frozen=True)
class RawImage:
    """One image before any resize: ``image`` uint8 ``(H, W, 3)``; ``segmentation`` int64
    ``(H, W)`` (0 background, k = class k, 255 ignore) or ``None``; ``labels`` sorted 0-based
    foreground class ids; ``image_id`` the dataset's id."""

    image_id: str
    image: np.ndarray
    segmentation: np.ndarray | None
    labels: tuple[int, ...]


def raw_item(dataset: Dataset, index: int) -> RawImage:
    """Item ``index`` of ``dataset`` at native resolution (see :class:`RawImage`).

    Generated worlds and file datasets (VOC, folder) give their decoded arrays; any other dataset
    falls back to its (resized, de-normalised) sample.
    """
    image_id = dataset.image_id(index)
    if isinstance(dataset, World):
        item = dataset.rendered(index)
        return RawImage(image_id, item.image, item.segmentation.astype(np.int64), tuple(sorted(set(item.labels))))
    if isinstance(dataset, FileDataset):
        raw = dataset.load_raw(dataset.records[index])
        return RawImage(image_id, raw.image, raw.segmentation, tuple(raw.labels))
    sample = dataset[index]
    mean = torch.tensor(dataset.mean).view(3, 1, 1)
    std = torch.tensor(dataset.std).view(3, 1, 1)
    image = ((sample["image"] * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    segmentation = sample["segmentation"].numpy() if bool(sample["has_masks"]) else None
    labels = tuple(int(i) for i in torch.nonzero(sample["labels"]).flatten())
    return RawImage(image_id, image, segmentation, labels)


def iterate(dataset: Dataset, indices: Sequence[int] | None = None) -> Iterator[tuple[int, RawImage]]:
    """``(index, raw_item)`` over ``indices`` (default: the first ``dataset.wsss_size``)."""
    for index in range(getattr(dataset, "wsss_size", len(dataset))) if indices is None else indices:
        yield index, raw_item(dataset, index)


def check_classes(found: Sequence[str], expected: Sequence[str], what: str) -> None:
    """One-line ``ValueError`` when two class lists differ."""
    if list(found) != list(expected):
        raise ValueError(f"class mismatch: {what} has {len(found)} classes {list(found)[:4]}..., "
                         f"expected {len(expected)} {list(expected)[:4]}...")


def open_stage_dataset(meta: dict[str, Any], data_root: str | None = None) -> tuple[Dataset, list[str]]:
    """The dataset an earlier stage's ``meta.json`` recorded (optionally at another root) and its
    class list, with a one-line error when the dataset's classes no longer match."""
    dataset = open_dataset(meta["data"], root=data_root)
    classes = list(meta["classes"])
    check_classes(dataset.classes, classes, f"dataset {meta['data']['dataset']!r}")
    return dataset, classes


# ----------------------------------------------------------------------------- per-image files
def item_path(folder: str | Path, image_id: str, suffix: str) -> Path:
    """``folder/<image_id><suffix>``; ids with ``/`` (folder datasets) become sub-folders."""
    relative = Path(image_id + suffix)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"image id {image_id!r} cannot name a file inside {folder}")
    return Path(folder) / relative


def pending(dataset: Dataset, folder: str | Path, suffix: str, overwrite: bool = False) -> list[tuple[int, Path]]:
    """A resumable stage's work: ``(index, folder/<image_id><suffix>)`` for each of the first
    ``dataset.wsss_size`` images whose file is not there yet (all of them with ``overwrite``);
    the others are skipped, so an interrupted stage carries on where it stopped."""
    todo = []
    for index in range(dataset.wsss_size):
        path = item_path(folder, dataset.image_id(index), suffix)
        if overwrite or not path.is_file():
            todo.append((index, path))
    return todo


def _atomic_write(path: Path, write) -> Path:
    """Write through a temporary file in the same folder, then rename: an interrupted run never
    leaves a truncated per-image file that a resumed run would skip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def save_cams(path: Path, keys: np.ndarray, maps: np.ndarray, dtype: str = "float16") -> Path:
    """Store one image's maps as ``.npy`` holding ``{"keys": int64 (K,), "high_res": (K, H, W)}``:
    ``keys`` are the 0-based ground-truth classes, ``high_res[i]`` the normalised map of
    ``keys[i]`` at the image's native resolution (IRN's layout, so its tools can read these)."""
    payload = {"keys": np.asarray(keys, dtype=np.int64), "high_res": np.asarray(maps, dtype=dtype)}
    return _atomic_write(path, lambda file: np.save(file, payload, allow_pickle=True))


def load_cams(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(keys int64 (K,), maps float32 (K, H, W))`` of a file written by :func:`save_cams` (or IRN).

    The file holds a pickled dict: read only cams folders you made or trust.
    """
    try:
        payload = np.load(path, allow_pickle=True).item()
        keys, maps = np.asarray(payload["keys"], dtype=np.int64), np.asarray(payload["high_res"], dtype=np.float32)
    except (OSError, ValueError, KeyError, AttributeError, EOFError, TypeError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path}: not a cams file ({type(error).__name__}: {error})".splitlines()[0]) from None
    if maps.ndim != 3 or maps.shape[0] != keys.shape[0]:
        raise ValueError(f"{path}: cams file has keys {keys.shape} and maps {maps.shape}")
    return keys, maps


_PALETTE = voc_palette()


def save_index_png(path: Path, labels: np.ndarray) -> Path:
    """Save a class-index map (0..254, 255 = ignore) as a VOC-palette PNG, atomically."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > IGNORE_INDEX:
        raise ValueError(f"index map must be (H, W) in [0, 255], got {labels.shape} {labels.min()}..{labels.max()}")
    image = Image.fromarray(labels.astype(np.uint8), mode="L")
    image.putpalette(_PALETTE)
    return _atomic_write(path, lambda file: image.save(file, format="PNG"))


def load_index_png(path: Path) -> np.ndarray:
    """int64 ``(H, W)`` class-index map of a palette or grayscale PNG."""
    return read_index_mask(path)


# ----------------------------------------------------------------------------- meta.json
def write_meta(folder: str | Path, meta: dict[str, Any]) -> Path:
    path = Path(folder) / META_FILE
    text = json.dumps({"format": FORMAT, **meta}, indent=2, default=str).encode()
    return _atomic_write(path, lambda file: file.write(text))


def read_meta(folder: str | Path, stage: str, hint: str) -> dict[str, Any]:
    """The ``meta.json`` of a ``stage`` output folder; one-line errors when it is absent or of
    another stage (``hint``: the command that makes it)."""
    folder = Path(folder)
    path = folder / META_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such {stage} directory (run {hint} first)")
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a {stage} directory (no {META_FILE}; run {hint} first)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable ({error})".splitlines()[0]) from None
    if meta.get("stage") != stage:
        raise ValueError(f"{folder}: holds {meta.get('stage')!r} output, not {stage} (run {hint} first)")
    return meta


def claim_folder(folder: str | Path, meta: dict[str, Any], keys: Sequence[str], overwrite: bool) -> None:
    """Make ``folder`` this run's output. A folder already holding output of the same stage is
    resumed when the settings named by ``keys`` match, else refused (one line) unless ``overwrite``
    (which rewrites every per-image file)."""
    folder = Path(folder)
    existing = folder / META_FILE
    if existing.is_file() and not overwrite:
        try:
            old = json.loads(existing.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("stage") != meta.get("stage"):
            raise ValueError(f"{folder}: holds {old.get('stage')!r} output; choose another --output or --overwrite")
        changed = [k for k in keys if json.dumps(old.get(k), sort_keys=True, default=str)
                   != json.dumps(meta.get(k), sort_keys=True, default=str)]
        if changed:
            raise ValueError(f"{folder}: was made with other settings ({', '.join(changed)}); "
                             "use --overwrite or another --output")
    folder.mkdir(parents=True, exist_ok=True)
    write_meta(folder, meta)


def write_json(path: Path, values: dict[str, Any]) -> Path:
    text = json.dumps(values, indent=2, default=_json_default).encode()
    return _atomic_write(Path(path), lambda file: file.write(text))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.tolist() if getattr(value, "ndim", 0) else value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
