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

from gainet.studies.bias_study import METRICS, markdown_report, target_check

BASELINES = ("reference", "cam")


def load(folder: Path) -> dict:
    path = folder / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (run gainet bias-study with --output-dir {folder} first)")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--label", action="append", default=[], metavar="DIR=NAME")
    args = parser.parse_args(argv)
    labels = {Path(k): v for k, v in (item.split("=", 1) for item in args.label)}
    columns: list[dict] = []
    baselines: dict[str, dict] = {}
    seeds = train_size = None
    for folder in args.folders:
        results = load(folder)
        if seeds is None:
            seeds, train_size = results["seeds"], results["train_size"]
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
            labelled = f"{entry['run']} ({name})"
            # Studies written before runs recorded these: the study's own settings.
            supervision = entry.get("supervision") or results["config"].get("supervision", "boxes")
            swap_mask = entry.get("swap_mask") or results["config"].get("swap_mask", "mask")
            columns.append(dict(entry, run=labelled, label=labelled, supervision=supervision, swap_mask=swap_mask))
    # The study's own report: same layout, target check and recommendation as `gainet bias-study`.
    summary = [baselines[run] for run in BASELINES if run in baselines] + columns
    target = target_check(summary, train_size)
    print(markdown_report(summary, train_size, target, seeds, kind="masks or boxes, as labelled"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
