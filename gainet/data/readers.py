"""Readers for image, mask, class-list and annotation files; every failure is a ``DataError``
naming the file.

XML annotations are parsed with torchvision's ``VOCDetection.parse_voc_xml``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import VOCDetection

from .errors import DataError

try:  # the same parser torchvision's VOCDetection uses
    from defusedxml.ElementTree import ParseError, parse as xml_parse
except ImportError:
    from xml.etree.ElementTree import ParseError, parse as xml_parse

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
BACKGROUND_NAMES = ("background", "_background_", "__background__")
INDEX_MASK_MODES = ("P", "L", "1", "I", "I;16")
# Slack for the two box conventions in the wild (VOC's 1-based inclusive corners and
# 0-based exclusive ones): a corner may sit one pixel past the image edge before it is
# called outside; it is then clamped.
BOX_SLACK = 1.0

_IMAGE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


def require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(path, f"{what} not found")


def _gray_to_8bit(img: Image.Image, path: Path) -> np.ndarray:
    """uint8 (H, W) of a grayscale image deeper than 8 bits (modes ``I;16*``, ``I``, ``F``).

    Pillow's ``convert("RGB")`` clips such values at 255 (a 16-bit photo turns solid white), so
    they are scaled instead: integers from the 16-bit range (0..65535 -> 0..255, i.e. v / 257
    rounded), floats from [0, 1]. Values outside those ranges have no agreed meaning: DataError.
    """
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        if values.size and (np.nanmin(values) < 0 or np.nanmax(values) > 1 or np.isnan(values).any()):
            raise DataError(path, f"float image with values outside [0, 1] ({np.nanmin(values):g}..{np.nanmax(values):g})")
        scale = 255.0
    else:
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(path, f"{img.mode} image with values outside 0..65535 ({values.min():g}..{values.max():g})")
        scale = 255.0 / 65535.0
    return np.rint(values * scale).astype(np.uint8)


def read_rgb(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB.

    Every image the package reads goes through here. Grayscale deeper than 8 bits (16-bit
    PNG/TIFF, modes ``I;16``, ``I``, ``F``) is scaled to 0..255 (see ``_gray_to_8bit``).

    ``min_side``: a JPEG at least twice as large is decoded at 1/2, 1/4 or 1/8 of its size in the
    DCT (Pillow's ``draft``), the smallest scale whose both sides stay >= ``min_side``: a
    4000x3000 photo for a 224-px network decodes to 1000x750 in a third of the time and a
    sixteenth of the memory. The result is then smaller than the file's size (``image_size``);
    other formats, and JPEGs under twice ``min_side``, decode at full size.
    """
    path = Path(path)
    require_file(path, "image file")
    try:
        with Image.open(path) as img:
            if min_side is not None and img.format == "JPEG":
                img.draft("RGB", (int(min_side), int(min_side)))
            img.load()  # decode now so a truncated file fails here, not later
            if img.mode.startswith("I") or img.mode == "F":
                return np.repeat(_gray_to_8bit(img, path)[..., None], 3, axis=2)
            return np.array(img.convert("RGB"))
    except DataError:
        raise  # already names the file (DataError is a ValueError, one of _IMAGE_ERRORS)
    except _IMAGE_ERRORS as err:
        raise DataError(path, f"cannot read image ({type(err).__name__}: {err})") from err


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    path = Path(path)
    require_file(path, "image file")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except _IMAGE_ERRORS as err:
        raise DataError(path, f"cannot read image ({type(err).__name__}: {err})") from err
    return height, width


def read_index_mask(path: str | Path) -> np.ndarray:
    """Read a class-index PNG (palette or grayscale, values are class ids) as int64 (H, W)."""
    path = Path(path)
    require_file(path, "mask file")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in INDEX_MASK_MODES:
                raise DataError(path, f"mask must be a palette or grayscale index image, got mode {img.mode}")
            return np.asarray(img).astype(np.int64)
    except DataError:
        raise  # already names the file (DataError is a ValueError, one of _IMAGE_ERRORS)
    except _IMAGE_ERRORS as err:
        raise DataError(path, f"cannot read mask ({type(err).__name__}: {err})") from err


def check_segmentation(segmentation: np.ndarray, num_classes: int, image_hw: tuple[int, int], path: str | Path) -> None:
    """Raise ``DataError`` when a mask does not match its image or holds unknown class ids."""
    if tuple(segmentation.shape) != tuple(image_hw):
        (mh, mw), (ih, iw) = segmentation.shape, image_hw
        raise DataError(path, f"mask is {mw}x{mh} but its image is {iw}x{ih}")
    values = np.unique(segmentation)
    bad = values[(values > num_classes) & (values != 255) | (values < 0)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8])
        raise DataError(path, f"unknown class id(s) {shown} (valid: 1..{num_classes}, 0 background, 255 ignore)")


def read_classes(path: str | Path) -> list[str]:
    """Class names from a ``classes.txt``: one per line, id = line number + 1 (0 = background).

    A first line naming the background (``background``, ``_background_``, ``__background__``)
    is dropped, since id 0 is the background anyway.
    """
    path = Path(path)
    require_file(path, "classes file")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if names and names[0].lower() in BACKGROUND_NAMES:
        names = names[1:]
    if not names:
        raise DataError(path, "lists no classes")
    if "" in names:
        raise DataError(path, f"blank line {names.index('') + 1} (ids are line numbers, so blank lines are ambiguous)")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(path, f"duplicate class name(s) {', '.join(duplicates)}")
    return names


def read_id_list(path: str | Path) -> list[str]:
    """Non-empty, stripped lines of a split file (first whitespace-separated field)."""
    path = Path(path)
    require_file(path, "split file")
    ids = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise DataError(path, "lists no images")
    return ids


def _number(value: Any, path: Path, field: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise DataError(path, f"{field} is not a number ({value!r})") from err


def read_voc_xml(path: str | Path) -> list[tuple[str, tuple[float, float, float, float]]]:
    """Objects of a VOC annotation XML as (class name, XYXY box in pixels).

    VOC corners are 1-based and inclusive, so (xmin, ymin, xmax, ymax) becomes
    (xmin - 1, ymin - 1, xmax, ymax) in continuous pixel coordinates.
    """
    path = Path(path)
    require_file(path, "annotation file")
    try:
        root = xml_parse(path).getroot()
    except (ParseError, OSError) as err:
        raise DataError(path, f"cannot parse XML ({type(err).__name__}: {err})") from err
    if root.tag != "annotation":
        raise DataError(path, f"not a VOC annotation (root element <{root.tag}>, not <annotation>)")
    # An empty <annotation/> parses to {} or {"annotation": ""}: a valid file with no objects.
    annotation = VOCDetection.parse_voc_xml(root).get("annotation")
    objects = annotation.get("object", []) if isinstance(annotation, dict) else []
    if isinstance(objects, dict):
        objects = [objects]
    out = []
    for number, obj in enumerate(objects, start=1):
        name = obj.get("name") if isinstance(obj, dict) else None
        box = obj.get("bndbox") if isinstance(obj, dict) else None
        if not name or not isinstance(box, dict):
            raise DataError(path, f"object {number} lacks <name> or <bndbox>")
        corners = [_number(box.get(key), path, f"object {number} {key}") for key in ("xmin", "ymin", "xmax", "ymax")]
        out.append((str(name).strip(), (corners[0] - 1, corners[1] - 1, corners[2], corners[3])))
    return out


def read_coco_boxes(path: str | Path) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    """Boxes of a COCO-style JSON, keyed by each image's ``file_name``: (class name, XYXY)."""
    path = Path(path)
    require_file(path, "COCO file")
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot parse JSON ({err})") from err
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(path, "COCO file needs lists 'images', 'annotations' and 'categories'")
    try:
        names = {cat["id"]: str(cat["name"]) for cat in coco["categories"]}
        files = {img["id"]: str(img["file_name"]) for img in coco["images"]}
    except (KeyError, TypeError) as err:
        raise DataError(path, f"COCO category or image entry lacks a field ({err})") from err
    out: dict[str, list] = {name: [] for name in files.values()}
    for number, ann in enumerate(coco["annotations"], start=1):
        if not isinstance(ann, dict) or ann.get("image_id") not in files:
            raise DataError(path, f"annotation {number} refers to an unknown image_id")
        if ann.get("category_id") not in names:
            raise DataError(path, f"annotation {number} refers to an unknown category_id {ann.get('category_id')!r}")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(path, f"annotation {number} bbox must be [x, y, width, height]")
        x, y, w, h = (_number(v, path, f"annotation {number} bbox") for v in bbox)
        out[files[ann["image_id"]]].append((names[ann["category_id"]], (x, y, x + w, y + h)))
    return out


def check_boxes(boxes: np.ndarray, image_hw: tuple[int, int], path: str | Path) -> np.ndarray:
    """Validate XYXY boxes against an (H, W) image and clamp them to it.

    Raises ``DataError`` for a degenerate box (no width or height) or one outside the image
    by more than ``BOX_SLACK`` pixels.
    """
    height, width = image_hw
    clamped = boxes.astype(np.float32).reshape(-1, 4).copy()
    clamped[:, 0::2] = clamped[:, 0::2].clip(0, width)
    clamped[:, 1::2] = clamped[:, 1::2].clip(0, height)
    for number, ((x0, y0, x1, y1), (c0, r0, c1, r1)) in enumerate(zip(boxes.tolist(), clamped.tolist()), start=1):
        corners = f"({x0:g}, {y0:g}, {x1:g}, {y1:g})"
        if x0 < -BOX_SLACK or y0 < -BOX_SLACK or x1 > width + BOX_SLACK or y1 > height + BOX_SLACK:
            raise DataError(path, f"box {number} {corners} lies outside the {width}x{height} image")
        if not (c1 > c0 and r1 > r0):
            raise DataError(path, f"box {number} {corners} is degenerate (no width or height inside the image)")
    return clamped
