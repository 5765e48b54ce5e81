"""The ``gainet`` command line: train, evaluate, explain, demo, the WSSS stages (make-cams, eval-cams,
pseudo-labels, refine-cams, train-seg, eval-seg), bias-study, diagnose and fix.

One module per group of commands, each holding its ``cmd_*`` functions and the ``add_*`` function
that declares its options: :mod:`~gainet.cli.train_eval`, :mod:`~gainet.cli.explain`,
:mod:`~gainet.cli.wsss`, :mod:`~gainet.cli.studies` (demo, bias-study) and
:mod:`~gainet.cli.shortcuts` (diagnose, fix); :mod:`~gainet.cli.common` holds what they share.
Each command imports what it runs only when it runs: building the parser needs only the training
config (for ``train``'s options).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from gainet import __version__
from gainet.cli.common import CHECKPOINT_COMMANDS, add_unsafe_load_option
from gainet.cli.explain import add_explain_command
from gainet.cli.shortcuts import add_shortcut_commands
from gainet.cli.studies import add_bias_study_command, add_demo_command
from gainet.cli.train_eval import add_train_eval_commands
from gainet.cli.wsss import add_wsss_commands


def build_parser() -> argparse.ArgumentParser:
    """The ``gainet`` parser: the top-level options, then each group's commands in ``--help``'s order."""
    parser = argparse.ArgumentParser(
        prog="gainet",
        description="GAIN (Guided Attention Inference Network): train attention that covers whole objects.",
    )
    parser.add_argument("--version", action="version", version=f"gainet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    add_train_eval_commands(commands)
    add_explain_command(commands)
    add_demo_command(commands)
    add_wsss_commands(commands)
    add_bias_study_command(commands)
    add_shortcut_commands(commands)
    for name in CHECKPOINT_COMMANDS:
        add_unsafe_load_option(commands.choices[name])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command (``argv``: the arguments after ``gainet``; default ``sys.argv[1:]``); its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command is None:
        parser.print_help()
        return 0
    func: Callable[[argparse.Namespace], int] = args.func
    unsafe = getattr(args, "unsafe_load", False)
    if unsafe:  # read by every checkpoint load of this command; restored after it
        from gainet.training.checkpoint import UNSAFE_LOAD_ENV

        unsafe_before = os.environ.get(UNSAFE_LOAD_ENV)
        os.environ[UNSAFE_LOAD_ENV] = "1"
    try:
        return func(args)
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError) as error:
        # Bad input is reported in one line; genuine bugs keep their traceback.
        print(f"gainet {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        if unsafe and unsafe_before is None:
            os.environ.pop(UNSAFE_LOAD_ENV, None)
        elif unsafe:
            os.environ[UNSAFE_LOAD_ENV] = unsafe_before
