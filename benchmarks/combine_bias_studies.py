#!/usr/bin/env python
"""One table from several ``gainet bias-study`` output directories that share their reference and
cam runs (e.g. the same study with ``--supervision masks``, with boxes, and with
``--swap-mask grabcut``): the paper's layout, one column per run, mean ± std over seeds.

Each directory's guided and GAIN_ext runs are labelled with the directory's name
(``--label DIR=NAME`` to choose it); the reference and cam columns come from the first directory,
and the other directories' reference and cam rows must match them (the same cached runs),
otherwise the script stops: a table must not mix two different baselines.

    python benchmarks/combine_bias_studies.py runs/bias-pre-masks runs/bias-pre-boxes \\
        runs/bias-pre-grabcut --label runs/bias-pre-masks=masks --label runs/bias-pre-boxes=boxes \\
        --label runs/bias-pre-grabcut="boxes, GrabCut"
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from gainet.bias_study import METRIC_LABELS, METRICS, recommend, target_check

BASELINES = ("reference", "cam")


def load(folder: Path) -> dict:
    path = folder / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (run gainet bias-study with --output-dir {folder} first)")
    return json.loads(path.read_text())


def cell(entry: dict, metric: str) -> str:
    value = entry.get(metric, math.nan)
    if value is None or not math.isfinite(value):
        return ""
    std = entry.get(f"{metric}_std", math.nan)
    return f"{value:.3f}" if entry.get("seeds", 1) < 2 or std is None else f"{value:.3f} ± {std:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--label", action="append", default=[], metavar="DIR=NAME")
    args = parser.parse_args(argv)
    labels = {Path(k): v for k, v in (item.split("=", 1) for item in args.label)}
    columns: list[tuple[str, dict]] = []
    baselines: dict[str, dict] = {}
    seeds = None
    for folder in args.folders:
        results = load(folder)
        if seeds is None:
            seeds = results["seeds"]
        elif results["seeds"] != seeds:
            raise SystemExit(f"{folder}: seeds {results['seeds']} differ from {seeds}")
        name = labels.get(folder, folder.name)
        for entry in results["summary"]:
            if entry["run"] in BASELINES:
                known = baselines.setdefault(entry["run"], entry)
                if any(abs(known[m] - entry[m]) > 1e-9 for m in METRICS if isinstance(known.get(m), float)
                       and math.isfinite(known[m])):
                    raise SystemExit(f"{folder}: its {entry['run']} run differs from the first folder's")
                continue
            columns.append((f"{entry['run']} ({name})", entry))
    head = [("reference (unbiased data)", baselines["reference"])] if "reference" in baselines else []
    head += [("CAM", baselines["cam"])] if "cam" in baselines else []
    columns = head + columns
    lines = ["| measure | " + " | ".join(n for n, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    for metric in METRICS:
        if any(cell(e, metric) for _, e in columns):
            lines.append(f"| {METRIC_LABELS[metric]} | " + " | ".join(cell(e, metric) for _, e in columns) + " |")
    print("\n".join(lines))
    print(f"\nMean ± std over seeds {seeds}.")
    summary = list(baselines.values()) + [dict(e, run=n) for n, e in columns[len(head):]]
    train_size = load(args.folders[0])["train_size"]
    target = target_check(summary, train_size)
    for check in (target or {}).get("guided", []):
        print(f"- {check['run']}: decorrelated {check['decorrelated']:.3f} = {check['ratio']:.2f} x reference, "
              f"biased drop {100 * check['biased_drop']:.1f} points: {'met' if check['met'] else 'missed'}")
    if target and target.get("cam_meets"):
        print("- cam alone meets the target: no shortcut to fix in this world.")
    best = recommend(target)
    reason = "cam alone meets it" if target and target.get("cam_meets") else "no guided run met the target"
    print(f"- recommended: {best['run'] if best else f'none ({reason})'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
