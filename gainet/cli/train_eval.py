"""``gainet train`` and ``gainet evaluate``: one ``--option`` per training-config field, the YAML
file they override, and the checkpoint evaluation (:mod:`gainet.evaluation.jobs`)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from gainet.cli.common import OUTPUT_FLAGS, base_type, parse_int_list, parse_mapping
from gainet.training.config import TrainConfig, load_yaml


def add_config_options(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One ``--option`` per :class:`TrainConfig` field, help text from the field's docs; defaults are
    ``SUPPRESS`` so that only options given on the command line override the YAML file."""
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("training options (override --config)")
    for field in dataclasses.fields(TrainConfig):
        if field.name in exclude:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = base_type(hints[field.name])
        help_text = f"{field.metadata.get('help', '')} (default: {field.default if field.default is not dataclasses.MISSING else '{}'})"
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs["type"] = parse_mapping
            kwargs["metavar"] = "K=V,..."
        elif typing.get_origin(kind) is list:
            kwargs["type"] = parse_int_list
            kwargs["metavar"] = "N,N,..."
        else:
            kwargs["type"] = kind
            if "choices" in field.metadata:
                kwargs["choices"] = field.metadata["choices"]
        group.add_argument(flag, **kwargs)


def recorded_config(args: argparse.Namespace) -> Path | None:
    """The ``config.yaml`` of the run that ``--resume`` continues, when no ``--config`` is given:
    a resume then keeps the run's recorded settings and the command line changes only what it names
    (``gainet train --output-dir runs/x --resume auto --epochs 20``)."""
    resume = getattr(args, "resume", None)
    if not resume or getattr(args, "config", None):
        return None
    if resume == "auto":
        output_dir = Path(getattr(args, "output_dir", None) or TrainConfig().output_dir)
        if not (output_dir / "last.pt").is_file():
            return None
        recorded = output_dir / "config.yaml"
    else:
        recorded = Path(resume).parent / "config.yaml"
    return recorded if recorded.is_file() else None


def config_from_args(args: argparse.Namespace, exclude: tuple[str, ...] = ()) -> TrainConfig:
    source = getattr(args, "config", None) or recorded_config(args)
    values: dict[str, Any] = load_yaml(source) if source else {}
    names = {f.name for f in dataclasses.fields(TrainConfig)} - set(exclude)
    values.update({k: v for k, v in vars(args).items() if k in names})
    return TrainConfig.from_dict(values)


def cmd_train(args: argparse.Namespace) -> int:
    from gainet.training.trainer import train

    final = train(config_from_args(args))
    val = final.get("val", {})
    if val:  # rank 0 of a torchrun job, or a single process
        print(" ".join(f"{k}={v:.4f}" for k, v in val.items() if isinstance(v, float)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gainet.evaluation.jobs import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint, splits=args.splits, data_root=args.data_root, output_dir=args.output,
        batch_size=args.batch_size, device=args.device, max_batches=args.max_batches, progress=not args.no_progress,
        attention_layer=args.attention_layer, faithfulness=args.faithfulness, randomisation=args.randomisation,
    )
    print(result["markdown"])
    return 0


def add_train_eval_commands(commands: Any) -> None:
    """``gainet train`` and ``gainet evaluate``."""
    train = commands.add_parser("train", help="train cam, gain or gain-ext",
                                description="Train a classifier with trainable attention (cam | gain | gain-ext).")
    train.add_argument("--config", help="YAML file of training options; command-line options override it")
    add_config_options(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="classification and attention-localisation metrics",
                                   description="Evaluate a checkpoint: mAP/accuracy and attention localisation "
                                               "(threshold-swept mIoU, coverage, precision, pointing game, box energy).")
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint file (best.pt / last.pt)")
    evaluate.add_argument("--splits", nargs="+", default=None,
                          help="splits to evaluate (default: the training config's val split; bias world: "
                               "test_biased test_decorrelated)")
    evaluate.add_argument("--data-root", default=None, help="override the dataset directory")
    evaluate.add_argument(*OUTPUT_FLAGS, dest="output", default=None, help="directory for metrics.json and metrics.md "
                                                         "(default: the checkpoint's directory)")
    evaluate.add_argument("--batch-size", type=int, default=32, help="evaluation batch size")
    evaluate.add_argument("--max-batches", type=int, default=None, help="cap batches per split (quick checks)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda")
    evaluate.add_argument("--no-progress", action="store_true", help="hide progress bars")
    evaluate.add_argument("--attention-layer", default=None,
                          help="score the maps of this layer instead of the trained one's (a dotted name, or a "
                               "named layer such as stride16 for efficientnet-lite0 and resnets)")
    evaluate.add_argument("--faithfulness", type=int, default=0, metavar="N",
                          help="also deletion/insertion AUC and ROAD of the maps (and of the class-agnostic map) on the "
                               "first N images of each split: ~120 forward passes per image (docs/faithfulness.md)")
    evaluate.add_argument("--randomisation", type=int, default=0, metavar="N",
                          help="also the cascading randomisation sanity check on the first N images of each split "
                               "(mean Spearman similarity to the trained model's maps; low is right)")
    evaluate.set_defaults(func=cmd_evaluate)
