#!/usr/bin/env python
"""The photo defaults' method (docs/own_photos.md, "Defaults from measurements"): ``gainet train
--dataset folder`` on real garment scenes with every option at its default but ``--method``, 3
seeds, and the validation mAP per epoch: where the warm-up leaves it, its lowest point after, and
the end.

    python benchmarks/garment_folder.py runs/garments-folder --train 480 --val 160
    python benchmarks/photo_defaults.py --data-root runs/garments-folder --out runs/defaults19 \\
        --methods cam gain --seeds 0 1 2

Resumable: a finished run (``final.json``) is read, an interrupted one continues (``--resume auto``).
Runs one thread per process; start several copies on disjoint ``--seeds`` to use more cores.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
from pathlib import Path


def run(data_root: Path, out: Path, method: str, seed: int) -> Path:
    run_dir = out / f"{method}-seed{seed}"
    if (run_dir / "final.json").is_file():
        return run_dir
    command = [sys.executable, "-m", "gainet.cli", "train", "--dataset", "folder", "--data-root", str(data_root),
               "--method", method, "--seed", str(seed), "--threads", "1", "--no-progress", "--no-tensorboard",
               "--output-dir", str(run_dir)]
    if run_dir.is_dir():
        command += ["--resume", "auto"]
    subprocess.run(command, check=True)
    return run_dir


def curve(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [float(row["val/mAP"]) for row in csv.DictReader(handle) if row.get("val/mAP")]


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["cam", "gain"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--warmup-epochs", type=int, default=2, help="the default warm-up (gain's mining starts after)")
    args = parser.parse_args()
    print("| method | seeds | val mAP after epoch 2 | lowest after epoch 2 | final (epoch 12) | final - epoch 2 |")
    print("|---|---:|---:|---:|---:|---:|")
    for method in args.methods:
        curves = [curve(run(args.data_root, args.out, method, seed)) for seed in args.seeds]
        warm = [c[args.warmup_epochs - 1] for c in curves]
        lowest = [min(c[args.warmup_epochs:]) for c in curves]
        final = [c[-1] for c in curves]
        print(f"| {method} | {len(curves)} | {mean_std(warm)} | {mean_std(lowest)} | {mean_std(final)} | "
              f"{mean_std([f - w for f, w in zip(final, warm)])} |")


if __name__ == "__main__":
    main()
