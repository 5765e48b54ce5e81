"""The ``gainet`` command line: train, evaluate, explain, demo."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

import yaml

from gainet import __version__
from gainet.training.config import TrainConfig, load_yaml


def _parse_mapping(text: str) -> dict[str, Any]:
    """``key=value,key=value`` (values parsed as YAML scalars) or a YAML/JSON mapping."""
    text = text.strip()
    if text.startswith("{"):
        value = yaml.safe_load(text)
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"not a mapping: {text}")
        return value
    result: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        result[key.strip()] = yaml.safe_load(value)
    return result


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; strings of annotations resolved by the dataclass machinery."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if args else str
    return annotation


def add_config_options(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One ``--option`` per :class:`TrainConfig` field, help text from the field's docs; defaults are
    ``SUPPRESS`` so that only options given on the command line override the YAML file."""
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("training options (override --config)")
    for field in dataclasses.fields(TrainConfig):
        if field.name in exclude:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = _base_type(hints[field.name])
        help_text = f"{field.metadata.get('help', '')} (default: {field.default if field.default is not dataclasses.MISSING else '{}'})"
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs["type"] = _parse_mapping
            kwargs["metavar"] = "K=V,..."
        else:
            kwargs["type"] = kind
            if "choices" in field.metadata:
                kwargs["choices"] = field.metadata["choices"]
        group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace, exclude: tuple[str, ...] = ()) -> TrainConfig:
    values: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    names = {f.name for f in dataclasses.fields(TrainConfig)} - set(exclude)
    values.update({k: v for k, v in vars(args).items() if k in names})
    return TrainConfig.from_dict(values)


# ---------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from gainet.training.trainer import train

    final = train(config_from_args(args))
    val = final.get("val", {})
    print(" ".join(f"{k}={v:.4f}" for k, v in val.items() if isinstance(v, float)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gainet.runner import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint, splits=args.splits, data_root=args.data_root, output_dir=args.output,
        batch_size=args.batch_size, device=args.device, max_batches=args.max_batches,
    )
    print(result["markdown"])
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from gainet.runner import explain_images

    written = explain_images(
        args.inputs, args.checkpoint, output_dir=args.output, classes=args.classes, top_k=args.top_k,
        save_npy=args.save_npy, device=args.device,
    )
    print(f"wrote {len(written)} overlays to {args.output}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gainet.demo import run_demo

    run_demo(output_dir=args.output, epochs=args.epochs, seed=args.seed, threads=args.threads,
             progress=not args.no_progress, methods=args.methods)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gainet",
        description="GAIN (Guided Attention Inference Network): train attention that covers whole objects.",
    )
    parser.add_argument("--version", action="version", version=f"gainet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    evaluate.add_argument("--output", default=None, help="directory for metrics.json and metrics.md "
                                                         "(default: the checkpoint's directory)")
    evaluate.add_argument("--batch-size", type=int, default=32, help="evaluation batch size")
    evaluate.add_argument("--max-batches", type=int, default=None, help="cap batches per split (quick checks)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda")
    evaluate.set_defaults(func=cmd_evaluate)

    explain = commands.add_parser("explain", help="attention overlays for images",
                                  description="Write attention overlays (PNG) for images or a directory of images.")
    explain.add_argument("inputs", nargs="+", help="image files or directories")
    explain.add_argument("--checkpoint", required=True, help="checkpoint file")
    explain.add_argument("--classes", nargs="+", default=None, help="class names to explain (default: top-k predicted)")
    explain.add_argument("--top-k", type=int, default=1, help="explain the k highest-scoring classes")
    explain.add_argument("--output", default="runs/explain", help="output directory")
    explain.add_argument("--save-npy", action="store_true", help="also save the raw maps as .npy")
    explain.add_argument("--device", default="auto", help="auto, cpu or cuda")
    explain.set_defaults(func=cmd_explain)

    demo = commands.add_parser("demo", help="the main job: cam vs gain vs gain-ext on the built-in world",
                               description="Train cam, gain and gain-ext on the built-in part-dominance world with "
                                           "the same budget, evaluate them and write runs/demo/report.html.")
    demo.add_argument("--output", default="runs/demo", help="output directory")
    demo.add_argument("--epochs", type=int, default=None, help="epochs per method (default: the demo's budget)")
    demo.add_argument("--methods", nargs="+", default=None, help="methods to compare")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument("--threads", type=int, default=None, help="CPU threads")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command is None:
        parser.print_help()
        return 0
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError) as error:
        # Bad input is reported in one line; genuine bugs keep their traceback.
        print(f"gainet {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
