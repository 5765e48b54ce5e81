#!/usr/bin/env python
"""Cost of one training step with each guidance mode relative to the plain classifier (cam).

One full step (zero_grad -> GAIN forward -> guidance_losses -> backward -> optimizer step) on
the bias study's setting: small-cnn width 16 (``--model efficientnet-lite0`` for the pretrained
study), 64 px images, batch 32 of which ``--supervised`` carry a box (the study's 8 = share 0.25).
The bias world's first training images with their labels and boxes. ``context-swap/grabcut``
includes GrabCut inside the boxes (``--swap-mask grabcut``; needs OpenCV). Configurations are interleaved in a rotating order over ``--rounds`` rounds after
warm-up; the median per configuration is reported, divided by cam's median (robust to the load
of a shared machine, as long as it does not change faster than a round).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/guidance_cost.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gainet.core import GAIN, guidance_losses
from gainet.data import build_dataset
from gainet.models import build_classifier

MODES = ("cam", "upweight", "l_e", "context-only", "context-swap", "context-swap/grabcut", "actdiff", "rrr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--supervised", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--model", default="small-cnn", help="small-cnn or efficientnet-lite0 (same cost untrained)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, c, s = args.batch_size, 4, args.image_size
    model = build_classifier(args.model, c, **({"width": args.width} if args.model == "small-cnn" else {}))
    gain = GAIN(model, multi_label=False, probe_size=s).train()
    optimizer = torch.optim.AdamW(gain.parameters(), lr=1e-4)
    world = build_dataset("bias", "train", image_size=s, train_transforms=False)
    samples = [world[i] for i in range(b)]
    images = torch.stack([x["image"] for x in samples])
    labels = torch.stack([x["labels"] for x in samples])
    supervised = torch.zeros(b, dtype=torch.bool)
    supervised[: args.supervised] = True
    masks = torch.stack([x["box_masks"] for x in samples]) * supervised[:, None, None, None]
    generator = torch.Generator().manual_seed(0)

    def step(mode: str) -> None:
        optimizer.zero_grad(set_to_none=True)
        use_masks = mode == "l_e"
        out = gain(images, labels, masks if use_masks else None, supervised if use_masks else None, mine=False)
        loss = out.loss
        if mode not in ("cam", "l_e"):
            name, _, variant = mode.partition("/")
            paste = grabcut_masks(images, masks, supervised)[0] if variant == "grabcut" else None
            loss = loss + guidance_losses(gain, images, labels, masks, supervised, [name], scores=out.scores,
                                          paste_masks=paste, generator=generator).loss
        loss.backward()
        optimizer.step()

    from gainet.data.grabcut import grabcut_masks

    times: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.warmup + args.rounds):
        order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
        for mode in order:
            started = time.perf_counter()
            step(mode)
            if r >= args.warmup:
                times[mode].append(time.perf_counter() - started)
    base = statistics.median(times["cam"])
    print(f"| mode | ms per step (median of {args.rounds}) | x cam |")
    print("|---|---:|---:|")
    for mode in MODES:
        median = statistics.median(times[mode])
        print(f"| {mode} | {1000 * median:.1f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
