"""Users' own data: an image folder plus a labels file (CSV or JSON), with optional masks,
boxes, class list and splits. The format is documented in ``docs/data.md``.

A directory in VOC layout (``JPEGImages/`` ...) loads through ``VOCDataset`` with the
directory's own ``classes.txt``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Sequence

from gainet.io.options import check_options, keyword_types

from . import readers
from .errors import DataError
from .files import FileDataset, Record
from .voc import VOC_CLASSES, VOCDataset, find_voc_root

LABEL_FILES = ("labels.csv", "labels.json")
BOX_SOURCES = ("boxes.json", "boxes")
ALL_SPLITS = (None, "all")


def _strip_image_ext(name: str) -> str:
    """``name`` without a known image extension (other dots are part of the stem)."""
    path = Path(name)
    return path.with_suffix("").as_posix() if path.suffix.lower() in readers.IMAGE_EXTENSIONS else path.as_posix()


def _parse_label_field(value: Any) -> list[str]:
    """Label tokens from a CSV field (``;``-separated, else whitespace-separated) or a JSON
    value (a list, or a string parsed like a CSV field)."""
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)]
    text = "" if value is None else str(value)
    parts = text.split(";") if ";" in text else re.split(r"\s+", text)
    return [p.strip() for p in parts if p.strip()]


def read_label_entries(path: str | Path) -> list[tuple[str, list[str], str | None]]:
    """Entries (image, label tokens, split or None) of a labels file.

    CSV: a header with columns ``image``, ``labels`` and optionally ``split``.
    JSON: ``{"image": [labels...]}`` or a list of ``{"image", "labels"[, "split"]}`` records.
    """
    path = Path(path)
    readers.require_file(path, "labels file")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(path, f"cannot parse JSON ({err})") from err
        if isinstance(data, dict):
            return [(str(image), _parse_label_field(labels), None) for image, labels in data.items()]
        if isinstance(data, list):
            entries = []
            for number, item in enumerate(data, start=1):
                if not isinstance(item, dict) or "image" not in item or "labels" not in item:
                    raise DataError(path, f"record {number} needs 'image' and 'labels'")
                split = item.get("split")
                entries.append((str(item["image"]), _parse_label_field(item["labels"]), None if split is None else str(split)))
            return entries
        raise DataError(path, "JSON labels must be an object {image: [labels]} or a list of records")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (csv.Error, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot parse CSV ({err})") from err
    if not rows:
        raise DataError(path, "lists no images")
    columns = set(rows[0])
    if not {"image", "labels"} <= columns:
        raise DataError(path, "CSV needs a header with columns image,labels[,split]")
    return [
        (str(row["image"]).strip(), _parse_label_field(row["labels"]), (row.get("split") or "").strip() or None)
        for row in rows
    ]


class FolderDataset(FileDataset):
    """Images + labels file (+ optional masks, boxes, classes.txt, splits).

    Args:
        root: dataset directory.
        split: a split name, or None / ``"all"`` for every entry. Splits come from
            ``split_file``, else ``root/splits/<split>.txt``, else the labels file's ``split``
            column / field.
        images: image folder (relative to root).
        labels: labels file (default: ``labels.csv`` or ``labels.json`` in root).
        masks: folder of class-index PNGs named ``<image stem>.png`` (used when present).
        boxes: COCO JSON file or folder of VOC XML ``<image stem>.xml`` (default:
            ``boxes.json`` or ``boxes/`` in root when present).
        classes: ``classes.txt`` path or list of names (default: ``root/classes.txt``, else the
            sorted label names found in the labels file).
        multi_label: whether images may carry several labels; None infers it from the labels
            file (single-label when every entry, in every split, has exactly one label).
        Other arguments: see ``FileDataset``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        images: str = "images",
        labels: str | Path | None = None,
        masks: str | Path | None = "masks",
        boxes: str | Path | None = None,
        classes: str | Path | Sequence[str] | None = None,
        split_file: str | Path | None = None,
        multi_label: bool | None = None,
        **file_options,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "dataset directory not found")
        labels_path = self._find_labels(labels)
        entries = read_label_entries(labels_path)
        class_names, explicit_classes = self._class_list(classes, entries)
        super().__init__(class_names, **file_options)
        self.multi_label = any(len(set(tokens)) > 1 for _, tokens, _ in entries) if multi_label is None else bool(multi_label)
        self.split = split
        self.images_dir = self.root / images
        if not self.images_dir.is_dir():
            raise DataError(self.images_dir, "image folder not found")
        entries = self._select_split(entries, split, split_file, labels_path)
        masks_dir = None if masks is None else self.root / masks
        box_source = self._find_boxes(boxes)
        coco = readers.read_coco_boxes(box_source) if box_source is not None and box_source.is_file() else None
        records = []
        for image_name, tokens, _ in entries:
            try:
                records.append(
                    self._record(image_name, tokens, labels_path, explicit_classes, masks_dir, box_source, coco)
                )
            except DataError as err:
                self._log.handle(err)
        self._set_records(records, labels_path)

    # -- discovery -------------------------------------------------------------------------
    def _find_labels(self, labels: str | Path | None) -> Path:
        if labels is not None:
            return self.root / labels
        for name in LABEL_FILES:
            if (self.root / name).is_file():
                return self.root / name
        raise DataError(self.root, f"no labels file ({' or '.join(LABEL_FILES)})")

    def _find_boxes(self, boxes: str | Path | None) -> Path | None:
        if boxes is not None:
            path = self.root / boxes
            if not path.exists():
                raise DataError(path, "box file or folder not found")
            return path
        for name in BOX_SOURCES:
            if (self.root / name).exists():
                return self.root / name
        return None

    def _class_list(self, classes: Any, entries: list) -> tuple[list[str], bool]:
        if isinstance(classes, (list, tuple)):
            return [str(c) for c in classes], True
        path = self.root / "classes.txt" if classes is None else self.root / classes
        if classes is not None or path.is_file():
            return readers.read_classes(path), True
        return sorted({token for _, tokens, _ in entries for token in tokens}), False

    def _select_split(self, entries: list, split: str | None, split_file: str | Path | None, labels_path: Path) -> list:
        if split in ALL_SPLITS:
            return entries
        candidates = [self.root / split_file] if split_file is not None else [self.root / "splits" / f"{split}.txt"]
        for candidate in candidates:
            if candidate.is_file():
                wanted = readers.read_id_list(candidate)
                by_name = {name: e for e in entries for name in (e[0], _strip_image_ext(e[0]))}
                selected = []
                for name in wanted:
                    if name not in by_name:
                        self._log.handle(DataError(candidate, f"lists {name!r}, which is not in {labels_path.name}"))
                        continue
                    selected.append(by_name[name])
                return selected
        if split_file is not None:
            raise DataError(self.root / split_file, "split file not found")
        found = sorted({e[2] for e in entries if e[2] is not None})
        if split not in found:
            where = f"splits in {labels_path.name}: {', '.join(found)}" if found else "no splits/ file or split column"
            raise ValueError(f"unknown split {split!r} for {self.root} ({where}; or use split=None for all)")
        return [e for e in entries if e[2] == split]

    # -- records ---------------------------------------------------------------------------
    def _resolve_image(self, name: str, labels_path: Path) -> Path:
        path = self.images_dir / name
        if path.suffix.lower() in readers.IMAGE_EXTENSIONS:
            if not path.is_file():
                raise DataError(path, f"listed in {labels_path.name} but not found")
            return path
        for ext in readers.IMAGE_EXTENSIONS:
            for candidate in (path.with_name(path.name + ext), path.with_name(path.name + ext.upper())):
                if candidate.is_file():
                    return candidate
        raise DataError(path, f"listed in {labels_path.name} but no image file with that stem")

    def _token_id(self, token: str, image: str, labels_path: Path, explicit_classes: bool) -> int:
        if token in self._class_index:
            return self._class_index[token]
        # Numeric ids follow classes.txt's numbering: line n holds class id n (0 is background).
        if explicit_classes and token.isdigit() and 1 <= int(token) <= len(self.classes):
            return int(token) - 1
        raise DataError(labels_path, f"image {image}: unknown class {token!r}")

    def _record(
        self,
        image_name: str,
        tokens: list[str],
        labels_path: Path,
        explicit_classes: bool,
        masks_dir: Path | None,
        box_source: Path | None,
        coco: dict | None,
    ) -> Record:
        image = self._resolve_image(image_name, labels_path)
        if not tokens:
            raise DataError(labels_path, f"image {image_name}: empty label set")
        labels = tuple(sorted({self._token_id(t, image_name, labels_path, explicit_classes) for t in tokens}))
        image_id = _strip_image_ext(image.relative_to(self.images_dir).as_posix())
        mask = None
        if masks_dir is not None and (masks_dir / f"{image_id}.png").is_file():
            mask = masks_dir / f"{image_id}.png"
        annotation = inline = None
        if box_source is not None and coco is None:
            xml = box_source / f"{image_id}.xml"
            annotation = xml if xml.is_file() else None
        elif coco is not None:
            objects = coco.get(image.relative_to(self.images_dir).as_posix()) or coco.get(image.name)
            if objects:
                inline = tuple((self.class_id(name, f"{box_source} (image {image.name})"), box) for name, box in objects)
        return Record(image_id, image, labels=labels, mask=mask, annotation=annotation, boxes=inline,
                      boxes_source=str(box_source) if inline else None, labels_source=str(labels_path))


def load_folder(root: str | Path, split: str | None = None, **options) -> FileDataset:
    """A ``FolderDataset``, or a ``VOCDataset`` when ``root`` has VOC layout.

    For VOC layout the classes come from ``root/classes.txt`` (VOC's 20 without one).
    """
    root = Path(root)
    voc_layout = (root / "JPEGImages").is_dir() or (root / "VOCdevkit" / "VOC2012").is_dir()
    accepted = keyword_types(FolderDataset, exclude=("root", "split"))
    if voc_layout:  # VOCDataset's options, with classes given as a list or a file as for a folder
        accepted = {**keyword_types(VOCDataset, exclude=("root", "split")), "classes": accepted["classes"]}
    what = "dataset option (folder in VOC layout)" if voc_layout else "folder dataset option"
    options = check_options(options, accepted, what)
    if voc_layout:
        voc_root = find_voc_root(root)
        classes_option = options.pop("classes", None)
        if isinstance(classes_option, (list, tuple)):
            classes: Sequence[str] = classes_option
        else:
            # A given file is relative to the dataset directory; a found one is already a full path
            # (joining it to a relative root again would double the root).
            classes_file = root / classes_option if classes_option is not None else next(
                (p for p in (root / "classes.txt", voc_root / "classes.txt") if p.is_file()), None
            )
            classes = readers.read_classes(classes_file) if classes_file is not None else VOC_CLASSES
        return VOCDataset(root, split or "train", classes=classes, **options)
    return FolderDataset(root, split, **options)
