#!/usr/bin/env python
"""Issue 29's calibration of the diagnosis rule: plain models whose answer is known.

For each world (``bias`` with the demo's parameters, ``garments-bias`` at its defaults) and seed,
the demo's small budget (pretrained EfficientNet-Lite0, 1000 images, 3 epochs, 64 px) trains

- ``reference``: on the world's unbiased training split (the object decides), and
- ``biased``: on its biased training split (reads the context, as its decorrelated accuracy shows);

then ``diagnose`` stage: each model is diagnosed with :func:`gainet.shortcuts.diagnose.diagnose` on
the held-out biased split *and* on the decorrelated split (the clean test split a careful user
keeps), contexts from the biased training split, and the raw evidence (scores per split, labels,
rows) is kept in ``evidence.pt`` so a rule can be read off the plain models before any fixed model
is looked at. Resumable: every stage is cached in its folder::

    OMP_NUM_THREADS=1 python benchmarks/verdict_calibration.py train --world bias --seeds 0 1 2 --out runs/verdict
    python benchmarks/verdict_calibration.py diagnose --out runs/verdict
    python benchmarks/verdict_calibration.py table --out runs/verdict
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

WORLDS = {
    "bias": {"dataset": "bias", "dataset_options": {"object_size": [0.07, 0.1], "bias_p": 0.99}},
    "garments-bias": {"dataset": "garments-bias", "dataset_options": {}},
}
KINDS = {"reference": "train_unbiased", "biased": "train"}
SPLITS = ("test_biased", "test_decorrelated")


def _config(world: str, kind: str, seed: int, out: Path):
    from gainet.studies.demo_shortcut import SHORTCUT_CONFIG

    run = out / world / f"seed{seed}" / kind
    return run, SHORTCUT_CONFIG.replace(output_dir=str(run), seed=seed, threads=1, progress=False,
                                        train_split=KINDS[kind], resume="auto" if (run / "last.pt").is_file() else None,
                                        **WORLDS[world])


def train(args: argparse.Namespace) -> None:
    from gainet.training.trainer import train as train_run

    for seed in args.seeds:
        for kind in KINDS:
            run, config = _config(args.world, kind, seed, args.out)
            if (run / "final.json").is_file():
                continue
            print(f"training {args.world} seed {seed} {kind}", flush=True)
            train_run(config)


def _subjects(args: argparse.Namespace):
    """(world, seed, kind, path) of every finished plain model under ``args.out``: the gainet
    checkpoints (``reference``, ``biased``) and the outside ResNet-18 state dicts
    (``outside-reference``, ``outside-biased``, benchmarks/verdict_outside.sh)."""
    for world in WORLDS:
        for seed_dir in sorted((args.out / world).glob("seed*")):
            for kind in KINDS:
                if (seed_dir / kind / "final.json").is_file():
                    yield world, int(seed_dir.name[4:]), kind, seed_dir / kind / "best.pt"
            for kind in KINDS:
                weights = seed_dir / f"outside-{kind}.pt"
                if weights.is_file():
                    yield world, int(seed_dir.name[4:]), f"outside-{kind}", weights


def _load(world: str, kind: str, path: Path):
    import torch

    from gainet.shortcuts.jobs import checkpoint_subject, load_subject

    if not kind.startswith("outside"):
        return checkpoint_subject(path, torch.device("cpu"))
    return load_subject(checkpoint=None, model="resnet18", weights=str(path), multi_label=False,
                        dataset=WORLDS[world]["dataset"], data_root=None,
                        dataset_options=WORLDS[world]["dataset_options"], image_size=64, device=torch.device("cpu"))


def diagnose(args: argparse.Namespace) -> None:
    """Diagnose every plain model on both held-out splits; keep the result and the raw logits."""
    import torch

    from gainet.shortcuts.diagnose import diagnose as run, load_annotated
    from gainet.shortcuts.jobs import _split_dataset, load_contexts

    torch.set_num_threads(args.threads)
    for world, seed, kind, path in _subjects(args):
        subject = None
        for split in SPLITS:
            out = args.out / world / f"seed{seed}" / kind / f"diagnose-{split}{args.tag}"
            if (out / "result.json").is_file():
                continue
            subject = subject or _load(world, kind, path)
            data = load_annotated(_split_dataset(subject, split), source=args.supervision, swap_mask=args.swap_mask,
                                  limit=args.limit, seed=seed, progress=False, where=split)
            contexts, where = load_contexts(subject, None, test=data, test_split=split, swap_mask=args.swap_mask, limit=None,
                                            seed=seed, progress=False)
            result, splits, scores = run(subject.gain, data, multi_label=subject.multi_label, classes=subject.classes,
                                         contexts=contexts, context_split=where, seed=seed, progress=False)
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"scores": scores, "rows": splits.rows, "partners": splits.partners,
                        "labels": {name: splits.labels(name) for name in scores}}, out / "evidence.pt")
            (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
            print(f"{world} seed {seed} {kind} {split}: gap {result['gap']:.3f} {result['intervals']['gap']} "
                  f"-> {result['verdict_code']}", flush=True)


def table(args: argparse.Namespace) -> None:
    """Every plain model's numbers, one row per (world, seed, kind, split), and the verdicts; then the
    verdicts counted per (world, kind, split)."""
    from gainet.shortcuts.verdict import decide

    print("| world | seed | model | split | original [95%] | chance | mixed-same | gap [95%] | context rate (chance) "
          "| verdict |")
    print("|---|---:|---|---|---|---:|---:|---|---|---|")
    counts: dict[tuple[str, str, str], list[str]] = {}
    for world, seed, kind, _ in _subjects(args):
        for split in SPLITS:
            path = args.out / world / f"seed{seed}" / kind / f"diagnose-{split}{args.tag}" / "result.json"
            if not path.is_file():
                continue
            r = json.loads(path.read_text())
            r["verdict_code"] = decide(r)[0]  # the rule as shipped now, on the stored numbers
            i = r["intervals"]
            counts.setdefault((world, kind, split), []).append(r["verdict_code"])
            print(f"| {world} | {seed} | {kind} | {split} | {r['original']:.3f} [{i['original'][0]:.3f}, "
                  f"{i['original'][1]:.3f}] | {r['chance']:.3f} | {r['mixed_same']:.3f} | {r['gap']:.3f} "
                  f"[{i['gap'][0]:.3f}, {i['gap'][1]:.3f}] | {r['context_rate']:.3f} ({r['context_chance']:.3f}) | "
                  f"{r['verdict_code']} |")
    print()
    print("| world | model | split | verdicts (seeds) |")
    print("|---|---|---|---|")
    for (world, kind, split), codes in counts.items():
        summary = ", ".join(f"{code} x{codes.count(code)}" for code in dict.fromkeys(codes))
        print(f"| {world} | {kind} | {split} | {summary} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("train")
    fit.add_argument("--world", choices=tuple(WORLDS), required=True)
    fit.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    fit.add_argument("--out", type=Path, default=Path("runs/verdict"))
    look = commands.add_parser("diagnose")
    look.add_argument("--out", type=Path, default=Path("runs/verdict"))
    look.add_argument("--limit", type=int, default=300, help="test objects per split")
    look.add_argument("--threads", type=int, default=1)
    look.add_argument("--supervision", default="auto", choices=("auto", "boxes", "masks"))
    look.add_argument("--swap-mask", default="mask", choices=("mask", "grabcut"))
    show = commands.add_parser("table")
    show.add_argument("--out", type=Path, default=Path("runs/verdict"))
    for command in (look, show):
        command.add_argument("--tag", default="", help="suffix of the diagnosis folders (one per setting)")
    args = parser.parse_args()
    {"train": train, "diagnose": diagnose, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
