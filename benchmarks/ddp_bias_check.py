#!/usr/bin/env python
"""The same guided bias-study runs under ``torchrun --nproc_per_node 2`` (gloo), scored like the study.

For each ``result.json`` of a finished ``gainet bias-study`` run (one process), this trains the same
config again as a 2-process job and scores it on the study's test splits with the study's own
functions (:func:`gainet.studies.bias_study.evaluate_split`), then prints both, per seed and as mean ± std.
Resumable: a finished 2-process run (its ``final.json``) is scored, not trained again.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/ddp_bias_check.py \\
        runs/bias18-pre-grabcut/runs/seed*/context-swap-100/result.json --output-dir runs/ddp-check
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import torch


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(config_path: Path, output: Path, extra: list[str]) -> None:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "gainet.cli", "train",
               "--config", str(config_path), "--output-dir", str(output), "--threads", "1", "--no-progress",
               "--no-tensorboard", *extra]
    subprocess.run(command, env=env, check=True)


def main() -> int:
    from gainet.studies.bias_study import evaluate_context_split, evaluate_split
    from gainet.data import build_dataset
    from gainet.data.factory import WORLDS
    from gainet.training.config import TrainConfig
    from gainet.training.trainer import build_gain
    from gainet.training.checkpoint import load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="result.json of finished one-process study runs")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/ddp-check"))
    parser.add_argument("--no-share", action="store_true", help="train without --supervised-share")
    parser.add_argument("--test-images", type=int, default=None)
    args = parser.parse_args()
    rows = []
    for path in args.results:
        one = json.loads(path.read_text())
        values = dict(one["config"])
        if args.no_share:
            values["supervised_share"] = None
        config = TrainConfig.from_dict(values)
        name = f"{path.parent.parent.name}-{path.parent.name}" + ("-noshare" if args.no_share else "")
        output = args.output_dir / name
        output.mkdir(parents=True, exist_ok=True)
        config_path = output / "one-process-config.yaml"
        import yaml

        config_path.write_text(yaml.safe_dump(config.replace(output_dir=str(output)).to_dict(), sort_keys=False))
        if not (output / "final.json").is_file():
            _torchrun(config_path, output, [])
        state = load_checkpoint(output / "last.pt")
        gain = build_gain(config, len(state["classes"]), bool(state["multi_label"]))
        gain.load_state_dict(state["model"])
        gain.eval()
        sized = {"num_images": args.test_images} if args.test_images and config.dataset in WORLDS else {}
        splits = {}
        for split in ("test_biased", "test_decorrelated"):
            dataset = build_dataset(config.dataset, split, root=config.data_root, image_size=config.image_size,
                                    train_transforms=False, **config.dataset_options, **sized)
            splits[split] = evaluate_split(gain, dataset, torch.device("cpu"))
        context = build_dataset(config.dataset, "test_context", root=config.data_root, image_size=config.image_size,
                                train_transforms=False, **config.dataset_options, **sized)
        splits["test_context"] = evaluate_context_split(gain, context, torch.device("cpu"))
        row = {"run": name, "seed": config.seed,
               "one_decorrelated": one["splits"]["test_decorrelated"]["accuracy"],
               "two_decorrelated": splits["test_decorrelated"]["accuracy"],
               "one_biased": one["splits"]["test_biased"]["accuracy"],
               "two_biased": splits["test_biased"]["accuracy"],
               "one_context_rate": one["splits"].get("test_context", {}).get("context_rate"),
               "two_context_rate": splits["test_context"]["context_rate"]}
        rows.append(row)
        (output / "scores.json").write_text(json.dumps(row, indent=2))
        print(json.dumps(row), flush=True)

    def stat(key: str) -> str:
        values = [r[key] for r in rows if r[key] is not None]
        if not values:
            return "-"
        return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"

    print(f"\n| measure | 1 process | 2 processes (gloo){' , no --supervised-share' if args.no_share else ''} |")
    print("|---|---:|---:|")
    for label, key in (("accuracy, test_decorrelated", "decorrelated"), ("accuracy, test_biased", "biased"),
                       ("context only: share named as the context's class", "context_rate")):
        print(f"| {label} | {stat('one_' + key)} | {stat('two_' + key)} |")
    print(f"\n{len(rows)} seed(s): " + ", ".join(f"{r['run']} {r['one_decorrelated']:.3f} / {r['two_decorrelated']:.3f}"
                                          for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
