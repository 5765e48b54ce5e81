#!/usr/bin/env python
"""Issue 19's measurement: ``gainet diagnose`` separates a context reader from the unbiased
reference, and ``gainet fix`` (both ways, boxes on N of the training images) moves the reader's
decision, judged against the reference on both test splits.

It takes the models of a finished bias study (``gainet bias-study`` or
``benchmarks/bias_pretrained_study.sh``: ``<study>/runs/seed<s>/{reference,cam}/best.pt``) and,
optionally, models trained outside gainet (``--outside NAME=MODEL:WEIGHTS_PATTERN`` with ``{seed}``
in the pattern: a state dict from a plain torch script, e.g. ``benchmarks/outside_model.py``),
then for each seed:

1. diagnoses the reference and the reader on the held-out biased split (``test_biased``);
2. fixes the reader with ``gainet fix --way dfr`` and ``--way guidance`` on boxes on each N;
3. evaluates every model on ``test_biased`` and ``test_decorrelated``.

Resumable: each diagnosis, fix and evaluation is cached in its output directory. Prints one
markdown table (mean ± std over seeds) and the issue's targets, and writes ``results.json``::

    python benchmarks/shortcut_fix.py --study runs/bias18-garments-masks --out runs/fix19-garments \\
        --seeds 0 1 2 --counts 1% 2% 5% --guidance-counts 2% \\
        --outside outside=efficientnet-lite0:runs/outside/garments-bias-lite0-seed{seed}.pt
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

SPLITS = ("test_biased", "test_decorrelated")


def _cached_json(path: Path, make) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    started = time.perf_counter()
    result = make()
    result = dict(result)
    result.setdefault("seconds", time.perf_counter() - started)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    return result


def _evaluate(checkpoint: Path, out: Path) -> dict[str, float]:
    from gainet.evaluation.jobs import evaluate_checkpoint

    def make():
        result = evaluate_checkpoint(checkpoint, splits=list(SPLITS), output_dir=out, device="cpu")
        return {split: result["splits"][split]["accuracy"] for split in SPLITS} if "splits" in result else {
            split: result[split]["accuracy"] for split in SPLITS}

    return _cached_json(out / "accuracy.json", make)


def _diagnose(out: Path, **subject) -> dict[str, Any]:
    from gainet.shortcuts.jobs import run_diagnose

    if (out / "diagnosis.json").is_file():
        return json.loads((out / "diagnosis.json").read_text())
    return run_diagnose(output_dir=out, device="cpu", progress=False, **subject)


def _fix(out: Path, way: str, count: str, seed: int, **subject) -> dict[str, Any]:
    from gainet.shortcuts.jobs import run_fix

    if (out / "fix.json").is_file():
        return json.loads((out / "fix.json").read_text())
    return run_fix(way=way, supervised_count=count, seed=seed, output_dir=out, device="cpu", progress=False,
                   threads=1, **subject)


def _row(name: str, accuracy: dict[str, float], diagnosis: dict[str, Any], seconds: float | None = None) -> dict:
    row = {"model": name, "biased": accuracy["test_biased"], "decorrelated": accuracy["test_decorrelated"],
           "gap": diagnosis["gap"], "context_rate": diagnosis["context_rate"],
           "mixed_rand": diagnosis["mixed_rand"], "verdict_code": diagnosis.get("verdict_code")}
    if seconds is not None:
        row["fix_seconds"] = seconds
    return row


def measure_seed(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    out = args.out / f"seed{seed}"
    models: dict[str, dict[str, Any]] = {}
    for run in ("reference", "cam"):
        models[run] = {"checkpoint": str(args.study / "runs" / f"seed{seed}" / run / "best.pt")}
    for item in args.outside:
        name, spec = item.split("=", 1)
        architecture, pattern = spec.split(":", 1)
        models[name] = {"model": architecture, "weights": pattern.format(seed=seed), "dataset": args.dataset,
                        "dataset_options": args.dataset_options}
    rows = []
    for name, subject in models.items():
        diagnosis = _diagnose(out / name / "diagnose", **subject)
        if "checkpoint" in subject:
            accuracy = _evaluate(Path(subject["checkpoint"]), out / name / "evaluate")
        else:
            accuracy = _evaluate_outside(subject, out / name / "evaluate")
        rows.append(_row(name, accuracy, diagnosis))
        if name == "reference" or name.endswith("-reference"):
            continue
        cached_only = bool(args.fix_models) and name not in args.fix_models
        for way in args.ways:
            for count in args.counts if way == "dfr" else args.guidance_counts:
                fixed = out / name / f"fix-{way}-{count.replace('%', 'pct')}"
                if cached_only and not (fixed / "fix.json").is_file():
                    continue
                record = _fix(fixed, way, count, seed, **subject)
                accuracy = _evaluate(fixed / "fixed.pt", fixed / "evaluate")
                rows.append(_row(f"{name} + fix {way}, boxes on {count}", accuracy,
                                 json.loads((fixed / "after" / "diagnosis.json").read_text()), record["fix_seconds"]))
                details = record.get("details") or {}
                rows[-1]["chosen"] = details.get("chosen")
                if details.get("stability") is not None:  # --way auto: how sure, and DFR's rule's choice
                    rows[-1]["chosen"] += (f" (best on {details['stability']:.0%} of resamples; worst group first: "
                                           f"{details.get('chosen_by_worst_group')})")
    for row in rows:
        row["seed"] = seed
    return rows


def _evaluate_outside(subject: dict[str, Any], out: Path) -> dict[str, float]:
    """Accuracy of a model trained elsewhere: its diagnosis's "original" is test_biased; the
    decorrelated split is diagnosed too (the same counterfactual test, its originals scored)."""
    def make():
        result = {}
        for split in SPLITS:
            diagnosis = _diagnose(out / split, split=split, **subject)
            result[split] = diagnosis["original"]
        return result

    return _cached_json(out / "accuracy.json", make)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = list(dict.fromkeys(row["model"] for row in rows))
    table = []
    for name in names:
        mine = [row for row in rows if row["model"] == name]
        entry: dict[str, Any] = {"model": name, "seeds": len(mine)}
        for key in ("biased", "decorrelated", "gap", "context_rate", "mixed_rand", "fix_seconds"):
            values = [row[key] for row in mine if row.get(key) is not None]
            if values:
                entry[key] = statistics.fmean(values)
                entry[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        codes = [row.get("verdict_code") or "?" for row in mine]
        entry["verdicts"] = ", ".join(f"{code} x{codes.count(code)}" for code in dict.fromkeys(codes))
        chosen = [row["chosen"] for row in mine if row.get("chosen")]
        if chosen:
            entry["chosen"] = "; ".join(chosen)
        table.append(entry)
    return table


def targets(table: list[dict[str, Any]]) -> list[str]:
    """Issue 19's targets: the diagnosis separates the models; a fix on 2% reaches the reference:
    ``NAME-reference`` for the rows of model ``NAME`` where one was given (an architecture of its
    own), the study's ``reference`` otherwise."""
    by_name = {row["model"]: row for row in table}
    lines = []
    if "reference" not in by_name:
        return lines
    for row in table:
        if row["model"] == "reference" or row["model"].endswith("-reference"):
            lines.append(f"{row['model']}: gap {row['gap']:.3f}, verdicts {row.get('verdicts')}")
            continue
        if "fix" not in row["model"]:
            lines.append(f"{row['model']}: gap {row['gap']:.3f}, verdicts {row.get('verdicts')}")
            continue
        if "on 2%" not in row["model"]:
            continue
        reference = by_name.get(row["model"].split(" + ")[0] + "-reference", by_name["reference"])
        checks = {
            "decorrelated >= 0.95 x reference": row["decorrelated"] >= 0.95 * reference["decorrelated"],
            "biased >= reference - 0.02": row["biased"] >= reference["biased"] - 0.02,
            "context rate <= reference + 0.05": row["context_rate"] <= reference["context_rate"] + 0.05,
            "verdict: the object decides": row.get("verdicts", "").startswith("object_decides x") and ","
            not in row.get("verdicts", ""),
        }
        shown = "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in checks.items())
        lines.append(f"{row['model']}: decorrelated {row['decorrelated']:.3f} = "
                     f"{row['decorrelated'] / reference['decorrelated']:.2f} x {reference['model']}'s, biased "
                     f"{row['biased']:.3f}, context rate {row['context_rate']:.3f}, gap {row['gap']:.3f}: {shown}")
    return lines


def markdown(table: list[dict[str, Any]]) -> str:
    def cell(row, key):
        if key not in row:
            return ""
        return f"{row[key]:.3f} ± {row[key + '_std']:.3f}" if row["seeds"] > 1 else f"{row[key]:.3f}"

    columns = [("biased", "accuracy, test_biased"), ("decorrelated", "accuracy, test_decorrelated"),
               ("mixed_rand", "diagnose: mixed-rand"), ("gap", "diagnose: background gap"),
               ("context_rate", "diagnose: context only named as its class"), ("fix_seconds", "fix, CPU s")]
    lines = ["| model | " + " | ".join(label for _, label in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for row in table:
        lines.append(f"| {row['model']} | " + " | ".join(cell(row, key) for key, _ in columns) + " |")
    lines += ["", "Verdicts after each fix (per seed), and the candidate --way auto chose:", ""]
    lines += [f"- {row['model']}: {row.get('verdicts')}" + (f"; chosen: {row['chosen']}" if row.get("chosen") else "")
              for row in table]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, required=True, help="bias-study output directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dataset", default="garments-bias", help="dataset of --outside models")
    parser.add_argument("--dataset-options", type=json.loads, default=None, metavar="JSON",
                        help="the world's parameters for --outside models (the study's models carry theirs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--counts", nargs="+", default=["1%", "2%", "5%"])
    parser.add_argument("--ways", nargs="+", default=["dfr", "guidance"])
    parser.add_argument("--guidance-counts", nargs="+", default=["2%"],
                        help="N for --way guidance (a training run each; dfr takes --counts)")
    parser.add_argument("--outside", action="append", default=[], metavar="NAME=MODEL:WEIGHTS_PATTERN",
                        help="a state dict trained elsewhere ({seed} in the pattern); NAME-reference is not "
                             "fixed and is the reference of NAME's fixes (e.g. the same architecture on unbiased data)")
    parser.add_argument("--fix-models", nargs="+", default=None, metavar="NAME",
                        help="fix only these models (cam, an --outside NAME; default: every one but the references); "
                             "the others are diagnosed and scored, and only their cached fixes enter the table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        rows += measure_seed(args, seed)
    table = summarise(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "summary": table}, indent=2))
    print(markdown(table))
    print()
    print(f"Mean ± std over seeds {sorted({row['seed'] for row in rows})}.")
    for line in targets(table):
        print(line)


if __name__ == "__main__":
    main()
