"""Are GAIN's maps more faithful than cam's? Deletion / insertion AUC and ROAD, 3 seeds, beside the
class-agnostic map (issue 32).

Every (world, method, seed) is a real `gainet.training.train` run on the shared budget of
`benchmarks/ablation.py` (its ``BASE`` and ``VARIANTS``: small-cnn width 16, 64 px, 1200 training
images, 8 epochs with 2 of warm-up, AdamW 2e-3 cosine; METHOD.md's GAIN values pinned), validated on
the world's ``val`` split. Its last checkpoint is then scored on the first ``--images`` images of the
held-out ``test`` split with what ``gainet evaluate --faithfulness N`` computes
(:func:`gainet.evaluation.evaluate.evaluate_gain`): the map of each image's first label, and the
class-agnostic map (the mean of all class maps) on the same images.

Resumable: each run's numbers are cached in ``<output>/results/<world>_<method>_<seed>.json`` and a
finished run is not trained again (an interrupted one resumes from its ``last.pt``). Prints, per
world, mean ± std over seeds of each method's row and its class-agnostic row, and of the paired
per-seed differences (class map minus class-agnostic map; method minus cam). One process, one
thread: run it alone.

    OMP_NUM_THREADS=1 python benchmarks/faithfulness_methods.py --worlds parts --methods cam gain \\
        --seeds 0 1 2 --images 100 --output runs/faithfulness-methods
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import BASE, VARIANTS  # noqa: E402  (the shared budget, not a copy of it)

# Means over images that the table shows (docs/faithfulness.md): low deletion AUC, high insertion
# AUC, strongly negative road_morf, road_lerf near 0 and high road are faithful.
METRICS = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf", "road")
CONTEXT = ("mAP", "accuracy", "cam_miou", "agnostic_cam_miou")  # the training run's own validation numbers


def run_one(world: str, method: str, seed: int, images: int, output: Path) -> dict[str, Any]:
    """Train (or resume) one run and score its maps; cached as JSON."""
    cache = output / "results" / f"{world}_{method.replace('/', '_')}_{seed}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    import torch

    from gainet.data import build_dataset
    from gainet.evaluation.evaluate import evaluate_gain
    from gainet.evaluation.jobs import load_trained
    from gainet.training.config import TrainConfig
    from gainet.training.data import eval_loader
    from gainet.training.trainer import train

    torch.set_num_threads(1)
    run_dir = output / "runs" / world / method.replace("/", "_") / f"seed{seed}"
    config = TrainConfig(**{**BASE, "dataset": world, **VARIANTS[method], "seed": seed, "output_dir": str(run_dir),
                            "val_split": "val"})
    if (run_dir / "last.pt").is_file():
        config = config.replace(resume="auto")
    started = time.perf_counter()
    final = train(config)
    train_seconds = time.perf_counter() - started
    gain, config, _ = load_trained(run_dir / "last.pt")
    test = build_dataset(world, "test", image_size=config.image_size, train_transforms=False, num_images=images,
                         **config.dataset_options)
    started = time.perf_counter()
    scored = evaluate_gain(gain, eval_loader(test, images), faithfulness=images, max_batches=1)
    result = {"world": world, "method": method, "seed": seed, "images": scored["faithfulness_images"],
              "train_seconds": train_seconds, "faithfulness_seconds": time.perf_counter() - started,
              **{k: scored[k] for k in METRICS}, **{f"agnostic_{k}": scored[f"agnostic_{k}"] for k in METRICS},
              **{k: final["val"][k] for k in CONTEXT if k in final.get("val", {})}}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=2))
    return result


def spread(values: list[float]) -> str:
    if not values:
        return ""
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {deviation:.3f}"


def table(results: list[dict[str, Any]], methods: list[str]) -> str:
    """Rows per method: its class maps, its class-agnostic maps, their paired per-seed difference,
    and (for methods other than cam) the paired difference of its class maps from cam's."""
    columns = ("seeds",) + METRICS + ("mAP", "cam_miou")
    lines = ["| maps | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    cam = {r["seed"]: r for r in results if r["method"] == "cam"}
    for method in methods:
        runs = sorted((r for r in results if r["method"] == method), key=lambda r: r["seed"])
        if not runs:
            continue
        rows = {
            method: {k: [r[k] for r in runs if k in r] for k in METRICS + ("mAP", "cam_miou")},
            f"{method} (class-agnostic)": {k: [r[f"agnostic_{k}"] for r in runs] for k in METRICS}
            | {"cam_miou": [r["agnostic_cam_miou"] for r in runs if "agnostic_cam_miou" in r]},
            f"{method} minus its class-agnostic": {k: [r[k] - r[f"agnostic_{k}"] for r in runs] for k in METRICS},
        }
        paired = [r for r in runs if r["seed"] in cam]
        if method != "cam" and paired:
            rows[f"{method} minus cam"] = {k: [r[k] - cam[r["seed"]][k] for r in paired] for k in METRICS}
        for label, values in rows.items():
            seeds = len(paired) if label.endswith("minus cam") else len(runs)
            lines.append(f"| {label} | {seeds} | " + " | ".join(spread(values.get(k, [])) for k in columns[1:]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="+", default=["parts"], choices=("parts", "garments"))
    parser.add_argument("--methods", nargs="+", default=["cam", "gain"], help=f"from: {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=100, help="test images scored per run")
    parser.add_argument("--output", default="runs/faithfulness-methods")
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in VARIANTS]
    if unknown:
        parser.error(f"unknown methods: {', '.join(unknown)}")
    output = Path(args.output)
    for world in args.worlds:
        results = []
        for seed in args.seeds:  # seed-major: an interrupted run leaves whole seeds, paired across methods
            for method in args.methods:
                result = run_one(world, method, seed, args.images, output)
                print(f"[faithfulness] {world} {method} seed {seed}: train {result['train_seconds']:.0f} s, "
                      f"faithfulness {result['faithfulness_seconds']:.0f} s on {result['images']} images; "
                      + " ".join(f"{k}={result[k]:.3f}/{result['agnostic_' + k]:.3f}" for k in METRICS), flush=True)
                results.append(result)
        print(f"\n{world}: {args.images} test images per run; mean ± std over seeds (std of the paired "
              f"per-seed differences in the 'minus' rows)\n")
        text = table(results, args.methods)
        print(text)
        (output / f"table_{world}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
