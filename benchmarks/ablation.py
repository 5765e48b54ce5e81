"""Ablation of attention mining on a built-in world: every variant x several seeds, mean and spread.

Each variant is a set of TrainConfig overrides on one shared base budget; every run is a real
`gainet.training.train` call, evaluated on the world's *validation* split (the test split is left
for the demo's report). Prints a markdown table and writes it, with all per-seed numbers, to
``--output`` (``results.json``, ``table.md``).

    python benchmarks/ablation.py --seeds 0 1 2 --workers 2
    python benchmarks/ablation.py --world bias --variants cam gain gain-adv --seeds 0 1 2
    python benchmarks/ablation.py --world garments --variants cam gain-ext --base model=efficientnet-lite0 \
        pretrained=imagenet image_size=128 lr=0.001 epochs=4      # another budget: BASE overridden
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

BASE = dict(
    image_size=64, train_images=1200, model="small-cnn", model_width=16, epochs=8, warmup_epochs=2,
    batch_size=32, optimizer="adamw", lr=2e-3, schedule="cosine", progress=False, tensorboard=False, threads=1,
    # METHOD.md's values, pinned: each variant changes one of them (TrainConfig's defaults were later
    # set from this ablation's results, and must not change what "gain" means here).
    sigma=0.5, omega=10.0, alpha=1.0, omega_e=10.0, am_gradient="all", erased_batchnorm="batch",
    weights_grad=False, area_weight=0.0,
)

# name -> overrides of BASE (method included)
VARIANTS: dict[str, dict[str, Any]] = {
    "cam": {"method": "cam"},
    "gain": {"method": "gain"},  # paper: L_am through all weights, erased BN with batch statistics
    "gain/am-attention": {"method": "gain", "am_gradient": "attention"},
    "gain/bn-running": {"method": "gain", "erased_batchnorm": "running"},
    "gain/am-attention+bn-running": {"method": "gain", "am_gradient": "attention", "erased_batchnorm": "running"},
    "gain/sigma0.3": {"method": "gain", "sigma": 0.3},
    "gain/omega5": {"method": "gain", "omega": 5.0},
    "gain/warmup0": {"method": "gain", "warmup_epochs": 0},
    "gain/warmup5": {"method": "gain", "warmup_epochs": 5},
    "gain/alpha0.3": {"method": "gain", "alpha": 0.3},
    "gain/alpha3": {"method": "gain", "alpha": 3.0},
    "gain/weights-grad": {"method": "gain", "weights_grad": True},
    "gain-adv": {"method": "gain-adv"},
    "gain-adv/area0.1": {"method": "gain-adv", "area_weight": 0.1},
    "gain-adv/area0.3": {"method": "gain-adv", "area_weight": 0.3},
    "gain-ext": {"method": "gain-ext", "supervised_fraction": 0.05},
    "gain-ext/omega_e1": {"method": "gain-ext", "supervised_fraction": 0.05, "omega_e": 1.0},
    "gain-ext/alpha0": {"method": "gain-ext", "supervised_fraction": 0.05, "alpha": 0.0},
    "gain-ext/warmup5": {"method": "gain-ext", "supervised_fraction": 0.05, "warmup_epochs": 5},
    "gain-adv-ext": {"method": "gain-adv-ext", "supervised_fraction": 0.05},
}
SCORES = ("mAP", "accuracy")
# Attention metrics of the model's class maps; each also exists as agnostic_<metric>, the class-agnostic
# baseline of the same model (the mean of all its class maps), shown as its own row under every variant.
ATTENTION = ("cam_miou", "cam_threshold", "coverage", "precision", "attention_iou", "pointing", "part_coverage",
             "body_coverage", "wrong_class_coverage")
METRICS = SCORES + ATTENTION + tuple(f"agnostic_{k}" for k in ATTENTION)


def run_one(job: tuple[str, int, str, dict[str, Any], str, str, dict[str, Any]]) -> dict[str, Any]:
    name, seed, world, overrides, output, val_split, base = job
    import torch

    torch.set_num_threads(1)
    from gainet.training.config import TrainConfig
    from gainet.training.trainer import train

    run_dir = Path(output) / "runs" / name.replace("/", "_") / f"seed{seed}"
    config = TrainConfig(**{**base, "dataset": world, **overrides, "seed": seed, "output_dir": str(run_dir),
                            "val_split": val_split})
    if world == "bias":
        config = config.replace(supervision="boxes")
    started = time.perf_counter()
    final = train(config)
    seconds = time.perf_counter() - started
    history = final.get("val", {})
    steps_seconds = sum(r.get("train/seconds", 0.0) for r in _history(run_dir))
    result = {"variant": name, "seed": seed, "seconds": seconds, "train_seconds": steps_seconds}
    result.update({k: history[k] for k in METRICS if k in history})
    for key in ("cam_curve", "coverage_curve", "agnostic_cam_curve", "agnostic_coverage_curve"):
        result[key] = history.get(key)
    print(f"[ablation] {name} seed {seed}: " + " ".join(
        f"{k}={result[k]:.3f}" for k in SCORES + ATTENTION if k in result), flush=True)
    return result


def _history(run_dir: Path) -> list[dict[str, Any]]:
    from gainet.training.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / "last.pt", map_location="cpu")["history"]


CURVE_THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7)


def curve_table(results: list[dict[str, Any]], variants: list[str]) -> str:
    """Coverage / precision / mIoU along the threshold sweep (mean over seeds), each variant's row
    followed by its class-agnostic baseline's, from the curves every run stores."""
    def at(curve: list[Any] | None, threshold: float) -> tuple[float, float] | None:  # (coverage, precision)
        return None if not curve else next(
            ((p["coverage"], p["precision"]) for p in curve if abs(p["threshold"] - threshold) < 1e-9), None)

    lines = ["| variant | " + " | ".join(f"t = {t:g}" for t in CURVE_THRESHOLDS) + " |",
             "|---|" + "---|" * len(CURVE_THRESHOLDS)]
    for name in sorted(variants, key=lambda v: v != "cam"):
        runs = [r for r in results if r["variant"] == name]
        for prefix, label in (("", name), ("agnostic_", f"{name} (class-agnostic)")):
            cells = []
            for threshold in CURVE_THRESHOLDS:
                points = [(at(r.get(prefix + "coverage_curve"), threshold),
                           dict(map(tuple, r.get(prefix + "cam_curve") or [])).get(threshold)) for r in runs]
                points = [(c, m) for c, m in points if c is not None and m is not None]
                if not points:
                    cells.append("")
                    continue
                cov, prec = (statistics.mean(c[i] for c, _ in points) for i in (0, 1))
                cells.append(f"{cov:.2f} / {prec:.2f} / {statistics.mean(m for _, m in points):.3f}")
            if any(cells):
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise(results: list[dict[str, Any]], variants: list[str]) -> tuple[list[dict[str, Any]], str]:
    cam_time = [r["train_seconds"] for r in results if r["variant"] == "cam"]
    reference = statistics.mean(cam_time) if cam_time else math.nan
    rows = []
    # cam first: the plain classifier's maps and their class-agnostic row head every table
    for name in sorted(variants, key=lambda v: v != "cam"):
        runs = [r for r in results if r["variant"] == name]
        if not runs:
            continue
        row: dict[str, Any] = {"variant": name, "seeds": len(runs)}
        for key in METRICS:
            values = [r[key] for r in runs if key in r and r[key] is not None and not math.isnan(r[key])]
            if values:
                row[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        row["cost_vs_cam"] = statistics.mean(r["train_seconds"] for r in runs) / reference
        rows.append(row)
        agnostic = {k: row[f"agnostic_{k}"] for k in ATTENTION if f"agnostic_{k}" in row}
        if agnostic:  # the same model's class-agnostic baseline, right under it
            rows.append({"variant": f"{name} (class-agnostic)", "seeds": len(runs), **agnostic})
    columns = ["variant", "seeds"] + [k for k in SCORES + ATTENTION if any(k in r for r in rows)] + ["cost_vs_cam"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            if isinstance(value, tuple):
                cells.append(f"{value[0]:.3f} ± {value[1]:.3f}")
            elif isinstance(value, float):
                cells.append(f"{value:.2f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return rows, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="parts", choices=("parts", "bias", "garments"),
                        help="built-in world (garments: Fashion-MNIST photos, docs/data.md)")
    parser.add_argument("--base", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override the shared budget (BASE) for every variant, e.g. model=efficientnet-lite0 "
                             "pretrained=imagenet image_size=128 lr=0.001 epochs=4 (values parsed as YAML)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one CPU thread each)")
    parser.add_argument("--output", default="runs/ablation", help="output directory")
    parser.add_argument("--val-split", default="val",
                        help="split the final metrics are measured on (bias world: test_decorrelated)")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}")
    base = dict(BASE)
    for item in args.base:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--base takes KEY=VALUE, got {item!r}")
        base[key] = yaml.safe_load(value)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results_path = output / "results.json"
    done: list[dict[str, Any]] = json.loads(results_path.read_text()) if results_path.is_file() else []
    finished = {(r["variant"], r["seed"]) for r in done}
    jobs = [(v, s, args.world, VARIANTS[v], str(output), args.val_split, base) for s in args.seeds for v in args.variants
            if (v, s) not in finished]
    print(f"[ablation] {len(jobs)} runs to do ({len(finished)} already in {results_path})", flush=True)
    results = list(done)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for result in pool.map(run_one, jobs):
            results.append(result)
            results_path.write_text(json.dumps(results, indent=1))  # resumable: finished runs are kept
    _, table = summarise(results, args.variants)
    header = (f"world={args.world}, seeds={args.seeds}, split={args.val_split}, base: "
              + ", ".join(f"{k}={v}" for k, v in base.items() if k not in ("progress", "tensorboard", "threads")))
    curves = ("Coverage / precision / mIoU along the threshold sweep (mean over seeds):\n\n"
              + curve_table(results, args.variants))
    (output / "table.md").write_text(header + "\n\n" + table + "\n\n" + curves + "\n")
    print(header)
    print(table)
    print(curves)
    return 0


if __name__ == "__main__":
    sys.exit(main())
