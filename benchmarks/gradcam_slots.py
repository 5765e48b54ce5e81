#!/usr/bin/env python
"""Cost of the two ways :func:`gainet.core.attention.gradcam_weights` runs the label slots.

``batched``: one vmapped ``torch.autograd.grad`` over all slots (``is_grads_batched``), used where
no module makes a collective. ``loop``: one ``torch.autograd.grad`` per slot, used under DDP with a
synchronised BatchNorm in training mode (vmap has no batching rule for ``c10d::allreduce_``;
issue 30). Both give the same weights; this prints the time of the weights alone (the forward
pass is outside the timed region, its graph retained), median of ``--repeats`` calls, per model,
number of slots and ``create_graph`` (``weights_grad``).

    python benchmarks/gradcam_slots.py --threads 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from gainet.core import GAIN, gradcam_weights, label_pairs
from gainet.models import build_classifier

CASES = (  # (name, model builder, attention layer, image side, batch)
    ("small-cnn w32 features.11", lambda c: build_classifier("small-cnn", c, width=32), "features.11", 64, 32),
    ("resnet18 layer3 (stride16)", lambda c: build_classifier("resnet18", c), "layer3", 128, 16),
)


def labels_with_slots(batch: int, classes: int, slots: int) -> torch.Tensor:
    """Multi-hot labels: image b carries ``1 + b % slots`` classes, so ``slots`` slots are needed."""
    labels = torch.zeros(batch, classes)
    for b in range(batch):
        labels[b, [(b + k) % classes for k in range(1 + b % slots)]] = 1.0
    return labels


def time_weights(gain: GAIN, images: torch.Tensor, labels: torch.Tensor, batched: bool, create_graph: bool,
                 repeats: int) -> float:
    scores, features = gain.backbone(images)
    pairs = label_pairs(labels)
    gradcam_weights(scores, features, pairs, batched=batched, create_graph=create_graph)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        gradcam_weights(scores, features, pairs, batched=batched, create_graph=create_graph)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 3, 6])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"train mode, median of {args.repeats}")
    print(f"{'model':<28} {'batch':>5} {'slots':>5} {'create_graph':>12} {'batched ms':>10} {'loop ms':>8} {'loop/batched':>12}")
    for name, build, layer, side, batch in CASES:
        classes = 20
        gain = GAIN(build(classes), layer, probe_size=side, fast_path=False).train()
        images = torch.randn(batch, 3, side, side)
        for slots in args.slots:
            labels = labels_with_slots(batch, classes, slots)
            for create_graph in (False, True):
                batched = time_weights(gain, images, labels, True, create_graph, args.repeats)
                loop = time_weights(gain, images, labels, False, create_graph, args.repeats)
                print(f"{name:<28} {batch:>5} {slots:>5} {str(create_graph):>12} {batched * 1e3:10.1f} "
                      f"{loop * 1e3:8.1f} {loop / batched:12.2f}")


if __name__ == "__main__":
    main()
