"""Shared machinery of the file-backed datasets (VOC and folder): records, lazy loading,
validation and the skip policy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from . import readers
from .errors import DataError, SkipLog
from .sample import build_sample, multi_hot, paste_mask_arguments
from .transforms import IMAGENET_MEAN, IMAGENET_STD, JointTransform

# How many following items ``FileDataset.__getitem__`` tries as a stand-in for one that fails to
# load under on_error="skip" before it gives up with a DataError (a folder gone bad, not one file).
MAX_STAND_IN_TRIES = 8


@dataclass(frozen=True)
class Record:
    """Where one item's data lives; nothing is decoded until the item is loaded.

    labels: 0-based class ids from a labels file, or None to derive them from the mask
    (else from the boxes). mask: class-index image (PNG, or SBD ``.mat``). annotation: VOC
    XML with boxes. boxes: inline boxes ((class id, XYXY), ...) read from ``boxes_source``.
    labels_source: the file ``labels`` were read from (named when the mask disagrees with them).
    """

    image_id: str
    image: Path
    labels: tuple[int, ...] | None = None
    mask: Path | None = None
    annotation: Path | None = None
    boxes: tuple[tuple[int, tuple[float, float, float, float]], ...] | None = None
    boxes_source: str | None = None
    labels_source: str | None = None


@dataclass(frozen=True)
class RawItem:
    """A decoded, validated item before transforms.

    image: uint8 (H, W, 3); segmentation: int64 (H, W) or None; boxes: float32 (N, 4) XYXY
    clamped to the image; box_labels: int64 (N,) 0-based; labels: sorted 0-based ids.
    """

    image: np.ndarray
    segmentation: np.ndarray | None
    boxes: np.ndarray
    box_labels: np.ndarray
    labels: tuple[int, ...]


def scale_boxes(boxes: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """float32 (N, 4) XYXY boxes of an (H, W) image moved onto the same image resized to ``to_hw``."""
    (fh, fw), (th, tw) = from_hw, to_hw
    return (boxes * np.asarray([tw / fw, th / fh, tw / fw, th / fh], dtype=np.float32)).astype(np.float32)


def resize_nearest(array: np.ndarray, to_hw: tuple[int, int]) -> np.ndarray:
    """``array`` (H, W) resized to ``to_hw`` by nearest neighbour (pixel centres; class ids and 255
    kept as they are)."""
    (fh, fw), (th, tw) = array.shape[:2], to_hw
    rows = np.minimum(((np.arange(th) + 0.5) * fh / th).astype(np.int64), fh - 1)
    cols = np.minimum(((np.arange(tw) + 0.5) * fw / tw).astype(np.int64), fw - 1)
    return array[rows[:, None], cols[None, :]]


class FileDataset(Dataset):
    """Base of the datasets read from files: subclasses build ``Record`` lists.

    Construction checks what is cheap (files listed exist, labels parse); ``validate=True``
    also decodes every image, mask and annotation. Problems raise ``DataError``, or with
    ``on_error="skip"`` drop the item and are listed in ``self.skipped`` as (file, reason).
    Errors found later, while an item loads, raise ``DataError``, or under ``"skip"`` let the next
    item stand in for it, flagged in the sample's ``"load_skipped"`` (see ``__getitem__``).

    ``reduce_decode`` (default True): samples decode a JPEG at least twice as large as needed at
    a reduced scale, keeping its short side >= ``2 * image_size`` (``readers.read_rgb``; boxes,
    masks and paste masks follow): decoding a folder of 4000x3000 photos then costs a fraction
    of the full decode. ``load_raw`` (GrabCut, the WSSS stages) still reads the full size.
    """

    multi_label = True

    def __init__(
        self,
        classes: Sequence[str],
        *,
        image_size: int = 224,
        train_transforms: bool = False,
        augment: dict | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        on_error: str = "raise",
        validate: bool = False,
        reduce_decode: bool = True,
    ) -> None:
        self.classes = list(classes)
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.transform = JointTransform(image_size, train=train_transforms, mean=self.mean, std=self.std, **(augment or {}))
        self.validate = bool(validate)
        # Samples of large JPEGs decode at a reduced scale (short side >= 2 x image_size, so the
        # training crop, >= 0.7 of a side, still has more pixels than the network takes).
        self.decode_side = 2 * int(image_size) if reduce_decode else None
        self._log = SkipLog(on_error)
        self.records: list[Record] = []

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(file, reason) of every item dropped under ``on_error="skip"``."""
        return self._log.skipped

    def _set_records(self, records: list[Record], source: str | Path) -> None:
        """Check (and with ``validate`` decode) each record; keep the good ones."""
        kept = []
        for record in records:
            try:
                readers.require_file(record.image, "image file")
                if self.validate:
                    self.load_raw(record)
            except DataError as err:
                self._log.handle(err)
            else:
                kept.append(record)
        if not kept:
            detail = f"; {len(self.skipped)} skipped, first: {self.skipped[0][0]}: {self.skipped[0][1]}" if self.skipped else ""
            raise DataError(source, f"no usable images{detail}")
        self.records = kept

    # -- loading ---------------------------------------------------------------------------
    def class_id(self, name: str, file: str | Path) -> int:
        """0-based id of class ``name``; ``DataError`` naming ``file`` when unknown."""
        try:
            return self._class_index[name]
        except KeyError:
            raise DataError(file, f"unknown class {name!r}") from None

    def read_segmentation(self, record: Record) -> np.ndarray:
        """int64 (H, W) class-index map of ``record.mask``."""
        return readers.read_index_mask(record.mask)

    def read_image(self, record: Record, min_side: int | None = None) -> np.ndarray:
        """uint8 (H, W, 3) RGB of ``record.image`` (a large JPEG reduced, see ``readers.read_rgb``)."""
        return readers.read_rgb(record.image, min_side)

    def read_boxes(self, record: Record, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Validated boxes float32 (N, 4) XYXY clamped to the image, and labels int64 (N,)."""
        if record.annotation is not None:
            objects = readers.read_voc_xml(record.annotation)
            pairs = [(self.class_id(name, record.annotation), box) for name, box in objects]
            where: str | Path = record.annotation
        elif record.boxes is not None:
            pairs = list(record.boxes)
            where = f"{record.boxes_source} (image {record.image.name})"
        else:
            pairs = []
            where = record.image
        boxes = np.asarray([box for _, box in pairs], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray([label for label, _ in pairs], dtype=np.int64)
        return readers.check_boxes(boxes, image_hw, where), labels

    def load_raw(self, record: Record, min_side: int | None = None) -> RawItem:
        """Decode and validate one record (no transform), at the file's size.

        ``min_side``: decode a large JPEG reduced (``readers.read_rgb``); the item's boxes and mask
        are validated against the file's size, then brought to the decoded one (boxes scaled,
        mask by nearest neighbour), so the item is the file's, seen at a lower resolution.
        """
        image = self.read_image(record, min_side)
        image_hw = image.shape[:2]
        if min_side is not None:
            image_hw = readers.image_size(record.image)
        segmentation = None
        if record.mask is not None:
            segmentation = self.read_segmentation(record)
            readers.check_segmentation(segmentation, len(self.classes), image_hw, record.mask)
        boxes, box_labels = self.read_boxes(record, image_hw)
        if record.labels is not None:
            labels = tuple(sorted(set(record.labels)))
            source = record.image
            if segmentation is not None:
                self._check_mask_agrees(segmentation, labels, record)
        elif segmentation is not None:
            present = np.unique(segmentation)
            labels = tuple(int(v) - 1 for v in present if 0 < v <= len(self.classes))
            source = record.mask
        else:
            labels = tuple(sorted({int(v) for v in box_labels}))
            source = record.annotation or record.image
        if not labels:
            raise DataError(source, "empty label set (no foreground class)")
        if len(labels) > 1 and not self.multi_label:
            names = ", ".join(self.classes[i] for i in labels)
            raise DataError(source, f"shows {len(labels)} classes ({names}) but the dataset is single-label "
                                    "(multi_label false); set multi_label true")
        if image.shape[:2] != tuple(image_hw):  # decoded reduced: the annotations follow
            boxes = scale_boxes(boxes, image_hw, image.shape[:2])
            if segmentation is not None:
                segmentation = resize_nearest(segmentation, image.shape[:2])
        return RawItem(image, segmentation, boxes, box_labels, labels)

    def _check_mask_agrees(self, segmentation: np.ndarray, labels: tuple[int, ...], record: Record) -> None:
        """Raise ``DataError`` naming the mask when the classes it shows (ids 1..C; 0 and 255 say
        nothing) are not exactly the labels listed for its image: L_e would otherwise supervise a
        listed class with an empty mask, or the mask's other class would be taught as background."""
        shown = tuple(int(v) - 1 for v in np.unique(segmentation) if 0 < v <= len(self.classes))
        if shown != labels:
            names = lambda ids: ", ".join(self.classes[i] for i in ids) or "no class"  # noqa: E731
            where = Path(record.labels_source).name if record.labels_source else "the labels file"
            raise DataError(record.mask, f"mask shows {names(shown)} but {where} lists {names(labels)} for {record.image.name}")

    # -- Dataset API -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        """The sample of item ``index``; every sample carries ``"load_skipped"``: ``""``, or the
        ``"file: reason"`` of an item that failed to load in its place.

        A file that breaks while an epoch runs (truncated, replaced, unreadable: construction only
        checks that it exists unless ``validate``) raises ``DataError`` under ``on_error="raise"``.
        Under ``"skip"`` the next loadable item (``index + 1``, ``index + 2``, ... wrapping round)
        stands in for it, so batch shapes, samplers and DDP's collectives are unchanged, and the
        sample says what it replaced. The dataset is a copy in each DataLoader worker, so nothing is
        recorded here: whoever iterates counts the non-empty ``load_skipped`` of its batches (the
        trainer logs them per epoch; ``evaluate_gain`` leaves the stand-ins out of its metrics).
        """
        index = index % len(self.records)
        try:
            return self._sample(index)
        except DataError as error:
            if self._log.on_error == "raise":
                raise
            failed = f"{error.file}: {error.problem}"
        tries = min(len(self.records) - 1, MAX_STAND_IN_TRIES)
        for step in range(1, tries + 1):
            try:
                return self._sample((index + step) % len(self.records), load_skipped=failed)
            except DataError:
                continue
        raise DataError(self.records[index].image, f"failed to load ({failed}), and so did the next {tries} items "
                        "that could stand in for it (on_error=skip): check the files")

    def _sample(self, index: int, load_skipped: str = "") -> dict:
        record = self.records[index]
        raw = self.load_raw(record, self.decode_side)
        paste = paste_mask_arguments(self, index)
        if paste.get("paste_mask") is not None and paste["paste_mask"].shape[:2] != raw.image.shape[:2]:
            paste["paste_mask"] = resize_nearest(paste["paste_mask"], raw.image.shape[:2])  # estimated at full size
        sample = build_sample(
            image=raw.image,
            segmentation=raw.segmentation,
            boxes=raw.boxes,
            box_labels=raw.box_labels,
            labels=multi_hot(list(raw.labels), len(self.classes)),
            has_masks=raw.segmentation is not None,
            has_boxes=len(raw.boxes) > 0,
            index=index,
            transform=self.transform,
            **paste,
        )
        sample["load_skipped"] = load_skipped
        return sample

    def image_id(self, index: int) -> str:
        """The item's file stem (path relative to the image folder, without extension)."""
        return self.records[index].image_id

    def boxes(self, index: int) -> tuple[Tensor, Tensor]:
        """(boxes float32 (N, 4) XYXY pixels, labels int64 (N,) 0-based) in the eval geometry
        of ``self.transform`` (the sample's geometry unless ``train_transforms``)."""
        record = self.records[index]
        image_hw = readers.image_size(record.image)
        boxes, labels = self.read_boxes(record, image_hw)
        tv_boxes = tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=image_hw)
        out, keep = self.transform.eval_geometry(tv_boxes)
        return out, torch.from_numpy(labels)[keep]

    def has_masks_at(self, index: int) -> bool:
        """Whether item ``index`` has a mask file (its sample's ``has_masks``), without decoding."""
        return self.records[index].mask is not None

    def has_boxes_at(self, index: int) -> bool:
        """Whether item ``index`` has a box source (XML or inline boxes), without decoding."""
        record = self.records[index]
        return record.annotation is not None or bool(record.boxes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, classes={len(self.classes)}, skipped={len(self.skipped)})"
