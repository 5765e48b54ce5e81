"""What every ``gainet`` command shares: the spelling of the output-directory option, the
``--unsafe-load`` option of the commands that open checkpoints, and the parsers of option values
(``key=value`` mappings, integer lists, annotated types) that several commands take."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

import yaml

# Every command names its output directory --output-dir (train's config option); --output, the
# old spelling of the other commands, still works.
OUTPUT_FLAGS = ("--output-dir", "--output")
# Commands that open checkpoints (they take --unsafe-load).
CHECKPOINT_COMMANDS = ("train", "evaluate", "explain", "make-cams", "train-seg", "eval-seg", "diagnose", "fix")


def parse_mapping(text: str) -> dict[str, Any]:
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


def base_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; strings of annotations resolved by the dataclass machinery."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if args else str
    return annotation


def parse_int_list(text: str) -> list[int]:
    """``"3,17,40"`` -> ``[3, 17, 40]`` (one line naming the bad item otherwise)."""
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_unsafe_load_option(parser: argparse.ArgumentParser) -> None:
    """``--unsafe-load``, added last to each of :data:`CHECKPOINT_COMMANDS` (read in :func:`gainet.cli.main`)."""
    parser.add_argument(
        "--unsafe-load", action="store_true",
        help="load checkpoints with full unpickling, which runs any code a file holds: only for trusted "
             "files written by old gainet versions (also: GAINET_UNSAFE_LOAD=1)")
