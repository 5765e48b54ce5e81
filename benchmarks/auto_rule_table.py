#!/usr/bin/env python
"""Issue 29's per-run table of ``gainet fix --way auto`` (docs/shortcuts.md, "`--way auto`'s second
rule"): for each world, model and seed of ``benchmarks/shortcut_fix.py --ways auto`` outputs, the
chosen candidate, how sure, what DFR's worst-group rule would have chosen, the accuracies against the
reference and the issue's targets, and (``--earlier``) the earlier rule's run of the same model and seed.

    python benchmarks/auto_rule_table.py --out bias=runs/fix29b-bias --out garments-bias=runs/fix29b-garments-bias \\
        --earlier bias=runs/fix34-bias --earlier garments-bias=runs/fix34-garments-bias
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _accuracy(folder: Path) -> dict | None:
    path = folder / "evaluate" / "accuracy.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", action="append", required=True, metavar="WORLD=DIR", help="shortcut_fix.py --out")
    parser.add_argument("--earlier", action="append", default=[], metavar="WORLD=DIR",
                        help="the same study run with the earlier rule (its fix-auto-2pct folders)")
    parser.add_argument("--models", nargs="+", default=["cam", "outside"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--count", default="2pct")
    args = parser.parse_args()
    earlier = dict(item.split("=", 1) for item in args.earlier)
    print("| world | model | seed | chosen (group-balanced) | how sure | worst-group rule would choose | decorrelated "
          "| x ref | biased (ref - 0.02) | context rate (ref + 0.05) | verdict | earlier rule's run: chosen, "
          "decorrelated, x ref |")
    print("|---|---|---:|---|---:|---|---:|---:|---:|---:|---|---|")
    ratios: dict[tuple[str, str], list[float]] = {}
    for item in args.out:
        world, root = item.split("=", 1)
        for model in args.models:
            for seed in args.seeds:
                base = Path(root) / f"seed{seed}"
                fix = base / model / f"fix-auto-{args.count}"
                if not (fix / "fix.json").is_file():
                    continue
                record = json.loads((fix / "fix.json").read_text())
                details, after = record["details"], record["after"]
                reference = _accuracy(base / "reference")
                reference_rate = json.loads((base / "reference" / "diagnose" / "diagnosis.json").read_text())["context_rate"]
                accuracy = _accuracy(fix)
                ratio = accuracy["test_decorrelated"] / reference["test_decorrelated"]
                before = ""
                old = Path(earlier.get(world, "/nonexistent")) / f"seed{seed}" / model / f"fix-auto-{args.count}"
                if (old / "fix.json").is_file() and _accuracy(old):
                    old_accuracy = _accuracy(old)["test_decorrelated"]
                    before = (f"{json.loads((old / 'fix.json').read_text())['details']['chosen']}, {old_accuracy:.3f}, "
                              f"{old_accuracy / reference['test_decorrelated']:.2f}")

                def mark(met: bool) -> str:
                    return "" if met else " (missed)"

                biased_line = reference["test_biased"] - 0.02
                print(f"| {world} | {model} | {seed} | {details['chosen']} | {details['stability']:.2f} | "
                      f"{details['chosen_by_worst_group']} | {accuracy['test_decorrelated']:.3f} | {ratio:.2f}"
                      f"{mark(ratio >= 0.95)} | {accuracy['test_biased']:.3f} ({biased_line:.3f})"
                      f"{mark(accuracy['test_biased'] >= biased_line)} | {after['context_rate']:.3f} "
                      f"({reference_rate + 0.05:.3f}){mark(after['context_rate'] <= reference_rate + 0.05)} | "
                      f"{after['verdict_code']} | {before} |")
                ratios.setdefault((world, model), []).append(ratio)
    print()
    for (world, model), values in ratios.items():
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        print(f"{world}, {model}: x the reference {' / '.join(f'{v:.2f}' for v in values)}, "
              f"mean {statistics.mean(values):.3f}{spread}")


if __name__ == "__main__":
    main()
