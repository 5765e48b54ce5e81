#!/usr/bin/env python
"""Cost of a guided training step relative to the plain classifier (cam), on the new engine.

Counterfactual rows are built by the batch transforms (:mod:`gainet.core.batch_transforms`) in
the DataLoader workers and appended to the batch; the training process runs the forward and
backward over originals + rows (the rows a BatchNorm batch of their own, a second backbone call,
GAIN's default since issue 34; the mode marked "shared BatchNorm" makes one call over B + S rows,
issue 18's engine). Reported per mode, for each ``--model`` and ``--image-size``:

- ``step ms``: the training process's step (zero_grad -> the forward over B + S rows -> the
  guides -> backward -> AdamW), median over ``--rounds`` interleaved rounds after ``--warmup``;
- ``x cam``: that median over cam's;
- ``rows``: the counterfactual rows S appended to the B images;
- ``build ms``: building those rows (what a worker spends per batch, off the training process;
  on a machine whose workers share the training cores it adds to the epoch);
- ``epoch x cam``: (step + build) / cam's step, the cost of an epoch if the workers had no core
  of their own (the pessimistic reading for a 2-core machine).

GrabCut (``context-swap/grabcut``) runs once per supervised image when the data is set up
(:func:`gainet.data.grabcut.estimate_paste_masks`); its one-time cost per image is printed apart.
The batch: the bias world's first ``--batch-size`` training images with their boxes (rendered at
the image size up to 128 px, above it at half the size and upsampled), ``--supervised`` of them
supervised (the issue's setting: 16 and 4).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/guidance_cost.py --model efficientnet-lite0 --image-size 224
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gainet.core import GAIN, CounterfactualRows, GuidanceBatch, batch_transforms, build_guides
from gainet.data import build_dataset
from gainet.models import build_classifier

# mode -> (guidance modes, paste masks from GrabCut)
MODES = {
    "cam": ("", False),
    "context-swap": ("context-swap", False),
    "context-swap/grabcut": ("context-swap", True),
    "context-swap/grabcut, shared BatchNorm": ("context-swap", True),
    "context-only": ("context-only", False),
    "context-swap/grabcut + context-only": ("context-swap,context-only", True),
    "actdiff": ("actdiff", False),
    "rrr": ("rrr", False),
}


def measure(model_name: str, size: int, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    b, c = args.batch_size, 4
    options = {"width": args.width} if model_name == "small-cnn" else {}
    gain = GAIN(build_classifier(model_name, c, **options), multi_label=False, probe_size=size).train()
    optimizer = torch.optim.AdamW(gain.parameters(), lr=1e-5)
    supervised_index = list(range(args.supervised))
    # The bias world renders up to 128 px: larger inputs are its renders at half the size,
    # upsampled (bilinear images, nearest box masks); the cost does not depend on the content.
    render = size if size <= 128 else size // 2
    world = build_dataset("bias", "train", image_size=render, train_transforms=False, num_images=b)
    samples = [world[i] for i in range(b)]
    images = torch.stack([x["image"] for x in samples])
    labels = torch.stack([x["labels"] for x in samples])
    boxes = torch.stack([x["box_masks"] for x in samples])
    if render != size:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        boxes = torch.nn.functional.interpolate(boxes, size=(size, size), mode="nearest")
    supervised = torch.zeros(b, dtype=torch.bool)
    supervised[supervised_index] = True
    # GrabCut once per supervised image (what estimate_paste_masks does at set-up), timed apart.
    from gainet.data.grabcut import grabcut_mask

    paste = torch.zeros(b, size, size)
    started = time.process_time()
    for i in supervised_index:
        paste[i], _ = grabcut_mask(images[i], boxes[i].amax(0))
    grabcut_seconds = (time.process_time() - started) / max(1, len(supervised_index))

    plans = {}
    for mode, (guidance, grabcut) in MODES.items():
        guides = build_guides(guidance)
        transforms = batch_transforms(guides, multi_label=False)
        plans[mode] = (guides, transforms, paste if grabcut else None)

    def build(mode: str) -> CounterfactualRows:
        guides, transforms, paste_masks = plans[mode]
        if not transforms:
            return CounterfactualRows.empty(images, c)
        return transforms(images, labels, boxes, supervised, paste_masks)

    def step(mode: str, rows: CounterfactualRows) -> None:
        guides = plans[mode][0]
        # Issue 34: the rows as a BatchNorm batch of their own (a second backbone call, the
        # default) or in one call with the originals (issue 18's engine).
        gain.counterfactual_batchnorm = "shared" if "shared BatchNorm" in mode else "own"
        optimizer.zero_grad(set_to_none=True)
        inputs = images.clone().requires_grad_(any(g.input_gradient for g in guides))
        out = gain(inputs, labels, mine=False, counterfactuals=rows.images if len(rows) else None)
        loss = out.loss
        batch = GuidanceBatch(inputs, out.all_scores, out.features, labels, boxes, supervised, rows, False)
        for guide in guides:
            loss = loss + guide(batch).mean()
        loss.backward()
        optimizer.step()

    steps: dict[str, list[float]] = {m: [] for m in MODES}
    builds: dict[str, list[float]] = {m: [] for m in MODES}
    sizes: dict[str, int] = {}
    names = list(MODES)
    for r in range(args.warmup + args.rounds):
        for mode in names[r % len(names):] + names[:r % len(names)]:
            started = time.perf_counter()
            rows = build(mode)
            built = time.perf_counter()
            step(mode, rows)
            done = time.perf_counter()
            sizes[mode] = len(rows)
            if r >= args.warmup:
                builds[mode].append(built - started)
                steps[mode].append(done - built)
    base = statistics.median(steps["cam"])
    print(f"\n{model_name}, {size} px, batch {b} with {args.supervised} supervised ({args.rounds} rounds, "
          f"{torch.get_num_threads()} thread(s))")
    print("| mode | rows | step ms | x cam | build ms | epoch x cam |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in MODES:
        step_ms, build_ms = 1000 * statistics.median(steps[mode]), 1000 * statistics.median(builds[mode])
        print(f"| {mode} | {sizes[mode]} | {step_ms:.0f} | {step_ms / (1000 * base):.2f} | {build_ms:.1f} | "
              f"{(step_ms + build_ms) / (1000 * base):.2f} |")
    print(f"GrabCut once per supervised image at set-up: {1000 * grabcut_seconds:.0f} CPU-ms per image (at {size} px)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["efficientnet-lite0"],
                        help="small-cnn, efficientnet-lite0, resnet50, ... (untrained: same cost as pretrained)")
    parser.add_argument("--image-size", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--supervised", type=int, default=4)
    parser.add_argument("--width", type=int, default=16, help="small-cnn width")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for model_name in args.model:
        for size in args.image_size:
            measure(model_name, size, args)


if __name__ == "__main__":
    main()
