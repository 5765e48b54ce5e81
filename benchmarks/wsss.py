#!/usr/bin/env python
"""Weakly-supervised semantic segmentation on the built-in part-dominance world: cam vs gain vs
gain-ext, side by side.

For each method: train the classifier (or take ``--checkpoint METHOD=PATH``) with the same budget,
then run the five WSSS stages of ``gainet.wsss`` on the classifier's own training images:

    make-cams -> eval-cams (CAM mIoU, best background threshold t*) -> pseudo-labels (fg = t*,
    bg = t* - band, 255 between) -> train-seg (lraspp_mobilenet_v3_large, 64 px) -> eval-seg on the
    ground-truth val split.

``--oracle`` adds a row whose segmentation network is trained on the ground-truth masks of the same
images (the fully supervised ceiling of this budget). ``--crf`` (needs pydensecrf2) adds the
pseudo-label mIoU after a dense CRF and the segmentation mIoU with CRF post-processing (same
networks). Every stage resumes: re-running with the same ``--output`` only redoes what is missing.

Columns: classifier mAP (val), CAM mIoU at t* (train images, 6 labels with background), pseudo-label
mIoU (unsure pixels counted as background), accuracy on the confidently labelled pixels, share of
unsure pixels, segmentation mIoU on val, minutes. The defaults take about 5-6 minutes on one
CPU thread.

    python benchmarks/wsss.py --output runs/bench-wsss [--crf] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gainet.evaluation.report import markdown_table
from gainet.training.checkpoint import load_checkpoint
from gainet.training.config import TrainConfig
from gainet.training.trainer import train
from gainet.wsss import data as io
from gainet.wsss.crf import crf_available
from gainet.wsss.pseudo_labels import LABELS_DIR, LABELS_STAGE, make_pseudo_labels
from gainet.wsss.seg_trainer import SegConfig, evaluate_segmentation, train_seg
from gainet.wsss.cams import eval_cams, make_cams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import BASE as ABLATION_BASE  # noqa: E402  (a sibling script, not a package)
from ablation import VARIANTS  # noqa: E402

METHODS = ("cam", "gain", "gain-ext")
# Per-world defaults of the options left unset on the command line.
WORLD_DEFAULTS = {
    "parts": {"train_images": 640, "cls_val_images": 100, "epochs": 8, "scales": [1.0, 1.5], "flip": False,
              "seg_epochs": 6, "seg_model": "lraspp_mobilenet_v3_large", "seg_crop": None},
    # Real photos: the segmentation network starts from ImageNet weights, as in every WSSS method
    # (from scratch it learned background only on 600 images: docs/wsss.md).
    "garments": {"train_images": 600, "cls_val_images": 300, "epochs": 4, "scales": [1.0, 1.5], "flip": True,
                 # the recipe chosen on the oracle row (benchmarks/seg_recipe.py, docs/wsss.md, issue 31)
                 "seg_epochs": 15, "seg_model": "lraspp_efficientnet_lite0", "seg_crop": 192},
}
# GAIN's hyperparameters pinned as in benchmarks/ablation.py, so that a variant name ("gain",
# "gain/alpha0.3", "gain-adv") means the same classifier in both benchmarks.
PINNED = ("sigma", "omega", "alpha", "omega_e", "am_gradient", "erased_batchnorm", "weights_grad", "area_weight")


def classifier_config(variant: str, args: argparse.Namespace, output: Path) -> TrainConfig:
    """The same budget for every variant (the demo's recipe, scaled down); ``variant`` is a name
    of ``benchmarks/ablation.py``'s VARIANTS (a method and its overrides)."""
    overrides = {**{k: ABLATION_BASE[k] for k in PINNED}, **VARIANTS[variant]}
    warmup = overrides.pop("warmup_epochs", min(3, args.epochs - 1))
    supervised_fraction = overrides.pop("supervised_fraction", 0.05)
    if args.world == "garments":  # the pretrained regime of docs/ablation.md (garments, issue 12)
        warmup = min(VARIANTS[variant].get("warmup_epochs", 2), args.epochs - 1)
        world = dict(dataset="garments", image_size=128, model="efficientnet-lite0", pretrained="imagenet", lr=1e-3)
    else:
        world = dict(dataset="parts", image_size=64, model="small-cnn", model_width=args.width, lr=2e-3)
    return TrainConfig(
        **overrides, **world, train_images=args.train_images, val_images=args.cls_val_images,
        epochs=args.epochs, warmup_epochs=warmup,
        batch_size=32, optimizer="adamw", schedule="cosine",
        supervised_fraction=supervised_fraction, seed=args.seed,
        threads=args.threads, progress=args.progress, tensorboard=False, eval_every=args.epochs,
        output_dir=str(output / "classifier"),
    )


def seg_config(args: argparse.Namespace, labels: Path, output: Path) -> SegConfig:
    backbone = "imagenet" if args.seg_model == "lraspp_efficientnet_lite0" else None
    return SegConfig(labels_dir=str(labels), output_dir=str(output), model=args.seg_model, epochs=args.seg_epochs,
                     weights_backbone=backbone, crop_size=args.seg_crop,
                     batch_size=16, lr=3e-3, seed=args.seed, threads=args.threads, device="cpu",
                     progress=args.progress, resume="auto")


def evaluate_seg(args: argparse.Namespace, checkpoint: Path, folder: Path, crf: bool = False) -> dict[str, Any]:
    """eval-seg on the first ``--val-images`` val images at :func:`seg_scales`."""
    return evaluate_segmentation(checkpoint, folder, limit=args.val_images, scales=seg_scales(args), crf=crf,
                                 device="cpu", progress=args.progress)


def seg_scales(args: argparse.Namespace) -> list[float]:
    """eval-seg's scale: a network trained on crops of ``seg_crop`` pixels sees the native image
    resized by ``seg_crop / native`` (objects at the size it was trained on)."""
    native = 128 if args.world == "garments" else 64
    return [args.seg_crop / native] if args.seg_crop else [1.0]


def ground_truth_labels(spec: dict[str, Any], folder: Path) -> Path:
    """A pseudo-labels folder holding the ground-truth masks (the oracle's training labels)."""
    dataset = io.open_dataset(spec)
    if not (folder / io.META_FILE).is_file():
        io.write_meta(folder, {"stage": LABELS_STAGE, "method": "oracle", "classes": list(dataset.classes),
                               "data": spec, "fg_threshold": None, "bg_threshold": None, "crf": None,
                               "mean": list(dataset.mean), "std": list(dataset.std)})
    for _, item in io.iterate(dataset):
        path = io.item_path(folder / LABELS_DIR, item.image_id, ".png")
        if not path.is_file():
            io.save_index_png(path, item.segmentation)
    return folder


def cached(out: Path, args: argparse.Namespace, compute) -> dict[str, Any]:
    """The row stored in ``out/row.json`` by an earlier run with the same settings (so re-runs
    report the minutes of the run that did the work), else ``compute()``'s row, stored."""
    key = {k: v for k, v in vars(args).items() if k not in ("output", "methods", "seeds", "progress", "checkpoint")}
    path = out / "row.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("settings") == json.loads(json.dumps(key)):
            return stored["row"]
    row = compute()
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": key, "row": row}, indent=2))
    return row


def run_method(method: str, args: argparse.Namespace, checkpoint: str | None) -> dict[str, Any]:
    out = Path(args.output) / f"seed{args.seed}" / method.replace("/", "_")
    if checkpoint is not None:
        return _run_method(method, args, checkpoint, out)
    return cached(out, args, lambda: _run_method(method, args, checkpoint, out))


def _run_method(method: str, args: argparse.Namespace, checkpoint: str | None, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    row: dict[str, Any] = {"method": method, "seed": args.seed}
    if checkpoint is None:
        config = classifier_config(method, args, out)
        if not (Path(config.output_dir) / "final.json").is_file():
            train(config)
        checkpoint = str(Path(config.output_dir) / "last.pt")
    state = load_checkpoint(checkpoint)
    row["mAP"] = _final_map(state)
    if args.world == "garments":
        return _run_refined(method, args, checkpoint, state, out, row, started)
    progress = args.progress
    make_cams(checkpoint, out / "cams", scales=args.scales, flip=args.flip, device="cpu", progress=progress)
    cams = eval_cams(out / "cams", progress=progress)
    row.update(cam_miou=cams["best_miou"], t=cams["best_threshold"])
    labels = make_pseudo_labels(out / "cams", out / "labels", band=args.band, progress=progress)["eval"]
    row.update(label_miou=labels["miou"], label_precision=labels["confident_precision"],
               unsure=labels["ignored_fraction"])
    if args.crf:
        crf_labels = make_pseudo_labels(out / "cams", out / "labels-crf", band=args.band, crf=True,
                                        progress=progress)["eval"]
        row["label_miou_crf"] = crf_labels["miou"]
    train_seg(seg_config(args, out / "labels", out / "seg"))
    seg = evaluate_seg(args, out / "seg" / "last.pt", out / "eval")
    row["seg_miou"] = seg["miou"]
    if args.crf:
        row["seg_miou_crf"] = evaluate_seg(args, out / "seg" / "last.pt", out / "eval-crf", crf=True)["miou"]
    row["minutes"] = (time.perf_counter() - started) / 60
    return row


class StageClock:
    """Seconds of each stage, kept in ``out/timings.json``: a stage's time is stored by the run
    that did its work, and a resumed run (whose stages skip finished files) keeps it."""

    def __init__(self, out: Path) -> None:
        self.path = out / "timings.json"
        self.values = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def run(self, name: str, images: int, compute):
        started = time.perf_counter()
        result = compute()
        if name not in self.values:
            self.values[name] = {"seconds": time.perf_counter() - started, "images": images}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.values, indent=2))
        return result

    def per_1000(self, name: str) -> float | None:
        """CPU minutes per 1,000 images of the stage (one torch thread)."""
        value = self.values.get(name)
        return None if not value else value["seconds"] / 60 / value["images"] * 1000


def _run_refined(method: str, args: argparse.Namespace, checkpoint: str, state: dict[str, Any], out: Path,
                 row: dict[str, Any], started: float) -> dict[str, Any]:
    """The real-object pipeline (``--world garments``): seeds from ``--cam-layer`` (and the head
    layer, and the class-agnostic baseline, for comparison), PAR- and affinity-refined seeds, pseudo
    labels from ``--seg-labels``, the segmentation network, eval on val."""
    from gainet.wsss.refine import RefineParams, refine_cams

    progress, images = args.progress, args.train_images
    clock = StageClock(out)
    history = state.get("history") or []
    clock.values.setdefault("classifier", {"seconds": sum(r.get("train/seconds", 0.0) for r in history),
                                           "images": images})

    def seeds(folder: str, **options) -> dict[str, Any]:
        clock.run(f"make-cams {folder}", images, lambda: make_cams(
            checkpoint, out / folder, scales=args.scales, flip=args.flip, device="cpu", progress=progress, **options))
        return eval_cams(out / folder, progress=progress)

    cams = seeds("cams", attention_layer=args.cam_layer)
    row.update(cam_miou=cams["best_miou"], t=cams["best_threshold"])
    if args.compare_head and method == args.methods[0]:
        row["cam_miou_head"] = seeds("cams-head")["best_miou"]
    if args.agnostic and method == args.methods[0]:
        row["cam_miou_agnostic"] = seeds("cams-agnostic", attention_layer=args.cam_layer,
                                         class_agnostic=True)["best_miou"]
    for name in ("par", "affinity"):
        params = RefineParams(method=name, seed=args.seed)
        clock.run(f"refine-cams {name}", images, lambda: refine_cams(out / "cams", out / f"cams-{name}", params,
                                                                      progress=progress))
        refined = eval_cams(out / f"cams-{name}", progress=progress)
        row.update({f"{name}_miou": refined["best_miou"], f"{name}_t": refined["best_threshold"]})
    main_labels, *other_labels = args.seg_labels
    source = out / ("cams" if main_labels == "seeds" else f"cams-{main_labels}")
    labels = clock.run("pseudo-labels", images, lambda: make_pseudo_labels(source, out / "labels", band=args.band,
                                                                           progress=progress))["eval"]
    row.update(label_miou=labels["miou"], label_precision=labels["confident_precision"],
               unsure=labels["ignored_fraction"])
    if args.crf:  # the same maps and thresholds, a dense CRF on each image's labels (scored, not trained on)
        row["label_miou_crf"] = clock.run("pseudo-labels crf", images, lambda: make_pseudo_labels(
            source, out / "labels-crf", band=args.band, crf=True, progress=progress))["eval"]["miou"]
    clock.run("train-seg", images, lambda: train_seg(seg_config(args, out / "labels", out / "seg")))
    seg = clock.run("eval-seg", args.val_images, lambda: evaluate_seg(args, out / "seg" / "last.pt", out / "eval"))
    row["seg_miou"] = seg["miou"]
    if args.crf:
        row["seg_miou_crf"] = clock.run("eval-seg crf", args.val_images, lambda: evaluate_seg(
            args, out / "seg" / "last.pt", out / "eval-crf", crf=True))["miou"]
    # The same segmentation recipe on labels from other maps (the rows "METHOD, seg on X labels")
    for name in other_labels:
        if name == "crf":  # the main labels after the dense CRF (labels-crf above), trained on as PSA does
            alt = {"label_miou": row["label_miou_crf"]}
        else:
            maps = out / ("cams" if name == "seeds" else f"cams-{name}")
            alt = {"label_miou": clock.run(f"pseudo-labels {name}", images, lambda: make_pseudo_labels(
                maps, out / f"labels-{name}", band=args.band, progress=progress))["eval"]["miou"]}
        # "eval-crf" is the main network's CRF inference: the crf labels' folders are named apart
        tag = "on-crf-labels" if name == "crf" else name
        clock.run(f"train-seg {name}", images, lambda: train_seg(seg_config(args, out / f"labels-{name}",
                                                                            out / f"seg-{tag}")))
        alt["seg_miou"] = evaluate_seg(args, out / f"seg-{tag}" / "last.pt", out / f"eval-{tag}")["miou"]
        if args.crf:
            alt["seg_miou_crf"] = evaluate_seg(args, out / f"seg-{tag}" / "last.pt", out / f"eval-crf-{tag}",
                                               crf=True)["miou"]
        row.setdefault("other_labels", {})[name] = alt
    row["minutes"] = (time.perf_counter() - started) / 60
    row["per_1000"] = {name: clock.per_1000(name) for name in clock.values}
    return row


def run_oracle(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.output) / f"seed{args.seed}" / "oracle"
    return cached(out, args, lambda: _run_oracle(args, out))


def _run_oracle(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    spec = (io.data_spec("garments", "train", image_size=128, num_images=args.train_images) if args.world == "garments"
            else io.data_spec("parts", "train", image_size=64, num_images=args.train_images))
    ground_truth_labels(spec, out / "labels")
    clock = StageClock(out)
    clock.run("train-seg", args.train_images, lambda: train_seg(seg_config(args, out / "labels", out / "seg")))
    row: dict[str, Any] = {"method": "oracle (GT masks)", "seed": args.seed, "label_miou": 1.0, "unsure": 0.0,
                           "label_precision": 1.0, "per_1000": {"train-seg": clock.per_1000("train-seg")}}
    row["seg_miou"] = evaluate_seg(args, out / "seg" / "last.pt", out / "eval")["miou"]
    if args.crf:
        row["seg_miou_crf"] = evaluate_seg(args, out / "seg" / "last.pt", out / "eval-crf", crf=True)["miou"]
    row["minutes"] = (time.perf_counter() - started) / 60
    return row


def mean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method with the mean of every numeric column over the seeds, and under ``"std"``
    their sample standard deviations (``statistics.stdev``, as the project's other tables; 0 for one seed)."""
    means = []
    for method in dict.fromkeys(row["method"] for row in rows):
        group = [row for row in rows if row["method"] == method]
        mean: dict[str, Any] = {"method": method, "seed": "mean", "std": {}}
        for key in group[0]:
            values = [row.get(key) for row in group]
            if key not in ("method", "seed") and all(isinstance(v, (int, float)) for v in values):
                mean[key] = float(np.mean(values))
                mean["std"][key] = statistics.stdev(values) if len(values) > 1 else 0.0
        means.append(mean)
    return means


def _cell(key: str, value: Any, std: float | None, percent: tuple[str, ...]) -> Any:
    """A table cell: percentages scaled, ``t`` with 2 decimals, a mean row's value as "mean ± std"."""
    if not isinstance(value, float):
        return value
    scale, digits = (100, 1) if key in percent else (1, 2)
    if std is not None and key != "minutes":
        return f"{scale * value:.{digits}f} ± {scale * std:.{digits}f}"
    return f"{value:.2f}" if key == "t" else scale * value


def _final_map(state: dict[str, Any]) -> float | None:
    for row in reversed(state.get("history") or []):
        if isinstance(row.get("val/mAP"), float):
            return row["val/mAP"]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--output", default="runs/bench-wsss", help="output folder (resumable)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(VARIANTS), metavar="VARIANT",
                        help="variants of benchmarks/ablation.py, e.g. cam gain/alpha0.3 gain-adv gain-ext "
                             "(default: %(default)s)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="METHOD=PATH",
                        help="use this classifier checkpoint instead of training one (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (classifier, seg network)")
    parser.add_argument("--world", default="parts", choices=tuple(WORLD_DEFAULTS),
                        help="parts: the drawn world, small-cnn from scratch at 64 px; garments: real Fashion-MNIST "
                             "photos, ImageNet-pretrained EfficientNet-Lite0 at 128 px (docs/wsss.md)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="classifier training images = WSSS images (parts 640, garments 600)")
    parser.add_argument("--cls-val-images", type=int, default=None, help="images for the classifier's val mAP "
                                                                         "(parts 100, garments 300)")
    parser.add_argument("--val-images", type=int, default=300, help="ground-truth val images for eval-seg")
    parser.add_argument("--epochs", type=int, default=None, help="classifier epochs (parts 8 with 3 warm-up, "
                                                                 "garments 4 with 2)")
    parser.add_argument("--width", type=int, default=16, help="small-cnn width")
    parser.add_argument("--seg-model", default=None, help="train-seg --model (parts: lraspp_mobilenet_v3_large from "
                                                         "scratch; garments: lraspp_efficientnet_lite0 from ImageNet)")
    parser.add_argument("--seg-epochs", type=int, default=None, help="segmentation-network epochs (parts 6, "
                                                                     "garments 15)")
    parser.add_argument("--seg-crop", type=int, default=None,
                        help="train-seg --crop-size (parts: the images' size; garments 192 on the 128-px images), "
                             "eval-seg at scale crop / size")
    parser.add_argument("--scales", type=float, nargs="+", default=None,
                        help="make-cams scales (default 1 1.5, make-cams' own; garments: with --flip)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="flip-averaged maps (parts: off; garments: on)")
    parser.add_argument("--band", type=float, default=0.1, help="unsure band below the fg threshold")
    parser.add_argument("--crf", action="store_true", help="also CRF-refined labels and CRF inference")
    parser.add_argument("--cam-layer", default="stride16",
                        help="garments: make-cams --attention-layer of the seeds (default: stride16)")
    parser.add_argument("--no-compare-head", dest="compare_head", action="store_false",
                        help="garments: skip the head-layer seeds of the first method")
    parser.add_argument("--no-agnostic", dest="agnostic", action="store_false",
                        help="garments: skip the class-agnostic seeds of the first method")
    parser.add_argument("--seg-labels", nargs="+", default=["affinity"], choices=("seeds", "par", "affinity", "crf"),
                        help="garments: the maps the pseudo labels come from (default: affinity); further values "
                             "add rows with the same segmentation recipe on labels from those maps (crf: the "
                             "first value's labels after the dense CRF; needs --crf)")
    parser.add_argument("--no-oracle", dest="oracle", action="store_false", help="skip the GT-trained row")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)
    for key, value in WORLD_DEFAULTS[args.world].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    if args.crf and not crf_available():
        parser.error("--crf needs pydensecrf2 (pip install 'pydensecrf2==1.1')")
    if "crf" in args.seg_labels and (not args.crf or args.seg_labels[0] == "crf"):
        parser.error("--seg-labels crf: the CRF-refined labels of the first value; give --crf and a first value "
                     "of seeds, par or affinity")
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    started = time.perf_counter()
    rows = []
    for seed in args.seeds:
        args.seed = seed
        if args.oracle:  # first: the ceiling of this network and budget, the reference of every row
            rows.append(run_oracle(args))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        for method in args.methods:
            rows.append(run_method(method, args, checkpoints.get(method)))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for row in list(rows):  # the rows of --seg-labels' further values, after their method's row
        for offset, (name, alt) in enumerate(row.pop("other_labels", {}).items()):
            label = f"{args.seg_labels[0]} + CRF" if name == "crf" else name
            rows.insert(rows.index(row) + 1 + offset, {"method": f"{row['method']}, seg on {label} labels",
                                                       "seed": row["seed"], **alt})
    if len(args.seeds) > 1:
        rows += mean_rows(rows)
    columns = ["method", "seed", "mAP", "cam_miou", "t", "label_miou", "label_precision", "unsure", "seg_miou"]
    if args.crf:
        columns[columns.index("seg_miou"):columns.index("seg_miou")] = ["label_miou_crf"]
        columns.append("seg_miou_crf")
    if args.world == "garments":
        columns = ["method", "seed", "mAP", "cam_miou_head", "cam_miou_agnostic", "cam_miou", "t", "par_miou",
                   "affinity_miou", "label_miou", "label_precision", "unsure", "seg_miou"]
        if args.crf:
            columns[columns.index("seg_miou"):columns.index("seg_miou")] = ["label_miou_crf"]
            columns.append("seg_miou_crf")
    columns.append("minutes")
    percent = ("mAP", "cam_miou", "label_miou", "label_precision", "unsure", "seg_miou", "label_miou_crf",
               "seg_miou_crf", "cam_miou_head", "cam_miou_agnostic", "par_miou", "affinity_miou")
    shown = [{k: _cell(k, v, (row.get("std") or {}).get(k), percent) for k, v in row.items() if k != "std"}
             for row in rows]
    table = markdown_table(shown, columns, ".1f")
    stages = list(dict.fromkeys(k for row in rows for k in (row.get("per_1000") or {})))
    if stages:
        costs = [{"method": row["method"], "seed": row["seed"], **row["per_1000"]} for row in rows if row.get("per_1000")]
        table += ("\n\nCPU minutes per 1,000 images (one torch thread, shared machine; classifier: the whole "
                  "schedule per 1,000 training images; eval-seg: per 1,000 val images):\n\n"
                  + markdown_table(costs, ["method", "seed", *stages], ".2f"))
    settings = {k: v for k, v in vars(args).items() if k not in ("checkpoint", "progress", "seed")}
    work = sum(row.get("minutes", 0.0) for row in rows if row["seed"] != "mean")
    text = (f"{table}\n\nPercentages except t (background threshold) and minutes. Settings: {json.dumps(settings)}. "
            f"Rows took {work:.1f} min in all (this run: {(time.perf_counter() - started) / 60:.1f} min; "
            "finished rows are read back from row.json).")
    print(text)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps({"rows": rows, "settings": settings}, indent=2,
                                                    default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)))
    (output / "results.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
