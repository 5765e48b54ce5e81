"""Joint image / segmentation / box transforms built on ``torchvision.transforms.v2``.

One random draw moves the image, its segmentation (a ``tv_tensors.Mask``, resized with
nearest neighbour so class ids and the ignore value 255 survive) and its boxes (a
``tv_tensors.BoundingBoxes``) together, so per-class masks and box masks derived after the
transform stay aligned with the pixels.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EvalResize = Literal["resize", "center_crop", "letterbox"]
EVAL_RESIZE_MODES = ("resize", "center_crop", "letterbox")


class JointTransform:
    """Train or eval pipeline producing a square ``image_size`` x ``image_size`` sample.

    Train: ``RandomResizedCrop(scale=crop_scale, ratio=crop_ratio)``, horizontal flip with
    probability ``hflip_p``, ``ColorJitter`` (image only), normalise.
    Eval (deterministic), by ``eval_resize``: ``"resize"`` warps to the square;
    ``"center_crop"`` resizes the shorter side then centre-crops; ``"letterbox"`` resizes the
    longer side and pads (image with the mean colour, segmentation with 255 = ignore).

    Args:
        image_size: output side S in pixels.
        train: random augmentation if True, the deterministic eval pipeline otherwise.
        mean, std: per-channel statistics of images in [0, 1], used by ``Normalize``.
        color_jitter: (brightness, contrast, saturation, hue) or None for no jitter.
    """

    def __init__(
        self,
        image_size: int,
        *,
        train: bool,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip_p: float = 0.5,
        color_jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.02),
        eval_resize: EvalResize = "resize",
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if eval_resize not in EVAL_RESIZE_MODES:
            raise ValueError(f"eval_resize must be one of {', '.join(EVAL_RESIZE_MODES)}; got {eval_resize!r}")
        self.image_size = int(image_size)
        self.train = bool(train)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.eval_resize = eval_resize
        size = self.image_size
        if eval_resize == "resize":
            eval_geometry: list[v2.Transform] = [v2.Resize((size, size), antialias=True)]
        elif eval_resize == "center_crop":
            eval_geometry = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        else:
            eval_geometry = [v2.Resize(size=None, max_size=size, antialias=True)]
        self._eval_geometry = v2.Compose(eval_geometry)
        if self.train:
            self._geometry = v2.Compose(
                [
                    v2.RandomResizedCrop(size, scale=crop_scale, ratio=crop_ratio, antialias=True),
                    v2.RandomHorizontalFlip(p=hflip_p),
                ]
            )
            photometric = [v2.ColorJitter(*color_jitter)] if color_jitter is not None else []
        else:
            self._geometry = self._eval_geometry
            photometric = []
        self._photometric = v2.Compose(
            photometric
            + [
                v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )
        # Letterbox padding for the image: the mean colour, so it normalises to 0.
        self._pad_fill = {
            tv_tensors.Image: [round(255 * m) for m in self.mean],
            tv_tensors.Mask: IGNORE_INDEX,
        }

    def _letterbox(self, sample: dict) -> dict:
        height, width = v2.query_size(list(sample.values()))
        extra_w, extra_h = self.image_size - width, self.image_size - height
        padding = [extra_w // 2, extra_h // 2, extra_w - extra_w // 2, extra_h - extra_h // 2]
        return v2.Pad(padding, fill=self._pad_fill)(sample)

    def __call__(
        self,
        image: tv_tensors.Image,
        segmentation: tv_tensors.Mask | None,
        boxes: tv_tensors.BoundingBoxes,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Transform one sample.

        Args:
            image: uint8 ``tv_tensors.Image`` (3, H, W).
            segmentation: ``tv_tensors.Mask`` (1, H, W) integer index map (255 = ignore) or
                None when unknown.
            boxes: ``tv_tensors.BoundingBoxes`` (N, 4) in XYXY pixels on an (H, W) canvas.

        Returns:
            image: float32 (3, S, S), normalised.
            segmentation: int64 (S, S); all 255 when the input was None.
            boxes: float32 (M, 4) XYXY pixels clamped to the output, M <= N.
            keep: bool (N,): which input boxes survive (the others were cropped away).
        """
        return self.with_paste_mask(image, segmentation, boxes, None)[:4]

    def with_paste_mask(
        self,
        image: tv_tensors.Image,
        segmentation: tv_tensors.Mask | None,
        boxes: tv_tensors.BoundingBoxes,
        paste_mask: tv_tensors.Mask | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """:meth:`__call__` that also moves ``paste_mask`` (a ``tv_tensors.Mask`` (1, H, W) in
        {0, 1}, e.g. GrabCut's object inside the boxes) with the same random draw; returns it
        fifth as float32 (S, S) in {0, 1} (letterbox padding is 0), or None."""
        sample: dict = {"image": image, "boxes": boxes}
        if segmentation is not None:
            sample["segmentation"] = segmentation
        if paste_mask is not None:
            sample["paste_mask"] = paste_mask
        sample = self._geometry(sample)
        if not self.train and self.eval_resize == "letterbox":
            sample = self._letterbox(sample)
        sample = self._photometric(sample)
        out_image = sample["image"].as_subclass(Tensor)
        size = tuple(out_image.shape[-2:])
        if segmentation is None:
            out_seg = torch.full(size, IGNORE_INDEX, dtype=torch.long)
        else:
            out_seg = sample["segmentation"].as_subclass(Tensor).reshape(size).long()
        out_paste = None
        if paste_mask is not None:  # padding (255) is no object
            out_paste = (sample["paste_mask"].as_subclass(Tensor).reshape(size) == 1).float()
        out_boxes, keep = _clamp_and_filter(sample["boxes"], size)
        return out_image, out_seg, out_boxes, keep, out_paste

    def eval_geometry(self, boxes: tv_tensors.BoundingBoxes) -> tuple[Tensor, Tensor]:
        """Boxes under the deterministic eval geometry: ``(boxes (M, 4), keep (N,))``.

        A random train transform cannot be replayed outside ``__call__``, so
        ``dataset.boxes(index)`` reports boxes in this (same-sized) eval geometry.
        """
        sample = {"boxes": boxes}
        sample = self._eval_geometry(sample)
        if self.eval_resize == "letterbox":
            sample = self._letterbox(sample)
        return _clamp_and_filter(sample["boxes"], (self.image_size, self.image_size))


def _clamp_and_filter(boxes: tv_tensors.BoundingBoxes, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Clamp XYXY boxes to an (H, W) canvas and drop those left with no area."""
    height, width = size
    plain = boxes.as_subclass(Tensor).float().reshape(-1, 4).clone()
    plain[:, 0::2] = plain[:, 0::2].clamp(0, width)
    plain[:, 1::2] = plain[:, 1::2].clamp(0, height)
    keep = (plain[:, 2] > plain[:, 0]) & (plain[:, 3] > plain[:, 1])
    return plain[keep], keep


def build_transform(image_size: int, *, train: bool, mean: Sequence[float], std: Sequence[float], **options) -> JointTransform:
    """Build a ``JointTransform``; ``options`` are its keyword arguments (crop_scale, ...)."""
    return JointTransform(image_size, train=train, mean=mean, std=std, **options)
