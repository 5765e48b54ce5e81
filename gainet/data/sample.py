"""The sample contract shared by every dataset, and the helpers that build it.

Every dataset returns::

    {
      "image":        float32 (3, H, W), normalised with the dataset's mean/std,
      "labels":       float32 (C,) multi-hot in {0, 1} (single-label: exactly one 1),
      "masks":        float32 (C, H, W) in {0, 1}: per-class object masks (zeros when unknown),
      "box_masks":    float32 (C, H, W) in {0, 1}: union of each class's boxes (zeros when unknown),
      "has_masks":    bool (): whether "masks" is ground truth for this image,
      "has_boxes":    bool (): whether "box_masks" is ground truth,
      "segmentation": int64 (H, W): 0 background, k = class k (1..C), 255 ignore / unknown,
      "index":        int, position in the dataset,
    }

and, from a dataset given paste masks (``dataset.paste_masks``, see :mod:`gainet.data.grabcut`),
also ``"paste_mask"``: float32 (H, W) in {0, 1}, the pixels a context swap pastes (zeros where
the dataset holds none for the image), moved by the same augmentation as the image.

C counts foreground classes only. "masks"[c] is exactly ``segmentation == c + 1``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors

from .transforms import IGNORE_INDEX, JointTransform

SAMPLE_KEYS = ("image", "labels", "masks", "box_masks", "has_masks", "has_boxes", "segmentation", "index")
OPTIONAL_KEYS = ("paste_mask", "load_skipped")


def multi_hot(class_ids: list[int] | np.ndarray | Tensor, num_classes: int) -> Tensor:
    """float32 (C,) with 1 at each 0-based class id."""
    labels = torch.zeros(num_classes, dtype=torch.float32)
    ids = torch.as_tensor(np.asarray(class_ids, dtype=np.int64).reshape(-1))
    labels[ids] = 1.0
    return labels


def masks_from_segmentation(segmentation: Tensor, num_classes: int) -> Tensor:
    """float32 (C, H, W): channel c is ``segmentation == c + 1`` (255 and 0 give zeros)."""
    ids = torch.arange(1, num_classes + 1, dtype=segmentation.dtype).view(-1, 1, 1)
    return (segmentation.unsqueeze(0) == ids).float()


def box_masks_from_boxes(boxes: Tensor, box_labels: Tensor, num_classes: int, size: tuple[int, int]) -> Tensor:
    """float32 (C, H, W): union of each class's boxes.

    A pixel belongs to a box when the box overlaps it at all (floor / ceil of the XYXY
    corners), so a box always covers every pixel of the object it encloses.
    """
    height, width = size
    out = torch.zeros(num_classes, height, width, dtype=torch.float32)
    for (x0, y0, x1, y1), label in zip(boxes.tolist(), box_labels.tolist()):
        c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        c1, r1 = min(int(np.ceil(x1)), width), min(int(np.ceil(y1)), height)
        out[label, r0:r1, c0:c1] = 1.0
    return out


def build_sample(
    *,
    image: np.ndarray | Tensor,
    segmentation: np.ndarray | Tensor | None,
    boxes: np.ndarray | Tensor | None,
    box_labels: np.ndarray | Tensor | None,
    labels: Tensor,
    has_masks: bool,
    has_boxes: bool,
    index: int,
    transform: JointTransform,
    paste_mask: np.ndarray | Tensor | None = None,
    with_paste_mask: bool = False,
) -> dict:
    """Transform raw arrays jointly and assemble the contract dict.

    Args:
        image: uint8 (H, W, 3) array or (3, H, W) tensor.
        segmentation: (H, W) integer index map or None when unknown.
        boxes: (N, 4) XYXY pixels on the (H, W) canvas, or None.
        box_labels: (N,) 0-based class ids of the boxes.
        labels: float32 (C,) multi-hot; image-level labels are kept as given even when a
            random crop cuts an object out (the usual practice for classification).
        paste_mask: (H, W) in {0, 1} or None: moved with the image into ``"paste_mask"``.
        with_paste_mask: add ``"paste_mask"`` (zeros when ``paste_mask`` is None), so that every
            sample of a dataset that holds paste masks has the key (batches collate).
    """
    num_classes = labels.numel()
    image_t = torch.as_tensor(image)
    if image_t.ndim == 3 and image_t.shape[-1] == 3 and image_t.shape[0] != 3:
        image_t = image_t.permute(2, 0, 1)
    height, width = image_t.shape[-2:]
    tv_image = tv_tensors.Image(image_t.contiguous())
    tv_seg = None
    if segmentation is not None and has_masks:
        tv_seg = tv_tensors.Mask(torch.as_tensor(segmentation).reshape(1, height, width))
    box_tensor = torch.zeros(0, 4) if boxes is None else torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    label_tensor = torch.zeros(0, dtype=torch.long) if box_labels is None else torch.as_tensor(box_labels).long().reshape(-1)
    tv_boxes = tv_tensors.BoundingBoxes(box_tensor, format="XYXY", canvas_size=(height, width))
    tv_paste = None
    if paste_mask is not None:
        tv_paste = tv_tensors.Mask(torch.as_tensor(np.asarray(paste_mask) > 0, dtype=torch.uint8).reshape(1, height, width))
    out_image, out_seg, out_boxes, keep, out_paste = transform.with_paste_mask(tv_image, tv_seg, tv_boxes, tv_paste)
    size = tuple(out_image.shape[-2:])
    has_boxes = bool(has_boxes and box_tensor.shape[0] > 0)
    box_masks = (
        box_masks_from_boxes(out_boxes, label_tensor[keep], num_classes, size)
        if has_boxes
        else torch.zeros(num_classes, *size)
    )
    sample = {
        "image": out_image.contiguous(),
        "labels": labels.float(),
        "masks": masks_from_segmentation(out_seg, num_classes),
        "box_masks": box_masks,
        "has_masks": torch.tensor(tv_seg is not None),
        "has_boxes": torch.tensor(has_boxes),
        "segmentation": out_seg,
        "index": int(index),
    }
    if with_paste_mask or out_paste is not None:
        sample["paste_mask"] = out_paste if out_paste is not None else torch.zeros(size)
    return sample


def check_sample(sample: dict, num_classes: int) -> None:
    """Raise ``AssertionError`` when ``sample`` breaks the contract (a test and debugging aid)."""
    assert set(SAMPLE_KEYS) <= set(sample) <= set(SAMPLE_KEYS) | set(OPTIONAL_KEYS), f"keys {sorted(sample)}"
    image, seg = sample["image"], sample["segmentation"]
    assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3, image.shape
    height, width = image.shape[-2:]
    assert sample["labels"].shape == (num_classes,) and sample["labels"].dtype == torch.float32
    assert set(sample["labels"].unique().tolist()) <= {0.0, 1.0}
    for key in ("masks", "box_masks"):
        assert sample[key].shape == (num_classes, height, width) and sample[key].dtype == torch.float32, key
        assert set(sample[key].unique().tolist()) <= {0.0, 1.0}, key
    for key in ("has_masks", "has_boxes"):
        assert sample[key].dtype == torch.bool and sample[key].ndim == 0, key
    assert seg.shape == (height, width) and seg.dtype == torch.int64
    values = set(seg.unique().tolist())
    assert values <= set(range(num_classes + 1)) | {IGNORE_INDEX}, values
    if not bool(sample["has_masks"]):
        assert values == {IGNORE_INDEX} and not sample["masks"].any()
    if not bool(sample["has_boxes"]):
        assert not sample["box_masks"].any()
    assert isinstance(sample["index"], int)


def paste_mask_arguments(dataset, index: int) -> dict:
    """``build_sample``'s paste-mask arguments for item ``index`` of ``dataset``: none unless the
    dataset was given paste masks (``dataset.paste_masks``: ``{index: (H, W) uint8}`` at the raw
    image's size, :func:`gainet.data.grabcut.attach_paste_masks`)."""
    masks = getattr(dataset, "paste_masks", None)
    if masks is None:
        return {}
    return {"paste_mask": masks.get(int(index)), "with_paste_mask": True}
