#!/usr/bin/env python
"""Issue 31: multi-scale seeds against single scale on the built-in (parts) world, for the default
of ``make-cams --scales`` (the garments world's rows are ``benchmarks/wsss_departures.py
--seed-scales``).

Per seed: ``benchmarks/wsss.py``'s cam classifier of the world (the same ``classifier_config`` and
budget: small-cnn width 16, 640 images of 64 px, 8 epochs; reused when its ``final.json`` is there),
``make-cams`` on its 640 training images at each ``--seed-scales`` set (the world's flip setting:
none for parts; the default head layer), scored by ``eval-cams`` (mIoU at the best threshold, and
at t = 0.5); gains paired per seed over the first set.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/seed_scales.py --seeds 0 1 2 --output runs/seed-scales-parts
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from gainet.evaluation.report import markdown_table
from gainet.training.trainer import train
from gainet.wsss.cams import eval_cams, make_cams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wsss import WORLD_DEFAULTS, classifier_config  # noqa: E402
from wsss_departures import mean_std  # noqa: E402


def parse_scales(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="parts", choices=("parts",))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed-scales", type=parse_scales, nargs="+", default=[[1.0], [1.0, 1.5]],
                        metavar="S1,S2", help="comma-separated scale sets; the first is the baseline")
    parser.add_argument("--output", default="runs/seed-scales-parts")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    defaults = WORLD_DEFAULTS[args.world]
    names = ["scales " + ", ".join(f"{s:g}" for s in scales) for scales in args.seed_scales]
    rows = []
    for seed in args.seeds:
        out = Path(args.output) / f"seed{seed}" / "cam"
        namespace = argparse.Namespace(**{**defaults, "world": args.world, "seed": seed, "threads": 1,
                                          "progress": args.progress, "width": 16})
        config = classifier_config("cam", namespace, out)
        if not (Path(config.output_dir) / "final.json").is_file():
            train(config)
        checkpoint = str(Path(config.output_dir) / "last.pt")
        row = {"seed": seed}
        for name, scales in zip(names, args.seed_scales):
            folder = out / ("cams-" + "-".join(f"{s:g}" for s in scales))
            started = time.perf_counter()
            made = make_cams(checkpoint, folder, scales=scales, flip=defaults["flip"], device="cpu",
                             progress=args.progress)
            minutes = (time.perf_counter() - started) / 60 if made["written"] else None
            scores = eval_cams(folder, progress=args.progress)
            row[name] = {"miou": scores["best_miou"], "t": scores["best_threshold"],
                         "at 0.5": next(m for t, m in scores["curve"] if abs(t - 0.5) < 1e-6), "minutes": minutes}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    seeds = [f"seed {row['seed']}" for row in rows]
    lines = []
    for name in names:
        values = [100 * row[name]["miou"] for row in rows]
        gains = [100 * (row[name]["miou"] - row[names[0]]["miou"]) for row in rows]
        lines.append({"seeds": name, **dict(zip(seeds, values)), "mean ± std": mean_std(values),
                      "gain over the first (paired)": "" if name == names[0] else
                      (f"{statistics.mean(gains):+.1f} ± {statistics.stdev(gains):.1f}" if len(gains) > 1
                       else f"{gains[0]:+.1f}"),
                      "t": " / ".join(f"{row[name]['t']:.2f}" for row in rows),
                      "at t = 0.5": " / ".join(f"{100 * row[name]['at 0.5']:.1f}" for row in rows)})
    text = markdown_table(lines, ["seeds", *seeds, "mean ± std", "gain over the first (paired)", "t", "at t = 0.5"],
                          ".1f")
    print(text)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "results.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
