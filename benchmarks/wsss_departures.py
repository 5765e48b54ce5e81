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

Rows whose head settings equal another's reuse its ``affinity.pt`` (the walk alone differs).
Every stage resumes per file; a re-run prints the table from what is on disk.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/wsss_departures.py --seeds 0 --output runs/wsss-departures
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
from gainet.wsss.cams import EVAL_CAMS_JSON, eval_cams, make_cams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wsss import WORLD_DEFAULTS, classifier_config  # noqa: E402  (a sibling script, not a package)

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
}


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from gainet.wsss.refine import AFFINITY_FILE, RefineParams, refine_cams

    out = Path(args.output) / f"seed{seed}" / args.method.replace("/", "_")
    times_path = out / "timings.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}

    def clock(name: str, compute):
        started = time.perf_counter()
        result = compute()
        if name not in times:
            times[name] = time.perf_counter() - started
            out.mkdir(parents=True, exist_ok=True)
            times_path.write_text(json.dumps(times, indent=2))
        return result

    namespace = argparse.Namespace(**{**WORLD_DEFAULTS["garments"], "world": "garments", "seed": seed,
                                      "threads": 1, "progress": args.progress, "width": 16})
    config = classifier_config(args.method, namespace, out)
    if not (Path(config.output_dir) / "final.json").is_file():
        clock("classifier", lambda: train(config))
    checkpoint = str(Path(config.output_dir) / "last.pt")
    made = clock("make-cams", lambda: make_cams(checkpoint, out / "cams", flip=True, attention_layer="stride16",
                                                device="cpu", progress=args.progress))
    stored = out / "cams" / EVAL_CAMS_JSON
    seeds = (json.loads(stored.read_text()) if stored.is_file() and not made["written"]
             else eval_cams(out / "cams", progress=args.progress))
    row: dict[str, Any] = {"seed": seed, "seeds_miou": seeds["best_miou"]}
    for name in args.variants:
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
            times_path.write_text(json.dumps(times, indent=2))
        # a finished folder's score is read back (its settings are fixed by meta.json and every
        # stage is deterministic); a folder refined by this run is scored now
        stored = folder / EVAL_CAMS_JSON
        scores = (json.loads(stored.read_text()) if stored.is_file() and not result["written"]
                  else eval_cams(folder, progress=args.progress))
        row[name] = scores["best_miou"]
        row[f"{name} t"] = scores["best_threshold"]
        row[f"{name} @0.5"] = next(m for t, m in scores["curve"] if abs(t - 0.5) < 1e-6)
    row["minutes"] = {k: v / 60 for k, v in times.items()}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--output", default="runs/wsss-departures")
    parser.add_argument("--method", default="cam", help="classifier variant of benchmarks/ablation.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(seed, args))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    table = []
    for name in ["seeds", *args.variants]:
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
    print(text)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"results-{args.method.replace('/', '_')}.md").write_text(text + "\n")
    (output / f"results-{args.method.replace('/', '_')}.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
