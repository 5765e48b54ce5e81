"""PASCAL VOC 2012 (+ SBD) through torchvision's dataset classes.

Layout knowledge (``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``,
``Annotations/<id>.xml``, ``ImageSets/<Segmentation|Main>/<split>.txt``) comes from
torchvision's ``VOCSegmentation`` / ``VOCDetection`` class attributes, XML parsing from
``VOCDetection.parse_voc_xml`` and SBD's ``.mat`` masks from ``SBDataset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from torchvision.datasets import SBDataset, VOCDetection, VOCSegmentation
from torchvision.datasets.vision import VisionDataset

from . import readers
from .errors import DataError
from .files import FileDataset, Record

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC_SPLITS = ("train", "val", "trainval", "train_aug")
IMAGE_SETS = {"segmentation": VOCSegmentation._SPLITS_DIR, "main": VOCDetection._SPLITS_DIR}
# The DeepLab-style augmented layout: train_aug ids with SBD masks converted to PNG.
AUG_MASK_DIR = "SegmentationClassAug"


def find_voc_root(root: str | Path) -> Path:
    """The ``VOC2012``-like directory: ``root`` itself (flat layout), ``root/VOCdevkit/VOC2012``
    (torchvision's layout) or ``root/VOC2012``."""
    root = Path(root)
    for candidate in (root, root / "VOCdevkit" / "VOC2012", root / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DataError(root, "no VOC layout here (expected JPEGImages/ in it, in VOCdevkit/VOC2012/ or in VOC2012/)")


class VOCSegmentationAt(VOCSegmentation):
    """torchvision's ``VOCSegmentation`` over an explicit VOC directory and id list.

    torchvision's constructor insists on ``root/VOCdevkit/VOC2012`` and a fixed set of split
    names; this subclass only sets the same ``images`` / ``targets`` lists from any VOC
    directory (flat or nested) and any ids (e.g. ``train_aug``).
    """

    def __init__(self, voc_root: str | Path, ids: Sequence[str], mask_dir: str = VOCSegmentation._TARGET_DIR) -> None:
        VisionDataset.__init__(self, str(voc_root))
        self.images = [str(Path(voc_root, "JPEGImages", i + ".jpg")) for i in ids]
        self.targets = [str(Path(voc_root, mask_dir, i + self._TARGET_FILE_EXT)) for i in ids]


class VOCDetectionAt(VOCDetection):
    """torchvision's ``VOCDetection`` over an explicit VOC directory and id list (see
    ``VOCSegmentationAt``)."""

    def __init__(self, voc_root: str | Path, ids: Sequence[str]) -> None:
        VisionDataset.__init__(self, str(voc_root))
        self.images = [str(Path(voc_root, "JPEGImages", i + ".jpg")) for i in ids]
        self.targets = [str(Path(voc_root, self._TARGET_DIR, i + self._TARGET_FILE_EXT)) for i in ids]


class VOCDataset(FileDataset):
    """PASCAL VOC 2012 classification / segmentation data in the sample contract.

    Labels: the classes present in the ``SegmentationClass`` mask (0 and 255 ignored); from
    the ``Annotations`` XML objects when an image has no mask. Masks: from the palette PNG
    (``has_masks``). Boxes: from the XML when present (``has_boxes``).

    Args:
        root: the ``VOC2012`` directory itself or a parent holding ``VOCdevkit/VOC2012``.
        split: ``train``, ``val``, ``trainval`` or ``train_aug`` (VOC train + SBD train/val
            minus VOC val; needs ``sbd_root`` or ``ImageSets/Segmentation/train_aug.txt``).
        image_set: ``"segmentation"`` reads ``ImageSets/Segmentation/<split>.txt``,
            ``"main"`` reads ``ImageSets/Main/<split>.txt`` (classification ids, most without masks).
        sbd_root: SBD ``dataset`` directory (``img/``, ``cls/``, ``train.txt``, ``val.txt``).
        classes: foreground class names, id = position + 1 (VOC's 20 by default).
        multi_label: whether images may show several classes; None infers it from the folder's
            annotations, as for labels files: single-label (cross entropy, top-1 accuracy) when
            every image of ``JPEGImages/``, in every split, shows exactly one class (its XML
            objects, else its mask).
        Other arguments: see ``FileDataset``.

    ``ap_definition = "voc"``: evaluation also reports the VOC devkit's average precision
    (``mAP_voc``) for this dataset.
    """

    ap_definition = "voc"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        image_set: str = "segmentation",
        sbd_root: str | Path | None = None,
        classes: Sequence[str] = VOC_CLASSES,
        multi_label: bool | None = None,
        **file_options,
    ) -> None:
        super().__init__(classes, **file_options)
        if image_set not in IMAGE_SETS:
            raise ValueError(f"image_set must be one of {', '.join(IMAGE_SETS)}; got {image_set!r}")
        self.root = find_voc_root(root)
        self.split = split
        self._sbd: dict[str, tuple[SBDataset, int]] = {}
        if split == "train_aug":
            records = self._train_aug_records(sbd_root)
        else:
            split_file = self.root / "ImageSets" / IMAGE_SETS[image_set] / f"{split}.txt"
            if split not in VOC_SPLITS and not split_file.is_file():
                raise ValueError(f"unknown split {split!r} for dataset 'voc'; valid: {', '.join(VOC_SPLITS)} (or a file in {split_file.parent})")
            records = self._voc_records(readers.read_id_list(split_file), split_file)
        self._set_records(records, self.root)
        self.multi_label = self._any_image_with_several_classes() if multi_label is None else bool(multi_label)

    def _any_image_with_several_classes(self) -> bool:
        """Whether some image of the folder (any split) shows more than one class: its XML objects,
        else its mask (XML first: parsing it is cheaper than decoding a mask). Stops at the first
        such image, so multi-label data costs a few reads; unreadable files are left to loading."""
        mask_dirs = [self.root / name for name in (VOCSegmentation._TARGET_DIR, AUG_MASK_DIR)]
        for image in sorted((self.root / "JPEGImages").iterdir()):
            xml = self.root / VOCDetection._TARGET_DIR / f"{image.stem}.xml"
            mask = next((d / f"{image.stem}.png" for d in mask_dirs if (d / f"{image.stem}.png").is_file()), None)
            try:
                if xml.is_file():
                    present = {name for name, _ in readers.read_voc_xml(xml)}
                elif mask is not None:
                    values = np.unique(readers.read_index_mask(mask))
                    present = {int(v) for v in values if 0 < v <= len(self.classes)}
                else:
                    continue
            except DataError:
                continue
            if len(present) > 1:
                return True
        return False

    def _voc_records(self, ids: Sequence[str], split_file: Path, mask_dir: str = VOCSegmentation._TARGET_DIR) -> list[Record]:
        segmentation = VOCSegmentationAt(self.root, ids, mask_dir)
        detection = VOCDetectionAt(self.root, ids)
        records = []
        for image_id, image, mask, xml in zip(ids, segmentation.images, segmentation.masks, detection.annotations):
            image, mask, xml = Path(image), Path(mask), Path(xml)
            if not image.is_file():
                self._log.handle(DataError(image, f"listed in {split_file} but not found"))
                continue
            has_mask, has_xml = mask.is_file(), xml.is_file()
            if not (has_mask or has_xml):
                self._log.handle(DataError(image, f"has neither a mask ({mask.name}) nor an annotation ({xml.name})"))
                continue
            records.append(Record(image_id, image, mask=mask if has_mask else None, annotation=xml if has_xml else None))
        return records

    def _train_aug_records(self, sbd_root: str | Path | None) -> list[Record]:
        seg_sets = self.root / "ImageSets" / IMAGE_SETS["segmentation"]
        if sbd_root is None:
            listed = seg_sets / "train_aug.txt"
            if not listed.is_file():
                raise DataError(self.root, "split 'train_aug' needs sbd_root (SBD with img/, cls/, train.txt, val.txt) or ImageSets/Segmentation/train_aug.txt")
            mask_dir = AUG_MASK_DIR if (self.root / AUG_MASK_DIR).is_dir() else VOCSegmentation._TARGET_DIR
            return self._voc_records(readers.read_id_list(listed), listed, mask_dir)
        train_file, val_file = seg_sets / "train.txt", seg_sets / "val.txt"
        voc_train, voc_val = readers.read_id_list(train_file), set(readers.read_id_list(val_file))
        records = self._voc_records(voc_train, train_file)
        sbd_root = Path(sbd_root)
        for needed in ("img", "cls", "train.txt", "val.txt"):
            if not (sbd_root / needed).exists():
                raise DataError(sbd_root, f"not an SBD dataset directory (missing {needed})")
        taken = set(voc_train)
        for image_set in ("train", "val"):
            sbd = SBDataset(str(sbd_root), image_set=image_set, mode="segmentation", download=False)
            for index, (image, mat) in enumerate(zip(sbd.images, sbd.masks)):
                image_id = Path(image).stem
                if image_id in taken or image_id in voc_val:
                    continue
                taken.add(image_id)
                if not Path(image).is_file() or not Path(mat).is_file():
                    missing = image if not Path(image).is_file() else mat
                    self._log.handle(DataError(missing, f"listed in {sbd_root / (image_set + '.txt')} but not found"))
                    continue
                self._sbd[str(mat)] = (sbd, index)
                records.append(Record(image_id, Path(image), mask=Path(mat)))
        return records

    def read_segmentation(self, record: Record) -> np.ndarray:
        if record.mask is not None and str(record.mask) in self._sbd:
            sbd, index = self._sbd[str(record.mask)]
            try:
                _, target = sbd[index]
            except Exception as err:  # scipy raises assorted types for a bad .mat
                readers.read_rgb(record.image)  # blame the image if that is what fails
                raise DataError(record.mask, f"cannot read SBD mask ({type(err).__name__}: {err})") from err
            return np.asarray(target).astype(np.int64)
        return super().read_segmentation(record)


def voc_palette() -> list[int]:
    """The 256-colour PASCAL VOC palette, flat ``[r, g, b, ...]`` (255 = ignore is cream)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette
