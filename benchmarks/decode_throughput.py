#!/usr/bin/env python
"""Photo decoding throughput (images/s): gainet's folder dataset through a DataLoader with
``--num-workers`` worker processes (decoding and resizing happen in ``__getitem__``, i.e. in the
workers), with its reduced JPEG decode (the default) and without it, against torchvision's
``decode_jpeg`` + ``v2.Resize`` alone in the main process.

The JPEGs are written by the script itself with PIL (a smooth gradient plus noise, quality 90),
so nothing is downloaded:

    python benchmarks/decode_throughput.py --images 40 --width 4000 --height 3000 --num-workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_jpegs(root: Path, count: int, width: int, height: int) -> list[Path]:
    """``count`` JPEGs of ``width`` x ``height`` in ``root/images`` and a labels.csv for them."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    files = []
    for index in range(count):
        noise = rng.integers(0, 40, size=(height, width, 3), dtype=np.uint8)
        array = (ramp * (0.5 + 0.5 * index / max(1, count)) + noise).clip(0, 255).astype(np.uint8)
        path = root / "images" / f"photo{index:03d}.jpg"
        Image.fromarray(array).save(path, quality=90)
        files.append(path)
    (root / "classes.txt").write_text("a\nb\n")
    (root / "labels.csv").write_text("image,labels\n" + "".join(f"{p.name},{'ab'[i % 2]}\n" for i, p in enumerate(files)))
    return files


def gainet_loader_rate(root: Path, size: int, workers: int, batch: int, reduce_decode: bool = True) -> float:
    from torch.utils.data import DataLoader

    from gainet.data.folder import FolderDataset

    dataset = FolderDataset(root, image_size=size, reduce_decode=reduce_decode)
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers)
    started = time.perf_counter()
    seen = sum(len(b["image"]) for b in loader)
    return seen / (time.perf_counter() - started)


def torchvision_rate(files: list[Path], size: int) -> float:
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms import v2

    resize = v2.Resize((size, size), antialias=True)
    started = time.perf_counter()
    for path in files:
        resize(decode_jpeg(read_file(str(path))))
    return len(files) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--size", type=int, default=224, help="network input side")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_jpegs(Path(tmp), args.images, args.width, args.height)
        ours = gainet_loader_rate(Path(tmp), args.size, args.num_workers, args.batch_size)
        full = gainet_loader_rate(Path(tmp), args.size, args.num_workers, args.batch_size, reduce_decode=False)
        theirs = torchvision_rate(files, args.size)
    print(f"{args.images} JPEGs {args.width}x{args.height} -> {args.size} px, images/s:")
    print(f"  gainet folder dataset, {args.num_workers} workers, reduced JPEG decode (default): {ours:.2f}")
    print(f"  gainet folder dataset, {args.num_workers} workers, reduce_decode false (full decode): {full:.2f}")
    print(f"  torchvision decode_jpeg + v2.Resize, main process, 1 thread: {theirs:.2f}")


if __name__ == "__main__":
    main()
