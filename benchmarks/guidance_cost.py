#!/usr/bin/env python
"""Cost of one training step with each guidance mode relative to the plain classifier (cam).

One full step (zero_grad -> GAIN forward -> guidance_losses -> backward -> optimizer step) on
the bias study's setting: small-cnn width 16, 64 px images, batch 32 of which ``--supervised``
carry a box (the study's 8 = share 0.25). Random images, one-hot labels, one box per supervised
image. Configurations are interleaved in a rotating order over ``--rounds`` rounds after
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
from gainet.models import build_classifier

MODES = ("cam", "upweight", "l_e", "context-only", "context-swap", "actdiff", "rrr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--supervised", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, c, s = args.batch_size, 4, args.image_size
    gain = GAIN(build_classifier("small-cnn", c, width=args.width), multi_label=False, probe_size=s).train()
    optimizer = torch.optim.AdamW(gain.parameters(), lr=1e-4)
    images = torch.randn(b, 3, s, s)
    labels = torch.nn.functional.one_hot(torch.arange(b) % c, c).float()
    supervised = torch.zeros(b, dtype=torch.bool)
    supervised[: args.supervised] = True
    masks = torch.zeros(b, c, s, s)
    for i in range(args.supervised):
        y, x = torch.randint(0, s - 24, (2,)).tolist()
        masks[i, i % c, y:y + 20, x:x + 20] = 1.0
    generator = torch.Generator().manual_seed(0)

    def step(mode: str) -> None:
        optimizer.zero_grad(set_to_none=True)
        use_masks = mode == "l_e"
        out = gain(images, labels, masks if use_masks else None, supervised if use_masks else None, mine=False)
        loss = out.loss
        if mode not in ("cam", "l_e"):
            loss = loss + guidance_losses(gain, images, labels, masks, supervised, [mode], scores=out.scores,
                                          generator=generator).loss
        loss.backward()
        optimizer.step()

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
