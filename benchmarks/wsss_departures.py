#!/usr/bin/env python
"""Issue 31: the learned refinement's departures from AffinityNet / IRN, each measured on its own.

On the garments world with the classifier, seeds and budget of ``benchmarks/wsss.py --world
garments`` (same ``classifier_config``, ``make-cams --attention-layer stride16 --flip`` on the 600
training images), one row per ``refine-cams --method affinity`` variant, each scored by
``eval-cams`` (mIoU at its best background threshold, chosen with the masks) and, for the variants
whose output is AffinityNet's argmax (``--walk-background``), also at threshold 0.5, the fixed
decision those papers use:

- ``affinity``: the default before issue 31 (raw seeds, class maps walked alone, min-max renormalised);
- ``affinity-unnormalised``: the same head and walk, maps written as walked (``--walk-normalise none``);
- ``affinity-max``: the same, divided by the image's largest walked value (IRN's, ``--walk-normalise max``);
- ``affinity-bgP``: the same head, AffinityNet's background ``(1 - max_k M_k)^P`` walked with the
  classes (``--background-power P``), written as ``walked M_k / (walked M_k + walked bg)``: the
  background comparison with the same (no) normalisation on both sides as ``affinity-unnormalised``
  (P = 16 is AffinityNet's ``infer_aff.py``, P = 1 the best of the earlier diagnostic);
- ``affinity-crfseeds``: the head trained on labels from CRF-refined seeds (``--label-crf``, IRN's
  ``cam_to_ir_label``), class maps walked alone as in the default;
- ``affinity-crfseeds-bg16``: both departures done the papers' way;
- ``par``: ``refine-cams --method par`` (training-free), the issue's other bar.
- ``affinity-crfseeds-16steps`` (``-unnormalised``, ``bg16-``): the CRF-label head walked 16 steps
  instead of 256 (min-max, as walked, with AffinityNet's background): a walk that spreads over the
  same share of the image as IRN's 256 steps on a VOC image's 4x finer grid.

Rows whose head settings equal another's reuse its ``affinity.pt`` (the walk alone differs).
Every stage resumes per file; a re-run prints the table from what is on disk.

``--seed-scales 1,1.5 0.5,1,1.5,2`` adds seed rows made at those ``make-cams --scales`` (stride 16 +
flip as the seeds), scored by ``eval-cams`` like every row (multi-scale against single-scale seeds);
``--refine-scaled affinity-crfseeds`` also refines each of them as that row refines the scale-1 seeds.

``--segment VARIANT ...`` adds ``benchmarks/wsss.py``'s segmentation stage on those rows' maps:
``pseudo-labels`` (fg = the folder's best ``t``, bg = t - 0.1), with and without ``--crf``; one
``train-seg`` per label set with the oracle row's recipe (``seg_config``: LR-ASPP EfficientNet-Lite0
from ImageNet, 128 px, 5 epochs, AdamW 3e-3, poly, batch 16, the seed's seed); ``eval-seg`` on the
first 300 val images, with and without CRF inference; and the oracle (the same network on the
ground-truth masks of the same 600 images, ``seed*/oracle/``), so each seed is compared with its
own oracle.

``--self-train ROW ...`` (rows of ``--segment``) adds one round of self-training on that row's plain
pseudo labels: the trained network predicts its 600 training images (scale 1, argmax over background
and the image's own classes, nothing unsure: ``gainet.wsss.self_training``), those predictions are the
labels (``labels-ROW-st1``) of the same recipe trained again from ImageNet weights (``seg-ROW-st1``),
scored by the same ``eval-seg``.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/wsss_departures.py --seeds 0 --output runs/wsss-departures
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/wsss_departures.py --seeds 0 1 2 \\
        --variants affinity-crfseeds --segment affinity-crfseeds
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gainet.evaluation.report import markdown_table
from gainet.training.trainer import train
from gainet.wsss import data as io
from gainet.wsss.cams import EVAL_CAMS_JSON, eval_cams, make_cams
from gainet.wsss.crf import crf_available
from gainet.wsss.pseudo_labels import make_pseudo_labels
from gainet.wsss.seg_trainer import evaluate_segmentation, train_seg
from gainet.wsss.self_training import self_training_labels

sys.path.insert(0, str(Path(__file__).resolve().parent))
# a sibling script, not a package: the classifier, the segmentation recipe and the oracle's labels
from wsss import WORLD_DEFAULTS, classifier_config, ground_truth_labels, seg_config  # noqa: E402

VAL_IMAGES = 300  # eval-seg's ground-truth val images (benchmarks/wsss.py's --val-images)
BAND = 0.1  # pseudo-labels: bg = fg - BAND (benchmarks/wsss.py's --band)

# name -> (refine-cams options, name of the row whose trained head it reuses, or None)
# (label_crf spelled out: the rows keep their meaning whatever refine-cams' default)
VARIANTS: dict[str, tuple[dict[str, Any], str | None]] = {
    "affinity": ({"label_crf": False}, None),
    "affinity-unnormalised": ({"label_crf": False, "walk_normalise": "none"}, "affinity"),
    "affinity-max": ({"label_crf": False, "walk_normalise": "max"}, "affinity"),
    "affinity-bg1": ({"label_crf": False, "background_power": 1.0}, "affinity"),
    "affinity-bg16": ({"label_crf": False, "background_power": 16.0}, "affinity"),
    "affinity-crfseeds": ({"label_crf": True}, None),
    "affinity-crfseeds-bg16": ({"label_crf": True, "background_power": 16.0}, "affinity-crfseeds"),
    "par": ({"method": "par"}, None),  # the training-free refinement, the other bar
    # A walk scaled to the grid: IRN walks 256 steps on the stride-4 grid of a VOC image (~125 x 94);
    # a walk spreads ~ sqrt(steps) grid cells, so on this 32 x 32 grid the same share of the image
    # is ~256 (32 / 110)^2 ~ 22 steps; 16, the nearest power of two (the papers square the matrix).
    "affinity-crfseeds-16steps": ({"label_crf": True, "iterations": 16}, "affinity-crfseeds"),
    "affinity-crfseeds-16steps-unnormalised": ({"label_crf": True, "iterations": 16, "walk_normalise": "none"},
                                               "affinity-crfseeds"),
    "affinity-crfseeds-bg16-16steps": ({"label_crf": True, "background_power": 16.0, "iterations": 16},
                                       "affinity-crfseeds"),
    # affinity-crfseeds again, its own head trained anew: its minutes on the one-offset-at-a-time
    # affinity and walk (same settings, so the same maps up to float summation order)
    "affinity-crfseeds-retimed": ({"label_crf": True}, None),
}


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from gainet.wsss.refine import AFFINITY_FILE, RefineParams, refine_cams

    out = Path(args.output) / f"seed{seed}" / args.method.replace("/", "_")
    clock, times = stage_clock(out)
    # the segmentation recipe these tables were made with (5 epochs, 128-px crops), whatever
    # benchmarks/wsss.py's garments defaults now say
    namespace = argparse.Namespace(**{**WORLD_DEFAULTS["garments"], "seg_epochs": 5, "seg_crop": None,
                                      "world": "garments", "seed": seed,
                                      "threads": 1, "progress": args.progress, "width": 16})
    config = classifier_config(args.method, namespace, out)
    if not (Path(config.output_dir) / "final.json").is_file():
        clock("classifier", lambda: train(config))
    checkpoint = str(Path(config.output_dir) / "last.pt")
    # the seeds of every row: scale 1 + flip, as when the tables were made (make-cams' default is now 1, 1.5)
    made = clock("make-cams", lambda: make_cams(checkpoint, out / "cams", scales=[1.0], flip=True,
                                                attention_layer="stride16",
                                                device="cpu", progress=args.progress))
    stored = out / "cams" / EVAL_CAMS_JSON
    seeds = (json.loads(stored.read_text()) if stored.is_file() and not made["written"]
             else eval_cams(out / "cams", progress=args.progress))
    row: dict[str, Any] = {"seed": seed, "seeds_miou": seeds["best_miou"]}
    for scales in args.seed_scales:  # multi-scale seeds: the same layer and flip, more scales
        name = scale_row(scales)
        folder = out / f"cams-{name}"
        made = clock(f"make-cams {name}", lambda: make_cams(checkpoint, folder, scales=scales, flip=True,
                                                             attention_layer="stride16", device="cpu",
                                                             progress=args.progress))
        stored = folder / EVAL_CAMS_JSON
        score(row, name, json.loads(stored.read_text()) if stored.is_file() and not made["written"]
              else eval_cams(folder, progress=args.progress))
        for variant in args.refine_scaled:  # the refinement on these seeds (its own head, trained on them)
            refined = out / f"cams-{name}-{variant}"
            params = RefineParams(**{"method": "affinity", "seed": seed, **VARIANTS[variant][0]})
            result = clock(f"refine-cams {name}-{variant}", lambda: refine_cams(folder, refined, params,
                                                                                progress=args.progress))
            stored = refined / EVAL_CAMS_JSON
            score(row, f"{name}-{variant}", json.loads(stored.read_text()) if stored.is_file() and not result["written"]
                  else eval_cams(refined, progress=args.progress))
    for name in dict.fromkeys(v for v in [*args.variants, *args.segment] if v in VARIANTS):
        options, parent = VARIANTS[name]
        folder = out / f"cams-{name}"
        if parent is not None and (out / f"cams-{parent}" / AFFINITY_FILE).is_file() \
                and not (folder / AFFINITY_FILE).is_file():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(out / f"cams-{parent}" / AFFINITY_FILE, folder / AFFINITY_FILE)
        params = RefineParams(**{"method": "affinity", "seed": seed, **options})
        result = clock(f"refine-cams {name}", lambda: refine_cams(out / "cams", folder, params,
                                                                   progress=args.progress))
        if result["written"]:  # the head's training and the walk apart (0 s of training: a reused head)
            for part in ("train", "refine"):
                times.setdefault(f"refine-cams {name} {part}", result["seconds"][part])
            (out / "timings.json").write_text(json.dumps(times, indent=2))
        # a finished folder's score is read back (its settings are fixed by meta.json and every
        # stage is deterministic); a folder refined by this run is scored now
        stored = folder / EVAL_CAMS_JSON
        scores = (json.loads(stored.read_text()) if stored.is_file() and not result["written"]
                  else eval_cams(folder, progress=args.progress))
        score(row, name, scores)
    if args.segment:
        row["segment"] = {"oracle": oracle(seed, namespace, args)}
        for name in args.segment:
            row["segment"][name] = segment(name, out, namespace, clock, args)
        for name in args.self_train:
            row["segment"][name]["self_train"] = self_train(name, out, namespace, clock, args)
    row["minutes"] = {k: v / 60 for k, v in times.items()}
    return row


def stage_clock(out: Path):
    """``clock(name, compute)``: runs ``compute()`` and keeps its seconds in ``out/timings.json``
    under ``name`` unless an earlier run stored them (the run that did the work keeps its time;
    a resumed run's stages skip finished files). Returns ``(clock, times)``."""
    times_path = out / "timings.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}

    def clock(name: str, compute):
        started, cpu = time.perf_counter(), time.process_time()
        result = compute()
        if name not in times:
            times[name] = time.perf_counter() - started
            # the process's own CPU seconds: on a shared machine wall time counts the others' work too
            times[f"{name} (process CPU)"] = time.process_time() - cpu
            out.mkdir(parents=True, exist_ok=True)
            times_path.write_text(json.dumps(times, indent=2))
        return result

    return clock, times


def scale_row(scales: list[float]) -> str:
    """The row (and folder) name of seeds made at ``scales``: ``seeds-scales1-1.5``."""
    return "seeds-scales" + "-".join(f"{s:g}" for s in scales)


def scaled_rows(args: argparse.Namespace) -> list[str]:
    """The rows of ``--seed-scales``, each followed by its ``--refine-scaled`` rows."""
    return [name for scales in args.seed_scales
            for name in [scale_row(scales), *(f"{scale_row(scales)}-{v}" for v in args.refine_scaled)]]


def score(row: dict[str, Any], name: str, scores: dict[str, Any]) -> None:
    """``eval-cams``' best mIoU, its threshold and the mIoU at t = 0.5, into ``row``."""
    row[name] = scores["best_miou"]
    row[f"{name} t"] = scores["best_threshold"]
    row[f"{name} @0.5"] = next(m for t, m in scores["curve"] if abs(t - 0.5) < 1e-6)


def evaluate(checkpoint: Path, folder: Path, args: argparse.Namespace, clock, name: str) -> dict[str, float]:
    """``eval-seg`` mIoU on the first VAL_IMAGES val images, plain and with CRF inference."""
    result = {"seg_miou": clock(f"eval-seg {name}", lambda: evaluate_segmentation(
        checkpoint, folder / "eval", limit=VAL_IMAGES, device="cpu", progress=args.progress))["miou"]}
    result["seg_miou_crf"] = clock(f"eval-seg crf {name}", lambda: evaluate_segmentation(
        checkpoint, folder / "eval-crf", limit=VAL_IMAGES, crf=True, device="cpu", progress=args.progress))["miou"]
    return result


def oracle(seed: int, namespace: argparse.Namespace, args: argparse.Namespace) -> dict[str, float]:
    """The segmentation network of ``benchmarks/wsss.py``'s oracle row (the same recipe on the
    ground-truth masks of the same training images), in ``seed*/oracle``."""
    out = Path(args.output) / f"seed{seed}" / "oracle"
    clock, times = stage_clock(out)
    spec = io.data_spec("garments", "train", image_size=128, num_images=namespace.train_images)
    ground_truth_labels(spec, out / "labels")
    clock("train-seg", lambda: train_seg(seg_config(namespace, out / "labels", out / "seg")))
    result = evaluate(out / "seg" / "last.pt", out, args, clock, "oracle")
    return {**result, "minutes": {k: v / 60 for k, v in times.items()}}


def segment(name: str, out: Path, namespace: argparse.Namespace, clock, args: argparse.Namespace) -> dict[str, Any]:
    """``benchmarks/wsss.py``'s segmentation stage on row ``name``'s maps, for the pseudo labels
    without (``plain``) and with (``crf``) the dense CRF: their scores, the network trained on
    each, its ``eval-seg`` mIoU plain and with CRF inference."""
    result: dict[str, Any] = {}
    for labels_name, crf in (("plain", False), ("crf", True)):
        tag = f"{name}{'-crf' if crf else ''}"
        labels = clock(f"pseudo-labels {tag}", lambda: make_pseudo_labels(
            out / f"cams-{name}", out / f"labels-{tag}", band=BAND, crf=crf, progress=args.progress))
        clock(f"train-seg {tag}", lambda: train_seg(seg_config(namespace, out / f"labels-{tag}", out / f"seg-{tag}")))
        result[labels_name] = {"fg_threshold": labels["fg_threshold"], "bg_threshold": labels["bg_threshold"],
                               "label_miou": labels["eval"]["miou"],
                               "label_precision": labels["eval"]["confident_precision"],
                               "unsure": labels["eval"]["ignored_fraction"],
                               **evaluate(out / f"seg-{tag}" / "last.pt", out / f"seg-{tag}", args, clock, tag)}
    return result


def self_train(name: str, out: Path, namespace: argparse.Namespace, clock, args: argparse.Namespace) -> dict[str, Any]:
    """One round of self-training on row ``name``'s plain labels: the network ``seg-NAME`` labels
    its training images (``labels-NAME-st1``), the same recipe is trained on them (``seg-NAME-st1``)
    and scored like the first round."""
    tag = f"{name}-st1"
    labels = clock(f"self-train labels {name}", lambda: self_training_labels(
        out / f"seg-{name}" / "last.pt", out / f"labels-{name}", out / f"labels-{tag}", progress=args.progress))
    clock(f"train-seg {tag}", lambda: train_seg(seg_config(namespace, out / f"labels-{tag}", out / f"seg-{tag}")))
    return {"label_miou": labels["eval"]["miou"], "label_precision": labels["eval"]["confident_precision"],
            "unsure": labels["eval"]["ignored_fraction"],
            **evaluate(out / f"seg-{tag}" / "last.pt", out / f"seg-{tag}", args, clock, tag)}


def self_train_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    """Per row: the first-round network and the self-trained one, eval-seg mIoU per seed, mean ±
    std, the paired gain, the ratio to each seed's oracle against 0.8 x, and with CRF inference."""
    seeds = [f"seed {row['seed']}" for row in rows]
    lines = []
    for name in names:
        for label, key in (("round 0 (pseudo labels)", None), ("round 1 (self-trained)", "self_train")):
            results = [row["segment"][name]["plain"] if key is None else row["segment"][name][key] for row in rows]
            oracles = [row["segment"]["oracle"] for row in rows]
            seg = [100 * r["seg_miou"] for r in results]
            ratio = [r["seg_miou"] / o["seg_miou"] for r, o in zip(results, oracles)]
            line = {"network": f"{name} {label}", **dict(zip(seeds, seg)), "mean ± std": mean_std(seg),
                    "label mIoU": mean_std([100 * r["label_miou"] for r in results]),
                    "x oracle": mean_std(ratio, 2),
                    ">= 0.8 x oracle": ("met" if statistics.mean(ratio) >= 0.8 else "missed")
                    + f" ({sum(v >= 0.8 for v in ratio)}/{len(ratio)} seeds)",
                    "with CRF inference": mean_std([100 * r["seg_miou_crf"] for r in results]),
                    "x oracle, CRF inference": mean_std([r["seg_miou_crf"] / o["seg_miou_crf"]
                                                         for r, o in zip(results, oracles)], 2)}
            if key is not None:
                first = [row["segment"][name]["plain"] for row in rows]
                gains = [100 * (r["seg_miou"] - f["seg_miou"]) for r, f in zip(results, first)]
                gains_crf = [100 * (r["seg_miou_crf"] - f["seg_miou_crf"]) for r, f in zip(results, first)]
                line["gain (paired)"] = " / ".join(f"{g:+.1f}" for g in gains) + (
                    f" = {statistics.mean(gains):+.1f} ± {statistics.stdev(gains):.1f}" if len(gains) > 1 else "")
                line["gain, CRF inference"] = " / ".join(f"{g:+.1f}" for g in gains_crf) + (
                    f" = {statistics.mean(gains_crf):+.1f} ± {statistics.stdev(gains_crf):.1f}"
                    if len(gains_crf) > 1 else "")
            lines.append(line)
    return markdown_table(lines, ["network", *seeds, "mean ± std", "gain (paired)", "label mIoU", "x oracle",
                                  ">= 0.8 x oracle", "with CRF inference", "gain, CRF inference",
                                  "x oracle, CRF inference"], ".1f")


def mean_std(values: list[float], digits: int = 1) -> str:
    return (f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}" if len(values) > 1
            else f"{values[0]:.{digits}f} (one seed)")


def segment_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    """One line per network: eval-seg mIoU per seed and mean ± std, the ratio to the same seed's
    oracle (paired, mean ± std) against the issue's 0.8 x target, and the same with CRF inference."""
    seeds = [f"seed {row['seed']}" for row in rows]
    lines = []
    for name in ["oracle", *names]:
        for labels_name in ([None] if name == "oracle" else ["plain", "crf"]):
            results = [row["segment"][name] if labels_name is None else row["segment"][name][labels_name]
                       for row in rows]
            oracles = [row["segment"]["oracle"] for row in rows]
            seg = [100 * r["seg_miou"] for r in results]
            ratio = [r["seg_miou"] / o["seg_miou"] for r, o in zip(results, oracles)]
            ratio_crf = [r["seg_miou_crf"] / o["seg_miou_crf"] for r, o in zip(results, oracles)]
            line = {"network trained on": "ground-truth masks (oracle)" if labels_name is None
                    else f"{name} labels{' + CRF' if labels_name == 'crf' else ''}",
                    **dict(zip(seeds, seg)), "mean ± std": mean_std(seg)}
            if labels_name is not None:
                line["label mIoU"] = mean_std([100 * r["label_miou"] for r in results])
                line["x oracle"] = mean_std(ratio, 2)
                line[">= 0.8 x oracle"] = ("met" if statistics.mean(ratio) >= 0.8 else "missed") + \
                    f" ({sum(v >= 0.8 for v in ratio)}/{len(ratio)} seeds)"
                line["x oracle, CRF inference"] = mean_std(ratio_crf, 2)
            line["with CRF inference"] = mean_std([100 * r["seg_miou_crf"] for r in results])
            lines.append(line)
    return markdown_table(lines, ["network trained on", *seeds, "mean ± std", "label mIoU", "x oracle",
                                  ">= 0.8 x oracle", "with CRF inference", "x oracle, CRF inference"], ".1f")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--output", default="runs/wsss-departures")
    parser.add_argument("--method", default="cam", help="classifier variant of benchmarks/ablation.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seed-scales", nargs="+", default=[], metavar="S1,S2,...",
                        type=lambda text: [float(v) for v in text.split(",")],
                        help="extra seed rows at these make-cams scales (comma-separated per row, e.g. 1,1.5)")
    parser.add_argument("--refine-scaled", nargs="+", default=[], choices=[v for v in VARIANTS if v != "par"],
                        metavar="VARIANT", help="also refine each --seed-scales row's seeds with these rows' "
                                                "settings (a head of its own)")
    parser.add_argument("--segment", nargs="+", default=[], metavar="ROW",
                        help="pseudo labels (with and without the dense CRF), train-seg and eval-seg on these "
                             "rows' maps (a --variants name, or a --seed-scales row of the same command such "
                             "as seeds-scales1-1.5-affinity-crfseeds), and the oracle (needs pydensecrf2)")
    parser.add_argument("--self-train", nargs="+", default=[], metavar="ROW",
                        help="one round of self-training on these --segment rows' plain pseudo labels (the "
                             "trained network's predictions on its training images, restricted to each "
                             "image's classes, train the same recipe again)")
    parser.add_argument("--tag", default="", help="results-METHOD-TAG.md/.json instead of results-METHOD.md "
                                                   "(keeps another run's table)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    unknown = [name for name in args.segment if name not in VARIANTS and name not in scaled_rows(args)]
    if unknown:
        parser.error(f"--segment {unknown[0]}: not a row of --variants ({', '.join(VARIANTS)}) nor a "
                     f"--seed-scales row of this command ({', '.join(scaled_rows(args)) or 'none'})")
    outside = [name for name in args.self_train if name not in args.segment]
    if outside:
        parser.error(f"--self-train {outside[0]}: not a row of --segment ({', '.join(args.segment) or 'none'})")
    if args.segment and not crf_available():
        parser.error("--segment needs pydensecrf2 (pip install 'pydensecrf2==1.1')")
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(seed, args))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    table = []
    for name in dict.fromkeys(["seeds", *scaled_rows(args), *args.variants, *args.segment]):
        key = "seeds_miou" if name == "seeds" else name
        values = [100 * row[key] for row in rows]
        line = {"row": name, **{f"seed {row['seed']}": v for row, v in zip(rows, values)}}
        line["mean ± std"] = (f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1
                              else f"{values[0]:.1f} (one seed)")
        if name != "seeds":
            gains = [100 * (row[key] - row["seeds_miou"]) for row in rows]
            line["gain over seeds"] = (f"{statistics.mean(gains):+.1f} ± {statistics.stdev(gains):.1f}"
                                       if len(gains) > 1 else f"{gains[0]:+.1f}")
            line["t"] = " / ".join(f"{row[f'{name} t']:.2f}" for row in rows)
            line["at t = 0.5"] = " / ".join(f"{100 * row[f'{name} @0.5']:.1f}" for row in rows)
        table.append(line)
    columns = ["row", *[f"seed {row['seed']}" for row in rows], "mean ± std", "gain over seeds", "t", "at t = 0.5"]
    text = markdown_table(table, columns, ".1f")
    stages = list(dict.fromkeys(k for row in rows for k in row["minutes"]))
    text += ("\n\nCPU minutes for the 600 images (one torch thread, shared machine; \"train\": the head's "
             "training, with the labels; \"refine\": the walk; a row reusing another's head trains nothing):\n\n"
             + markdown_table([{"stage": stage, **{f"seed {row['seed']}": row["minutes"].get(stage) for row in rows}}
                               for stage in stages], ["stage", *[f"seed {row['seed']}" for row in rows]], ".2f"))
    if args.segment:
        text += ("\n\nSegmentation (eval-seg mIoU on the first 300 val images; \"x oracle\": each seed over its own "
                 "oracle, then mean ± std; labels: fg = the maps' best t, bg = t - 0.1):\n\n"
                 + segment_table(rows, args.segment))
        if args.self_train:
            text += ("\n\nOne round of self-training (labels: the round-0 network's argmax over background + the "
                     "image's classes on its 600 training images, nothing unsure; the same recipe from ImageNet "
                     "weights; gain: round 1 - round 0 per seed, then mean ± std; label mIoU on the training "
                     "images):\n\n" + self_train_table(rows, args.self_train))
        minutes = [row["segment"]["oracle"]["minutes"] for row in rows]
        text += ("\n\nOracle CPU minutes (600 training images, 300 val images):\n\n"
                 + markdown_table([{"stage": stage, **{f"seed {row['seed']}": m.get(stage)
                                                       for row, m in zip(rows, minutes)}}
                                   for stage in dict.fromkeys(k for m in minutes for k in m)],
                                  ["stage", *[f"seed {row['seed']}" for row in rows]], ".2f"))
    print(text)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    stem = f"results-{args.method.replace('/', '_')}" + (f"-{args.tag}" if args.tag else "")
    (output / f"{stem}.md").write_text(text + "\n")
    (output / f"{stem}.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
