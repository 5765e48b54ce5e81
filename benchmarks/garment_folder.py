#!/usr/bin/env python
"""Write a small "own photos" folder dataset of real Fashion-MNIST garments (docs/own_photos.md).

Each scene is a ``--size`` x ``--size`` RGB image: a smooth random colour gradient with noise, and
1 or 2 garments (28 x 28 Fashion-MNIST crops scaled to 35-55% of the scene, tinted with a random
colour, composited by their intensity) at random places. Labels: the garments' classes (a scene
with two garments of the same class has one label). Written in the ``folder`` layout:

    OUTPUT/images/<split>_<n>.png   OUTPUT/labels.csv (image,labels,split)   OUTPUT/classes.txt
    OUTPUT/masks/<split>_<n>.png    (--masks: class-index masks, 0 background, k = the k-th class)

    python benchmarks/garment_folder.py /tmp/garments --train 480 --val 160

Needs the Fashion-MNIST idx files (``--source``, default /usr/share/datasets/fashion-mnist: the
``*-images-idx3-ubyte.gz`` / ``*-labels-idx1-ubyte.gz`` of the training set).
"""

from __future__ import annotations

import argparse
import csv
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip) as a numpy array: images (N, 28, 28) uint8 or labels (N,) uint8."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def scene(rng: np.random.Generator, garments: np.ndarray, labels: np.ndarray,
          size: int) -> tuple[np.ndarray, set[int], np.ndarray]:
    """One (size, size, 3) uint8 scene, its set of class ids and its (size, size) uint8 class-index
    mask (0 background, 1 + class id where the garment's alpha exceeds 0.5, later garments on top)."""
    corners = rng.uniform(0, 255, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    direction = rng.integers(2)
    ramp = ramp if direction == 0 else ramp.transpose(1, 0, 2)
    picture = (1 - ramp) * corners[0] + ramp * corners[1] + rng.normal(0, 12, size=(size, size, 3))
    present: set[int] = set()
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        index = int(rng.integers(len(garments)))
        side = int(rng.uniform(0.35, 0.55) * size)
        alpha = np.asarray(Image.fromarray(garments[index]).resize((side, side), Image.BILINEAR), np.float64) / 255.0
        colour = rng.uniform(0, 255, size=3)
        y, x = rng.integers(0, size - side + 1, size=2)
        region = picture[y:y + side, x:x + side]
        picture[y:y + side, x:x + side] = (1 - alpha[..., None]) * region + alpha[..., None] * colour
        present.add(int(labels[index]))
        mask[y:y + side, x:x + side][alpha > 0.5] = 1 + int(labels[index])
    return np.clip(np.rint(picture), 0, 255).astype(np.uint8), present, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="dataset folder to write")
    parser.add_argument("--train", type=int, default=480, help="training scenes")
    parser.add_argument("--val", type=int, default=160, help="validation scenes")
    parser.add_argument("--size", type=int, default=96, help="scene side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--masks", action="store_true",
                        help="also write masks/<stem>.png (class ids; the labels are then the classes the mask shows)")
    args = parser.parse_args()
    garments = read_idx(args.source / "train-images-idx3-ubyte.gz")
    labels = read_idx(args.source / "train-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(args.seed)
    (args.output / "images").mkdir(parents=True, exist_ok=True)
    if args.masks:
        (args.output / "masks").mkdir(exist_ok=True)
    (args.output / "classes.txt").write_text("".join(c + "\n" for c in CLASSES))
    with open(args.output / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "labels", "split"])
        for split, count in (("train", args.train), ("val", args.val)):
            for n in range(count):
                while True:
                    picture, present, mask = scene(rng, garments, labels, args.size)
                    if not args.masks:
                        break
                    # a garment hidden under another one is not in the mask, so not a label; a scene
                    # with nothing visible (rare) is drawn again rather than given an empty label set
                    present = {int(v) - 1 for v in np.unique(mask) if v}
                    if present:
                        break
                name = f"{split}_{n:04d}.png"
                Image.fromarray(picture).save(args.output / "images" / name)
                if args.masks:
                    Image.fromarray(mask).save(args.output / "masks" / name)
                writer.writerow([name, ";".join(CLASSES[c] for c in sorted(present)), split])
    print(f"wrote {args.train} + {args.val} scenes to {args.output}")


if __name__ == "__main__":
    main()
