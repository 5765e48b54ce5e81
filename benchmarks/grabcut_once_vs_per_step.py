"""Issue 34: GrabCut once per raw image (main) against GrabCut per step on the normalised batch
image (the engine before b23a388), both scored against the garments' true masks.

On the 10-class, 96 px ``garments-bias`` world of docs/bias_study.md ("Issue 34"), for the
supervised images the trainer picks (boxes on 5% of 1,200 images) at seeds 0, 1, 2, prints the
mean IoU with the true garment mask of: main's estimate (:func:`gainet.data.grabcut.grabcut_raw`
on the rendered uint8 image), the old per-step estimate (:func:`gainet.data.grabcut.grabcut_mask`
on the normalised tensor the loader yields: one min-max over its channels), and the box itself.
The world has no augmentation, so "before augmentation" and "per step" see the same pixels.

    .venv/bin/python benchmarks/grabcut_once_vs_per_step.py
"""

from __future__ import annotations

import numpy as np
import torch

from gainet.data import build_dataset
from gainet.data.grabcut import box_union, grabcut_mask, grabcut_raw
from gainet.training.data import choose_supervised


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def main() -> None:
    torch.set_num_threads(1)
    world = build_dataset("garments-bias", "train", image_size=96, train_transforms=False, num_images=1200,
                          garment_classes=list(range(10)))
    for seed in (0, 1, 2):
        chosen = choose_supervised(world, "boxes", 0.05, None, seed)
        scores: dict[str, list[float]] = {"once (main)": [], "per step (before)": [], "box": []}
        for index in chosen:
            item = world.rendered(index)
            true = np.asarray(item.segmentation) > 0
            boxes = np.asarray(item.boxes, dtype=np.float64).reshape(-1, 4)
            union = box_union(boxes, true.shape)
            once, _ = grabcut_raw(item.image, boxes)
            per_step, _ = grabcut_mask(world[index]["image"], torch.from_numpy(union).float())
            scores["once (main)"].append(iou(once > 0, true))
            scores["per step (before)"].append(iou(per_step.numpy() > 0.5, true))
            scores["box"].append(iou(union, true))
        print(f"seed {seed}: {len(chosen)} supervised images, mean IoU with the garment mask: "
              + ", ".join(f"{name} {np.mean(values):.3f}" for name, values in scores.items()))


if __name__ == "__main__":
    main()
