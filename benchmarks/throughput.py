#!/usr/bin/env python
"""Training throughput (images/s) of cam, gain and gain-adv on the device present.

Each method is timed through the real training loop (``Trainer.train_epoch``: the epoch loader
with its sampler, pinned memory and workers, mixed precision, channels-last, forward, backward,
optimiser step, DDP when launched under torchrun) on a built-in world of exactly
``steps * batch`` training images: one untimed epoch first (allocator, cuDNN autotuning, the
images rendered into the dataset's cache), then one timed epoch of ``--steps`` steps. Mining is on from the first step (``warmup_epochs = 0``), so ``gain``
and ``gain-adv`` pay for their erased stream. Reported: training images per second (global batch
over wall time; under torchrun the global rate of all processes) and milliseconds per step.

    python benchmarks/throughput.py                                  # CPU or the visible GPU
    python benchmarks/throughput.py --image-size 224 --batch-size 64 --amp bf16 --channels-last \
        --num-workers 8 --model resnet50 --json docs/throughput-h100.json
    torchrun --nproc_per_node 2 benchmarks/throughput.py ...          # DDP, global images/s

Every training step calls ``.item()`` on its losses, which synchronises the GPU, so wall-clock
time per epoch is the true step time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from gainet.training.config import TrainConfig
from gainet.training.trainer import Trainer

METHODS = ("cam", "gain", "gain-adv")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="methods to time (default: %(default)s)")
    parser.add_argument("--model", default="small-cnn", help="classifier (as in gainet train; default: %(default)s)")
    parser.add_argument("--model-width", type=int, default=32, help="small-cnn first-stage width")
    parser.add_argument("--dataset", default="parts", choices=("parts", "bias"), help="built-in world")
    parser.add_argument("--image-size", type=int, default=64, help="input side in pixels (worlds: 16..128)")
    parser.add_argument("--batch-size", type=int, default=32, help="global images per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after as many untimed ones)")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                        help="mixed precision on GPU (ignored on CPU)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def time_method(args: argparse.Namespace, method: str, output_dir: Path) -> dict:
    """Build a Trainer for ``method``; run one untimed epoch of ``steps`` steps (warm-up: kernels,
    allocator, cuDNN autotuning, the images rendered into the dataset cache), then time one."""
    config = TrainConfig(
        method=method, dataset=args.dataset, image_size=args.image_size, model=args.model,
        model_width=args.model_width, train_images=args.steps * args.batch_size, val_images=args.batch_size,
        batch_size=args.batch_size, epochs=2, warmup_epochs=0, amp=args.amp, channels_last=args.channels_last,
        num_workers=args.num_workers, device=args.device, threads=args.threads, progress=False,
        tensorboard=False, output_dir=str(output_dir / method),
    )
    trainer = Trainer(config)
    trainer.train_epoch(0)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    started = time.perf_counter()
    trainer.train_epoch(1)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    seconds = time.perf_counter() - started
    return {
        "method": method, "device": str(trainer.device), "model": args.model, "image_size": args.image_size,
        "batch_size": args.batch_size,
        "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "off",
        "channels_last": args.channels_last, "num_workers": args.num_workers,
        "processes": trainer.context.world_size, "threads": torch.get_num_threads(),
        "images_per_s": args.steps * args.batch_size / seconds, "ms_per_step": 1000.0 * seconds / args.steps,
        "_context": trainer.context,
    }


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} torch threads)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    context = None
    with tempfile.TemporaryDirectory(prefix="gainet-throughput-") as scratch:
        for method in args.methods:
            row = time_method(args, method, Path(scratch))
            context = row.pop("_context")
            rows.append(row)
    if context is not None and not context.is_main:
        context.shutdown()
        return 0
    header = f"device: {device_name(rows[0]['device'])}; torch {torch.__version__}; processes: {rows[0]['processes']}"
    print(header)
    columns = ("method", "model", "image_size", "batch_size", "amp", "channels_last", "num_workers", "images_per_s",
               "ms_per_step")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---:" if c in ("images_per_s", "ms_per_step") else "---" for c in columns) + "|")
    for row in rows:
        cells = [f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": header, "rows": rows}, indent=2))
    if context is not None:
        context.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
