"""Object masks estimated inside boxes with GrabCut (OpenCV).

A box carries its object's context along in its corners; a counterfactual that pastes the whole
box onto another image still shows the source's context next to the object, and a classifier that
reads the context can keep reading it there. GrabCut (Rother et al., 2004) separates the object
from the box's corners by colour: the pixels outside every box of the image initialise the
background colour model, the pixels inside are "probably foreground", and a few rounds of graph
cuts decide each pixel. Nothing is learned, so the estimate does not inherit a biased model's
attention (why the attention-thresholded ``swap_mask=attention`` was removed).

GrabCut runs once per image, not per step: :func:`estimate_paste_masks` estimates the mask of
each supervised image when the dataset is set up, on the unaugmented image, and caches it on disk
keyed by the image's pixels, its boxes and the settings (so later runs and other seeds reuse it);
:func:`attach_paste_masks` hands the masks to the dataset, which moves them with the same random
augmentation as the image (``sample["paste_mask"]``).

Needs ``opencv-python-headless`` (``pip install "gainet[opencv]"``); imported on first use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)
CACHE_VERSION = 1  # bump when the estimate changes: old cache files are then ignored


def _opencv():
    try:
        import cv2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('swap_mask=grabcut needs OpenCV: pip install "gainet[opencv]" '
                          "(opencv-python-headless)") from error
    return cv2


def _to_uint8(image: Tensor) -> np.ndarray:
    """``(3, H, W)`` in any range (e.g. normalised) -> ``(H, W, 3)`` uint8 by one min-max over
    all channels (an affine map per image keeps the colour differences GrabCut models)."""
    low, high = float(image.min()), float(image.max())
    scaled = (image.float() - low) / max(high - low, 1e-12) * 255.0
    return np.ascontiguousarray(scaled.round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy())


def grabcut_mask(image: Tensor, box: Tensor, iterations: int = 5, seed: int = 0) -> tuple[Tensor, bool]:
    """GrabCut foreground inside ``box``.

    Args:
        image: ``(3, H, W)`` float, any range.
        box: ``(H, W)`` in {0, 1}: the union of the image's boxes (any shape; pixels > 0.5 are
            "probably foreground", the rest background).
        iterations: GrabCut rounds.
        seed: OpenCV's RNG seed (GrabCut initialises its colour models with k-means), so the
            result does not depend on earlier calls.

    Returns:
        ``(H, W)`` float mask in {0, 1}, a subset of ``box``, and whether GrabCut produced it:
        ``False`` where it could not (no background pixel to learn from, an empty box, an empty
        result); the mask is then the box itself.
    """
    inside = box > 0.5
    if not bool(inside.any()) or bool(inside.all()):
        return inside.to(image.dtype), False
    cv2 = _opencv()
    cv2.setRNGSeed(int(seed))
    labels = np.where(inside.cpu().numpy(), cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(_to_uint8(image), labels, None, background, foreground, int(iterations), cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # e.g. too few distinct colours for the models' k-means
        return inside.to(image.dtype), False
    kept = torch.from_numpy((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).to(inside.device) & inside
    if not bool(kept.any()):
        return inside.to(image.dtype), False
    return kept.to(image.dtype), True


# ----------------------------------------------------------------------------- once per image
def default_cache_dir() -> Path:
    """``$GAINET_CACHE/grabcut``, else ``$XDG_CACHE_HOME/gainet/grabcut``, else ``~/.cache/gainet/grabcut``."""
    if os.environ.get("GAINET_CACHE"):
        return Path(os.environ["GAINET_CACHE"]) / "grabcut"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gainet" / "grabcut"


def raw_image_and_boxes(dataset, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Item ``index`` before any transform: ``image`` uint8 ``(H, W, 3)`` and its ``boxes``
    float ``(N, 4)`` XYXY pixels. Generated worlds and file datasets (VOC, folder) only."""
    from gainet.data.files import FileDataset
    from gainet.data.worlds import World

    if isinstance(dataset, World):
        item = dataset.rendered(index)
        return item.image, np.asarray(item.boxes, dtype=np.float64).reshape(-1, 4)
    if isinstance(dataset, FileDataset):
        raw = dataset.load_raw(dataset.records[index])
        return raw.image, np.asarray(raw.boxes, dtype=np.float64).reshape(-1, 4)
    raise ValueError(f"swap_mask=grabcut needs a generated world or a file dataset (VOC, folder), "
                     f"not {type(dataset).__name__}")


def box_union(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool ``(H, W)``: pixels any box overlaps (floor / ceil of the corners, as the box masks)."""
    height, width = size
    union = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes.tolist():
        c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        c1, r1 = min(int(np.ceil(x1)), width), min(int(np.ceil(y1)), height)
        union[r0:r1, c0:c1] = True
    return union


def cache_key(image: np.ndarray, boxes: np.ndarray, iterations: int, max_side: int) -> str:
    """sha1 of the image's pixels and shape, the boxes and the settings."""
    digest = hashlib.sha1()
    digest.update(f"v{CACHE_VERSION} {image.shape} it{iterations} side{max_side}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    digest.update(np.ascontiguousarray(boxes, dtype=np.float64).tobytes())
    return digest.hexdigest()


def grabcut_raw(image: np.ndarray, boxes: np.ndarray, *, iterations: int = 5, max_side: int = 320,
                seed: int = 0) -> tuple[np.ndarray, bool]:
    """GrabCut inside ``boxes`` on a raw uint8 ``(H, W, 3)`` image: ``(mask uint8 (H, W) in {0, 1},
    ok)``. Photos are estimated at ``max_side`` pixels on their longer side (GrabCut's cost grows
    with the pixel count; training sees them smaller still) and the mask is resized back with
    nearest neighbour. ``ok`` False: the box itself (see :func:`grabcut_mask`)."""
    height, width = image.shape[:2]
    union = box_union(boxes, (height, width))
    scale = min(1.0, max_side / max(height, width))
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    box = torch.from_numpy(union).float()
    if scale < 1.0:
        small = (max(1, round(height * scale)), max(1, round(width * scale)))
        tensor = torch.nn.functional.interpolate(tensor[None], size=small, mode="bilinear", antialias=True,
                                                 align_corners=False)[0]
        box = torch.nn.functional.interpolate(box[None, None], size=small, mode="nearest")[0, 0]
    mask, ok = grabcut_mask(tensor, box, iterations=iterations, seed=seed)
    if scale < 1.0:
        mask = torch.nn.functional.interpolate(mask[None, None], size=(height, width), mode="nearest")[0, 0]
    out = (mask.numpy() > 0.5) & union  # never outside the boxes
    if not out.any():
        return union.astype(np.uint8), False
    return out.astype(np.uint8), ok


@dataclass
class PasteMaskStats:
    """What :func:`estimate_paste_masks` did: images ``estimated`` now (and their CPU
    ``seconds``), ``cached`` (read from disk), ``kept_box`` (GrabCut could not separate
    anything: the box is pasted whole), ``no_box`` (nothing to estimate)."""

    estimated: int = 0
    cached: int = 0
    kept_box: int = 0
    no_box: int = 0
    seconds: float = 0.0


def _write_png_atomic(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        Image.fromarray(array).save(temporary, format="PNG")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_png(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError):
        return None  # a damaged cache file is estimated again


def estimate_paste_masks(dataset, indices: Iterable[int], *, cache_dir: str | Path | None = None,
                         iterations: int = 5, max_side: int = 320) -> tuple[dict[int, np.ndarray], PasteMaskStats]:
    """GrabCut's object inside the boxes of each image of ``indices``, once, at raw resolution.

    Args:
        dataset: a generated world or file dataset (:func:`raw_image_and_boxes`).
        indices: the images to estimate (the supervised ones).
        cache_dir: where estimates are kept (``<sha1>.png``: 0 background, 1 GrabCut's object,
            2 a box kept whole); ``None``: :func:`default_cache_dir`; ``""``: no cache.
        iterations, max_side: GrabCut's rounds and working size (:func:`grabcut_raw`).

    Returns:
        ``{index: uint8 (H, W) in {0, 1}}`` (images without a box are left out) and the stats.
    """
    folder = default_cache_dir() if cache_dir is None else (Path(cache_dir) if str(cache_dir) else None)
    masks: dict[int, np.ndarray] = {}
    stats = PasteMaskStats()
    for index in indices:
        image, boxes = raw_image_and_boxes(dataset, int(index))
        if boxes.shape[0] == 0:
            stats.no_box += 1
            continue
        path = folder / f"{cache_key(image, boxes, iterations, max_side)}.png" if folder is not None else None
        stored = _read_png(path) if path is not None and path.is_file() else None
        if stored is not None and stored.shape == image.shape[:2]:
            stats.cached += 1
        else:
            started = time.process_time()
            mask, ok = grabcut_raw(image, boxes, iterations=iterations, max_side=max_side)
            stats.seconds += time.process_time() - started
            stats.estimated += 1
            stored = np.where(mask > 0, 1 if ok else 2, 0).astype(np.uint8)
            if path is not None:
                _write_png_atomic(path, stored)
        stats.kept_box += int((stored == 2).any())
        masks[int(index)] = (stored > 0).astype(np.uint8)
    return masks, stats


def attach_paste_masks(dataset, masks: dict[int, np.ndarray]) -> None:
    """Give ``dataset`` (a generated world or file dataset) its paste masks: from then on every
    sample carries ``"paste_mask"``, moved by the same augmentation as the image."""
    from gainet.data.files import FileDataset
    from gainet.data.worlds import World

    if not isinstance(dataset, (World, FileDataset)):
        raise ValueError(f"paste masks need a generated world or a file dataset, not {type(dataset).__name__}")
    dataset.paste_masks = dict(masks)
