"""Why the built-in worlds are hard for a plain classifier's attention, measured.

Trains the plain classifier (`cam`) on each built-in world and prints its classification score and
what its Grad-CAM covers: the share of object pixels whose map exceeds 0.5 (coverage), the share
of the map above 0.5 that lies on the object (precision), the best-threshold attention mIoU, and
for the bias world the accuracy on the decorrelated split (where the context shortcut fails); beside
them the class-agnostic baseline (the mean of all class maps) and the wrong-class maps' coverage of
the objects, which a map of class evidence keeps low.

    python benchmarks/worlds.py                      # both worlds, seed 0, ~3 min on 2 CPU cores
    python benchmarks/worlds.py --worlds parts --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch

from gainet.data import build_dataset
from gainet.evaluation.evaluate import evaluate_gain
from gainet.training.config import TrainConfig
from gainet.training.data import eval_loader
from gainet.training.trainer import Trainer

BUDGET = dict(image_size=64, model="small-cnn", model_width=16, epochs=8, warmup_epochs=0, batch_size=32,
              optimizer="adamw", lr=2e-3, schedule="cosine", progress=False, tensorboard=False, method="cam")
WORLD_SETTINGS = {
    # parts: the ablation's budget (docs/ablation.md); bias: the bias study's (docs/bias_study.md)
    "parts": {"train_images": 1200, "eval_splits": ["val"]},
    "bias": {"train_images": None, "epochs": 12, "eval_splits": ["test_biased", "test_decorrelated"]},
}
COLUMNS = ("score", "coverage", "precision", "cam_miou", "cam_threshold", "agnostic_cam_miou", "agnostic_coverage",
           "wrong_class_coverage")


def measure(world: str, seed: int, threads: int) -> dict[str, dict[str, float]]:
    settings = dict(WORLD_SETTINGS[world])
    splits = settings.pop("eval_splits")
    with tempfile.TemporaryDirectory() as run_dir:
        config = TrainConfig(**{**BUDGET, **settings, "dataset": world, "seed": seed, "threads": threads,
                                "output_dir": run_dir, "eval_every": 1000, "eval_batches": 1})
        trainer = Trainer(config)
        trainer.fit()
        results = {}
        for split in splits:
            dataset = build_dataset(world, split, image_size=config.image_size, train_transforms=False)
            metrics = evaluate_gain(trainer.gain, eval_loader(dataset, 64))
            metrics["score"] = metrics.get("mAP", metrics.get("accuracy"))
            results[split] = {k: float(metrics[k]) for k in COLUMNS if k in metrics}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="+", default=["parts", "bias"], choices=sorted(WORLD_SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| world | split | score (mAP parts / accuracy bias) | CAM coverage@0.5 | CAM precision@0.5 "
          "| best-threshold CAM mIoU | best threshold | class-agnostic mIoU | class-agnostic coverage@0.5 "
          "| wrong-class coverage@0.5 | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for world in args.worlds:
        started = time.perf_counter()
        runs = [measure(world, seed, args.threads) for seed in args.seeds]
        seconds = (time.perf_counter() - started) / len(args.seeds)
        for split in runs[0]:
            cells = []
            for key in COLUMNS:
                values = [run[split][key] for run in runs if key in run[split]]
                spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
                cells.append(f"{statistics.mean(values):.3f}{spread}" if values else "")
            print(f"| {world} | {split} | " + " | ".join(cells) + f" | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
