"""Procedurally generated worlds: ``parts`` (part dominance) and ``bias`` (dataset bias).

Each image is drawn in numpy from ``(seed, world, split, index)`` alone, so any sample can be
regenerated anywhere (DataLoader workers included) and two seeds give different worlds.
Rendered arrays are cached in memory per dataset object after first use (``cache=True``).
Parameters and their rationale are documented in ``docs/data.md``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from . import drawing
from .sample import build_sample, multi_hot, paste_mask_arguments
from .transforms import JointTransform

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 128


@dataclass(frozen=True)
class Rendered:
    """One generated image at native size S, before normalisation.

    image: uint8 (S, S, 3); segmentation: uint8 (S, S) with 0 background, k = class k;
    boxes: float32 (N, 4) XYXY pixels; box_labels: int64 (N,) 0-based; labels: 0-based
    class ids present; parts: bool (S, S) per object's discriminative part (parts world);
    context: the background context id (bias world) or -1.
    """

    image: np.ndarray
    segmentation: np.ndarray
    boxes: np.ndarray
    box_labels: np.ndarray
    labels: tuple[int, ...]
    parts: np.ndarray | None = None
    context: int = -1


def _stable_hash(text: str) -> int:
    # Python's hash() is salted per process; crc32 keeps seeds stable across runs and workers.
    return zlib.crc32(text.encode("utf-8"))


class World(Dataset):
    """Base class of the generated worlds; subclasses define ``name``, ``splits`` and ``render``.

    Args:
        split: one of ``self.splits``.
        seed: world seed; every image is a function of (seed, world, split, index).
        image_size: side S of the square images, 16..128 (default 64).
        num_images: images in this split (default: the split's default size).
        train_transforms: random crop / flip / colour jitter on top of the generated
            randomness (default False: the world already randomises placement).
        augment: keyword arguments for ``JointTransform`` (crop_scale, ...).
        cache: keep rendered arrays in memory after first generation.
        stats_images: number of ``train`` images used to measure mean / std.
        mean, std: normalise with these (e.g. ImageNet's, for a model trained elsewhere) instead
            of the measured statistics.
    """

    name: str = ""
    splits: Mapping[str, int] = MappingProxyType({})
    multi_label: bool = True

    def __init__(
        self,
        split: str = "train",
        *,
        seed: int = 0,
        image_size: int = 64,
        num_images: int | None = None,
        train_transforms: bool = False,
        augment: dict | None = None,
        cache: bool = True,
        stats_images: int = 128,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
    ) -> None:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r} for world {self.name!r}; valid: {', '.join(self.splits)}")
        if not MIN_IMAGE_SIZE <= int(image_size) <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] for world {self.name!r}, got {image_size}")
        self.split = split
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.num_images = int(self.splits[split] if num_images is None else num_images)
        if self.num_images < 1:
            raise ValueError(f"num_images must be positive, got {self.num_images}")
        self._grid = drawing.grid(self.image_size)
        self._cache: dict[int, Rendered] | None = {} if cache else None
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is None:
            self.mean, self.std = self._measure_stats(stats_images)
        else:
            self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.transform = JointTransform(
            self.image_size, train=train_transforms, mean=self.mean, std=self.std, **(augment or {})
        )

    # -- generation -------------------------------------------------------------------------
    def render(self, split: str, index: int) -> Rendered:
        raise NotImplementedError

    def _rng(self, split: str, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _stable_hash(self.name), _stable_hash(split), int(index)])

    def _measure_stats(self, count: int) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """Per-channel mean / std in [0, 1] over the first ``count`` train images.

        Every split uses the train statistics, as a model trained on it would.
        """
        pixels = np.stack([self.render("train", i).image for i in range(max(count, 1))]).reshape(-1, 3)
        pixels = pixels.astype(np.float64) / 255.0
        mean = tuple(round(float(m), 4) for m in pixels.mean(axis=0))
        std = tuple(round(max(float(s), 1e-3), 4) for s in pixels.std(axis=0))
        return mean, std  # type: ignore[return-value]

    def prerender(self) -> None:
        """Render every item into the cache now.

        DataLoader workers each fill their own copy of the cache and lose it when they exit;
        rendering in the main process first lets forked workers share one copy.
        """
        if self._cache is None:
            raise ValueError("prerender() needs cache=True")
        for index in range(self.num_images):
            self.rendered(index)

    def rendered(self, index: int) -> Rendered:
        """The raw generated arrays of item ``index`` (native size, before transforms)."""
        index = self._check_index(index)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        item = self.render(self.split, index)
        if self._cache is not None:
            self._cache[index] = item
        return item

    # -- Dataset API -----------------------------------------------------------------------
    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        return index

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        item = self.rendered(index)
        return build_sample(
            image=item.image,
            segmentation=item.segmentation,
            boxes=item.boxes,
            box_labels=item.box_labels,
            labels=multi_hot(list(item.labels), len(self.classes)),
            has_masks=True,
            has_boxes=True,
            index=index,
            transform=self.transform,
            **paste_mask_arguments(self, index),
        )

    def image_id(self, index: int) -> str:
        """Generated id, e.g. ``parts-train-s0-00042``."""
        return f"{self.name}-{self.split}-s{self.seed}-{self._check_index(index):05d}"

    def boxes(self, index: int) -> tuple[Tensor, Tensor]:
        """(boxes float32 (N, 4) XYXY pixels, box_labels int64 (N,) 0-based) in eval geometry."""
        item = self.rendered(index)
        size = (self.image_size, self.image_size)
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(item.boxes), format="XYXY", canvas_size=size)
        out, keep = self.transform.eval_geometry(boxes)
        return out, torch.from_numpy(item.box_labels)[keep]

    def has_masks_at(self, index: int) -> bool:
        """Every generated image carries masks."""
        self._check_index(index)
        return True

    def has_boxes_at(self, index: int) -> bool:
        """Every generated image carries boxes."""
        self._check_index(index)
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, seed={self.seed}, n={self.num_images}, size={self.image_size}, classes={len(self.classes)})"


class PartsWorld(World):
    """Part-dominance world: multi-label, 1-3 objects, each a weakly informative body plus a
    small, highly discriminative part.

    Body evidence (real but overlapping between classes): the body's hue is drawn around a
    class hue with spread ``body_hue_jitter`` (class hues are 1/C apart on the hue circle), and
    its stripes run at a class angle (classes pi/C apart) with spread ``body_angle_jitter``
    radians. Part evidence (exact): a disc of ``part_area`` of the body's area in the class's
    own saturated colour. Background: smooth grey noise plus low-saturation rectangles and
    lines that carry no class information.

    ``hide_parts=True`` draws the objects without their parts (masks unchanged): a
    body-only world to measure how much the bodies alone tell.
    Splits: train (2000), val (300), test (500).
    """

    name = "parts"
    splits = MappingProxyType({"train": 2000, "val": 300, "test": 500})
    multi_label = True

    def __init__(
        self,
        split: str = "train",
        *,
        num_classes: int = 5,
        objects: tuple[int, int] = (1, 2),
        body_size: tuple[float, float] = (0.25, 0.35),
        body_hue_jitter: float = 0.25,
        body_angle_jitter: float = 0.5,
        part_area: float = 0.03,
        min_visible: float = 0.6,
        clutter: tuple[int, int] = (2, 5),
        hide_parts: bool = False,
        **world_options,
    ) -> None:
        if not 2 <= num_classes <= 12:
            raise ValueError(f"num_classes must be in [2, 12] for the parts world, got {num_classes}")
        lo, hi = objects
        if not 1 <= lo <= hi <= num_classes:
            raise ValueError(f"objects must be (lo, hi) with 1 <= lo <= hi <= num_classes, got {objects}")
        if not 0.0 < part_area < 0.5:
            raise ValueError(f"part_area must be in (0, 0.5), got {part_area}")
        self.num_classes = int(num_classes)
        self.classes = [f"class{k}" for k in range(self.num_classes)]
        self.objects = (int(lo), int(hi))
        self.body_size = tuple(body_size)
        self.body_hue_jitter = float(body_hue_jitter)
        self.body_angle_jitter = float(body_angle_jitter)
        self.part_area = float(part_area)
        self.min_visible = float(min_visible)
        self.clutter = tuple(clutter)
        self.hide_parts = bool(hide_parts)
        super().__init__(split, **world_options)

    def body_hue(self, label: int) -> float:
        """Centre of class ``label``'s body hue distribution."""
        return label / self.num_classes

    def body_angle(self, label: int) -> float:
        """Centre of class ``label``'s stripe angle distribution (radians, mod pi)."""
        return np.pi * label / self.num_classes

    def part_color(self, label: int) -> np.ndarray:
        """RGB (3,) of class ``label``'s part: fully saturated, half a step off the body hues."""
        return drawing.hsv((label + 0.5) / self.num_classes, 1.0, 1.0)

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        return drawing.clutter_background(rng, self._grid, self.clutter)

    def render(self, split: str, index: int) -> Rendered:
        rng = self._rng(split, index)
        size = self.image_size
        yy, xx = self._grid
        image = self._background(rng)
        count = int(rng.integers(self.objects[0], self.objects[1] + 1))
        labels = rng.choice(self.num_classes, size=count, replace=False)
        placed: list[tuple[int, np.ndarray, np.ndarray]] = []  # (label, body mask, part mask)
        for label in labels:
            for _attempt in range(30):
                ry, rx = rng.uniform(*self.body_size, size=2) * size
                reach = max(ry, rx) + 1
                cy, cx = rng.uniform(reach, size - 1 - reach, size=2)
                angle = rng.uniform(0, np.pi)
                body = drawing.ellipse(yy, xx, cy, cx, ry, rx, angle)
                # The part sits anywhere inside the body, fully inside it.
                part_r = float(np.sqrt(self.part_area * rx * ry))
                rho, phi = np.sqrt(rng.uniform()) * (min(rx, ry) - part_r - 1.0), rng.uniform(0, 2 * np.pi)
                part = drawing.ellipse(yy, xx, cy + rho * np.sin(phi), cx + rho * np.cos(phi), part_r, part_r)
                # Earlier objects must stay mostly visible and keep their part whole, so each
                # label has visible evidence of both kinds.
                if all(
                    not (p & body).any() and (b & ~body).sum() >= self.min_visible * b.sum() for _, b, p in placed
                ):
                    placed.append((int(label), body, part))
                    break
            if not placed:  # the first object always fits an empty image
                raise RuntimeError("object placement failed on an empty image")  # pragma: no cover
        segmentation = np.zeros((size, size), dtype=np.uint8)
        parts = np.zeros((size, size), dtype=bool)
        boxes, box_labels = [], []
        for label, body, part in placed:
            hue = self.body_hue(label) + rng.normal(0.0, self.body_hue_jitter)
            color = drawing.hsv(hue, rng.uniform(0.3, 0.6), rng.uniform(0.5, 0.9))
            grating = drawing.stripes(
                yy,
                xx,
                self.body_angle(label) + rng.normal(0.0, self.body_angle_jitter),
                period=rng.uniform(4.0, 7.0) * size / 64,
                phase=rng.uniform(0, 2 * np.pi),
            )
            texture = (0.6 + 0.4 * grating)[:, :, None] * color
            image[body] = texture[body]
            parts &= ~body
            if not self.hide_parts:
                image[part] = self.part_color(label)
                parts |= part
            segmentation[body] = label + 1
            boxes.append(drawing.mask_box(body))
            box_labels.append(label)
        return finish_scene(image, rng, 0.02, segmentation, boxes, box_labels,
                            sorted(label for label, _, _ in placed), parts=parts)

    def part_masks(self, index: int) -> Tensor:
        """float32 (C, S, S): each class's discriminative part pixels at native geometry
        (matches the sample when the transform keeps geometry, i.e. not ``train_transforms``)."""
        item = self.rendered(index)
        seg = torch.from_numpy(item.segmentation.astype(np.int64))
        parts = torch.from_numpy(item.parts)
        ids = torch.arange(1, self.num_classes + 1).view(-1, 1, 1)
        return ((seg.unsqueeze(0) == ids) & parts.unsqueeze(0)).float()


def draw_context(rng: np.random.Generator, label: int, num_classes: int, bias_p: float | None) -> int:
    """The context class of an image of class ``label``: ``label`` with probability ``bias_p``,
    otherwise one of the other ``num_classes - 1`` uniformly; uniform over all when ``bias_p`` is
    ``None`` (the decorrelated and unbiased splits). Shared by the bias worlds."""
    if bias_p is None:
        return int(rng.integers(num_classes))
    if rng.uniform() < bias_p:
        return label
    other = int(rng.integers(num_classes - 1))
    return other + (other >= label)


def finish_scene(image: np.ndarray, rng: np.random.Generator, noise: float, segmentation: np.ndarray,
                 boxes, box_labels, labels, **extra) -> Rendered:
    """Gaussian pixel noise (std ``noise``) on the float ``(S, S, 3)`` image, then the
    :class:`Rendered` record; ``boxes`` (XYXY) and ``box_labels`` may be lists, ``extra`` holds
    ``parts`` / ``context``. Shared by every world's ``render``."""
    image = image + rng.normal(0.0, noise, size=image.shape).astype(np.float32)
    return Rendered(image=drawing.to_uint8(image), segmentation=segmentation,
                    boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                    box_labels=np.asarray(box_labels, dtype=np.int64), labels=tuple(labels), **extra)


def object_value(rng: np.random.Generator, value: float) -> float:
    """HSV value of an object on a context of value ``value``: 0.25-0.45 brighter or darker
    (either direction that fits in [0, 1]), so the object stays visible whatever its random hue
    without its colour carrying the class. Shared by the bias worlds."""
    delta = rng.uniform(0.25, 0.45)
    return value + delta if value + delta <= 1.0 and (value - delta < 0.0 or rng.uniform() < 0.5) else value - delta


class BiasWorld(World):
    """Dataset-bias world: single-label; a class-specific shape on a background context.

    The context is a coloured, noisy background whose hue identifies a class (hues 1/K apart):
    a shortcut covering most of the image. The object is one of ``drawing.SHAPES`` (one per
    class) in a random colour that differs from the background in brightness only, so the
    shape, not its colour, identifies the class.

    Context sampling: in ``train``, ``val`` and ``test_biased`` the context equals the class
    with probability ``bias_p``, otherwise it is one of the other K-1 contexts uniformly (so
    ``bias_p`` is exactly the expected match rate; ``bias_p = 1/K`` is unbiased). In
    ``test_decorrelated`` and ``train_unbiased`` the context is uniform over all K.
    ``test_context`` holds contexts (uniform over all K) without any object: empty labels,
    no box, an all-background segmentation.
    """

    name = "bias"
    splits = MappingProxyType(
        {"train": 2000, "val": 300, "test_biased": 500, "test_decorrelated": 500, "train_unbiased": 2000,
         "test_context": 500}
    )
    # Context without any object (the paper's "water without boat"): no label, no box; scored by
    # how often a model still names the context's class (docs/bias_study.md).
    context_splits = ("test_context",)
    biased_splits = ("train", "val", "test_biased")
    multi_label = False

    def __init__(
        self,
        split: str = "train",
        *,
        num_classes: int = 4,
        bias_p: float = 0.95,
        object_size: tuple[float, float] = (0.13, 0.2),
        context_hue_jitter: float = 0.02,
        **world_options,
    ) -> None:
        if not 2 <= num_classes <= len(drawing.SHAPES):
            raise ValueError(f"num_classes must be in [2, {len(drawing.SHAPES)}] for the bias world, got {num_classes}")
        if not 0.0 <= bias_p <= 1.0:
            raise ValueError(f"bias_p must be in [0, 1], got {bias_p}")
        self.num_classes = int(num_classes)
        self.shapes = list(drawing.SHAPES[: self.num_classes])
        self.classes = list(self.shapes)
        self.bias_p = float(bias_p)
        self.object_size = tuple(object_size)
        self.context_hue_jitter = float(context_hue_jitter)
        super().__init__(split, **world_options)

    def _draw_context(self, rng: np.random.Generator, label: int, split: str) -> int:
        return draw_context(rng, label, self.num_classes, self.bias_p if split in self.biased_splits else None)

    def render(self, split: str, index: int) -> Rendered:
        rng = self._rng(split, index)
        size = self.image_size
        yy, xx = self._grid
        label = int(rng.integers(self.num_classes))
        context = self._draw_context(rng, label, split)
        value = rng.uniform(0.45, 0.75)
        color = drawing.hsv(
            context / self.num_classes + rng.normal(0.0, self.context_hue_jitter), rng.uniform(0.5, 0.8), value
        )
        shade = 1.0 + 0.15 * drawing.smooth_noise(rng, size, 4)
        image = shade[:, :, None] * color
        if split in self.context_splits:
            return finish_scene(image, rng, 0.03, np.zeros((size, size), dtype=np.uint8), [], [], (),
                                context=context)
        radius = rng.uniform(*self.object_size) * size
        cy, cx = rng.uniform(radius + 1, size - 2 - radius, size=2)
        mask = drawing.shape_mask(self.shapes[label], yy, xx, cy, cx, radius)
        obj_value = object_value(rng, value)  # drawn before the hue: the worlds' random streams stay as they were
        image[mask] = drawing.hsv(rng.uniform(), rng.uniform(0.2, 0.8), obj_value)
        segmentation = np.zeros((size, size), dtype=np.uint8)
        segmentation[mask] = label + 1
        return finish_scene(image, rng, 0.03, segmentation, [drawing.mask_box(mask)], [label], (label,),
                            context=context)

    def context(self, index: int) -> int:
        """0-based context id of item ``index`` (equals the label when the context matches)."""
        return self.rendered(index).context
