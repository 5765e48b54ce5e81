#!/usr/bin/env python
"""Process CPU minutes (and wall minutes) of ``benchmarks/wsss.py``'s garments classifier for one
seed: the yardstick of issue 31's "the learned stage costs no more than training the classifier",
measured as ``benchmarks/wsss_departures.py`` now measures each stage (the process's own CPU time,
so that other jobs on a shared machine do not count).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/classifier_cpu.py --seed 0 --output runs/cls-timing
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from gainet.training.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wsss import WORLD_DEFAULTS, classifier_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="cam")
    parser.add_argument("--output", default="runs/cls-timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    namespace = argparse.Namespace(**{**WORLD_DEFAULTS["garments"], "world": "garments", "seed": args.seed,
                                      "threads": 1, "progress": False, "width": 16})
    config = classifier_config(args.method, namespace, Path(args.output) / f"seed{args.seed}" / args.method)
    if Path(config.output_dir, "final.json").is_file():
        raise SystemExit(f"{config.output_dir}: a finished run is there; time another --output")
    wall, cpu = time.perf_counter(), time.process_time()
    train(config)
    print(json.dumps({"images": config.train_images, "wall_min": (time.perf_counter() - wall) / 60,
                      "process_cpu_min": (time.process_time() - cpu) / 60}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
