"""Real-object worlds: Fashion-MNIST garment photos composed into colour scenes.

``garments`` (multi-label part dominance) and ``garments-bias`` (single-label dataset bias) follow
the generated worlds of :mod:`gainet.data.worlds` (same sample dict, splits, determinism by
``(seed, world, split, index)``, in-memory cache, ``image_id`` / ``boxes`` / ``context``), but each
object is a real photo: a 28 x 28 grey-level Fashion-MNIST garment, resized, tinted and pasted
where its intensity exceeds ``mask_threshold`` (that is its mask, so mask and pixels agree).

The photos are read from the standard idx files (``train-images-idx3-ubyte[.gz]``, ...), found in
``root`` (the files themselves, or torchvision's ``<root>/FashionMNIST/raw``) or, without a
``root``, in the Debian package's ``/usr/share/datasets/fashion-mnist``. Nothing downloads unless
``download=True`` (torchvision's ``FashionMNIST(root, download=True)``). Rationale and measured
numbers: ``docs/data.md``.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from types import MappingProxyType
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import drawing
from .errors import DataError
from .sample import build_sample, multi_hot
from .worlds import Rendered, World, draw_context, finish_scene, object_value

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The first 5/6 of the training photos (0..49999 of 60000) feed the training splits, the rest the
# validation split; the test splits use the t10k photos.
TRAIN_SHARE = 5 / 6
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
              0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """The array of one idx file (plain or ``.gz``), e.g. uint8 (N, 28, 28) images or (N,) labels.

    Raises:
        DataError: unreadable file, bad magic number, or a size that does not match the header.
    """
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read idx file: {error}".splitlines()[0]) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an idx file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path}: truncated idx header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path}: idx size {len(data)} bytes, header says {expected} for shape {shape}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _missing_message(places: Sequence[Path]) -> str:
    where = " or ".join(str(p) for p in places)
    return (f"{where}: Fashion-MNIST idx files not found (train-images-idx3-ubyte[.gz] ...); get them with "
            f"`apt install dataset-fashion-mnist` (read from {DEBIAN_DIR}), or with torchvision: "
            "dataset option download=true and a --data-root (fills <root>/FashionMNIST/raw)")


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist_dir(root: str | Path | None = None, *, download: bool = False) -> Path:
    """The folder holding the four Fashion-MNIST idx files.

    ``root``: that folder, or a folder with torchvision's ``FashionMNIST/raw`` inside; ``None``: the
    Debian package's folder. ``download=True`` lets torchvision fetch the files into
    ``<root>/FashionMNIST/raw`` first (needs ``root``).
    """
    if download:
        if root is None:
            raise DataError("Fashion-MNIST: download=True needs a root directory (--data-root) to download into")
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
    places = [DEBIAN_DIR] if root is None else [Path(root), Path(root) / "FashionMNIST" / "raw"]
    for folder in places:
        if all(_find_file(folder, stem) for pair in FILES.values() for stem in pair):
            return folder
    raise DataError(_missing_message(places))


def load_fashion_mnist(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images uint8 (N, 28, 28), labels int64 (N,)), "test": ...}`` from ``folder``."""
    out = {}
    for part, (images_stem, labels_stem) in FILES.items():
        images_path, labels_path = _find_file(folder, images_stem), _find_file(folder, labels_stem)
        if images_path is None or labels_path is None:
            raise DataError(_missing_message([folder]))
        images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"{images_path}: {images.shape} images do not match {labels.shape} labels in {labels_path.name}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_CLASSES)):
            raise DataError(f"{labels_path}: label out of range [0, {len(FASHION_CLASSES)})")
        out[part] = (images, labels)
    return out


class _GarmentWorld(World):
    """Shared machinery: photo pools per split and class, garment rendering, placement.

    Args:
        root, download: where the idx files are (see :func:`fashion_mnist_dir`).
        garment_classes: Fashion-MNIST class ids used, in order (class ``k`` of the world is
            ``FASHION_CLASSES[garment_classes[k]]``).
        garment_size: side of a garment's photo as a share of the image side, (lo, hi).
        mask_threshold: photo intensity (0..1) above which a pixel belongs to the garment.
        world_options: see :class:`~gainet.data.worlds.World`.
    """

    default_classes: tuple[int, ...] = ()

    def __init__(
        self,
        split: str = "train",
        *,
        root: str | Path | None = None,
        download: bool = False,
        garment_classes: Sequence[int] | None = None,
        garment_size: tuple[float, float] = (0.45, 0.6),
        mask_threshold: float = 0.15,
        **world_options,
    ) -> None:
        ids = tuple(int(c) for c in (self.default_classes if garment_classes is None else garment_classes))
        if len(ids) < 2 or len(set(ids)) != len(ids) or not all(0 <= c < len(FASHION_CLASSES) for c in ids):
            raise ValueError(f"garment_classes must be 2+ distinct Fashion-MNIST ids in [0, 9], got {list(ids)}")
        lo, hi = garment_size
        if not 0.1 <= lo <= hi <= 1.0:
            raise ValueError(f"garment_size must be (lo, hi) with 0.1 <= lo <= hi <= 1, got {garment_size}")
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold}")
        self.garment_classes = ids
        self.classes = [FASHION_CLASSES[c] for c in ids]
        self.num_classes = len(ids)
        self.garment_size = (float(lo), float(hi))
        self.mask_threshold = float(mask_threshold)
        self.files = fashion_mnist_dir(root, download=download)
        photos = load_fashion_mnist(self.files)
        # (images, {world class: photo indices}) per photo source
        self._pools: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}
        val_start = int(round(photos["train"][1].shape[0] * TRAIN_SHARE))
        for source, (images, labels), start, stop in (
            ("train", photos["train"], 0, val_start), ("val", photos["train"], val_start, None),
            ("test", photos["test"], 0, None),
        ):
            positions = np.arange(labels.shape[0])[start:stop]
            pools = [positions[labels[start:stop] == c] for c in ids]
            empty = [FASHION_CLASSES[c] for c, pool in zip(ids, pools) if pool.size == 0]
            if empty:
                raise DataError(f"{self.files}: no {source} photo of class {empty[0]!r}")
            self._pools[source] = (images, pools)
        super().__init__(split, **world_options)

    @staticmethod
    def _source(split: str) -> str:
        return "val" if split == "val" else "test" if split.startswith("test") else "train"

    def _garment(self, rng: np.random.Generator, split: str, label: int) -> tuple[np.ndarray, int]:
        """(intensity float32 (s, s) in [0, 1], side s) of a random photo of world class ``label``."""
        images, pools = self._pools[self._source(split)]
        photo = images[pools[label][rng.integers(pools[label].size)]].astype(np.float32) / 255.0
        if rng.uniform() < 0.5:
            photo = photo[:, ::-1]
        side = int(round(rng.uniform(*self.garment_size) * self.image_size))
        resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(photo))[None, None], size=(side, side),
                                mode="bilinear", align_corners=False)[0, 0]
        return resized.clamp(0, 1).numpy(), side

    def _place(self, rng: np.random.Generator, intensity: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
        """(mask bool (S, S), intensity float32 (S, S)) of a garment pasted at a random position."""
        size = self.image_size
        y0, x0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        canvas = np.zeros((size, size), dtype=np.float32)
        canvas[y0:y0 + side, x0:x0 + side] = intensity
        return canvas > self.mask_threshold, canvas

    @staticmethod
    def _tint(color: np.ndarray, intensity: np.ndarray) -> np.ndarray:
        """float32 (S, S, 3): the photo's shading (intensity) on a colour, so the garment keeps its
        texture (seams, folds) while its colour says nothing about the class."""
        return (0.35 + 0.65 * intensity)[:, :, None] * color


class GarmentsWorld(_GarmentWorld):
    """Part-dominance world of real garments (multi-label), ``--dataset garments``.

    1-2 garments (``objects``) of distinct classes per image on the grey, cluttered background of
    the ``parts`` world. The default classes differ mostly by parts: T-shirt/top, pullover, coat
    and shirt by sleeves, collar, buttons and length; sandal, sneaker and ankle boot by straps,
    heel and shaft. Each garment gets a random colour (hue, saturation U(0.2, 0.8), value
    U(0.6, 1.0)) shaded by its photo, so shape and texture tell the class, colour does not.
    Earlier garments keep at least ``min_visible`` of their mask when a later one is pasted.
    Splits: train (2000), val (300, other photos), test (500, the t10k photos).
    """

    name = "garments"
    splits = MappingProxyType({"train": 2000, "val": 300, "test": 500})
    multi_label = True
    default_classes = (0, 2, 4, 6, 5, 7, 9)

    def __init__(
        self,
        split: str = "train",
        *,
        objects: tuple[int, int] = (1, 2),
        min_visible: float = 0.6,
        clutter: tuple[int, int] = (2, 5),
        **options,
    ) -> None:
        self.objects = (int(objects[0]), int(objects[1]))
        self.min_visible = float(min_visible)
        self.clutter = (int(clutter[0]), int(clutter[1]))
        classes = options.get("garment_classes") or self.default_classes
        if not 1 <= self.objects[0] <= self.objects[1] <= len(classes):
            raise ValueError(f"objects must be (lo, hi) with 1 <= lo <= hi <= number of classes, got {objects}")
        super().__init__(split, **options)

    def render(self, split: str, index: int) -> Rendered:
        rng = self._rng(split, index)
        size = self.image_size
        image = drawing.clutter_background(rng, self._grid, self.clutter)
        count = int(rng.integers(self.objects[0], self.objects[1] + 1))
        labels = rng.choice(self.num_classes, size=count, replace=False)
        placed: list[tuple[int, np.ndarray, np.ndarray]] = []  # (label, mask, intensity)
        for label in labels:
            intensity, side = self._garment(rng, split, int(label))
            for _attempt in range(30):
                mask, canvas = self._place(rng, intensity, side)
                if mask.any() and all((m & ~mask).sum() >= self.min_visible * m.sum() for _, m, _ in placed):
                    placed.append((int(label), mask, canvas))
                    break
            if not placed:  # the first garment always fits an empty image
                raise RuntimeError("garment placement failed on an empty image")  # pragma: no cover
        segmentation = np.zeros((size, size), dtype=np.uint8)
        boxes, box_labels = [], []
        for label, mask, canvas in placed:
            color = drawing.hsv(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.6, 1.0))
            image[mask] = self._tint(color, canvas)[mask]
            segmentation[mask] = label + 1
            boxes.append(drawing.mask_box(mask))
            box_labels.append(label)
        return finish_scene(image, rng, 0.02, segmentation, boxes, box_labels, sorted(label for label, _, _ in placed))


class GarmentsBiasWorld(_GarmentWorld):
    """Dataset-bias world of real garments (single-label), ``--dataset garments-bias``.

    One garment on a background context: a colour (hue c/K + N(0, ``context_hue_jitter``),
    saturation U(0.5, 0.8), value U(0.45, 0.75)) with a stripe texture at angle c*pi/K and smooth
    brightness noise. The garment has a random hue and a brightness 0.25-0.45 above or below the
    context's, shaded by its photo. Context sampling as in the ``bias`` world: in ``train``,
    ``val`` and ``test_biased`` the context equals the class with probability ``bias_p``, else one
    of the other contexts uniformly; in ``train_unbiased`` and ``test_decorrelated`` it is uniform.
    ``test_context`` (as in the ``bias`` world): the context of a uniformly drawn class and no
    garment at all, empty labels, no masks or boxes; ``context(i)`` is the class the context stands
    for, and the bias study scores how often a model still names it.
    """

    name = "garments-bias"
    splits = MappingProxyType({"train": 2000, "val": 300, "test_biased": 500, "test_decorrelated": 500,
                               "train_unbiased": 2000, "test_context": 500})
    # Context without any object, scored like the bias world's (gainet.studies.bias_study).
    context_splits = ("test_context",)
    biased_splits = ("train", "val", "test_biased")
    multi_label = False
    default_classes = (0, 1, 7, 8)  # T-shirt/top, trouser, sneaker, bag

    def __init__(self, split: str = "train", *, bias_p: float = 0.95, context_hue_jitter: float = 0.02,
                 garment_size: tuple[float, float] = (0.5, 0.7), **options) -> None:
        if not 0.0 <= bias_p <= 1.0:
            raise ValueError(f"bias_p must be in [0, 1], got {bias_p}")
        self.bias_p = float(bias_p)
        self.context_hue_jitter = float(context_hue_jitter)
        super().__init__(split, garment_size=garment_size, **options)

    def _draw_context(self, rng: np.random.Generator, label: int, split: str) -> int:
        return draw_context(rng, label, self.num_classes, self.bias_p if split in self.biased_splits else None)

    def render(self, split: str, index: int) -> Rendered:
        rng = self._rng(split, index)
        size = self.image_size
        yy, xx = self._grid
        label = int(rng.integers(self.num_classes))
        context = self._draw_context(rng, label, split)
        value = rng.uniform(0.45, 0.75)
        color = drawing.hsv(context / self.num_classes + rng.normal(0.0, self.context_hue_jitter),
                            rng.uniform(0.5, 0.8), value)
        texture = drawing.stripes(yy, xx, np.pi * context / self.num_classes, period=6.0 * size / 64,
                                  phase=rng.uniform(0, 2 * np.pi))
        shade = 1.0 + 0.15 * drawing.smooth_noise(rng, size, 4) + 0.12 * (texture - 0.5)
        image = shade[:, :, None] * color
        segmentation = np.zeros((size, size), dtype=np.uint8)
        boxes, box_labels = [], []
        labels: tuple[int, ...] = ()  # context split: no object, no label
        if split not in self.context_splits:
            labels = (label,)
            intensity, side = self._garment(rng, split, label)
            mask, canvas = self._place(rng, intensity, side)
            obj_value = object_value(rng, value)
            garment = self._tint(drawing.hsv(rng.uniform(), rng.uniform(0.2, 0.8), obj_value), canvas / max(float(canvas.max()), 1e-6))
            image[mask] = garment[mask]
            segmentation[mask] = label + 1
            boxes, box_labels = [drawing.mask_box(mask)], [label]
        return finish_scene(image, rng, 0.03, segmentation, boxes, box_labels, labels, context=context)

    def __getitem__(self, index: int) -> dict:
        if self.split not in self.context_splits:
            return super().__getitem__(index)
        index = self._check_index(index)
        item = self.rendered(index)
        return build_sample(image=item.image, segmentation=None, boxes=None, box_labels=None,
                            labels=multi_hot(list(item.labels), self.num_classes), has_masks=False,
                            has_boxes=False, index=index, transform=self.transform)

    def has_masks_at(self, index: int) -> bool:
        """No masks on the context-only split (there is no object)."""
        self._check_index(index)
        return self.split not in self.context_splits

    def has_boxes_at(self, index: int) -> bool:
        """No boxes on the context-only split."""
        return self.has_masks_at(index)

    def context(self, index: int) -> int:
        """0-based context id of item ``index`` (equals the label when the context matches)."""
        return self.rendered(index).context
