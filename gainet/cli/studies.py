"""``gainet demo`` and ``gainet bias-study``: the commands of :mod:`gainet.studies`
(docs/bias_study.md)."""

from __future__ import annotations

import argparse
from typing import Any

from gainet.cli.common import OUTPUT_FLAGS, parse_mapping


def cmd_demo(args: argparse.Namespace) -> int:
    from gainet.studies.demo import run_demo

    run_demo(output_dir=args.output, epochs=args.epochs, seed=args.seed, threads=args.threads,
             progress=not args.no_progress, methods=args.methods, parts=args.parts,
             faithfulness_images=args.faithfulness)
    return 0


def add_demo_command(commands: Any) -> None:
    """``gainet demo``."""
    demo = commands.add_parser("demo", help="the main job: a classifier that reads the background, diagnosed and "
                                            "fixed with a few boxes; then cam vs gain vs gain-ext",
                               description="Part 'shortcut': a pretrained EfficientNet-Lite0 trained on a world whose "
                                           "background predicts the class, diagnosed (gainet diagnose), fixed with "
                                           "boxes on 5%% of its training images (gainet fix) and diagnosed again, "
                                           "beside the same model trained on unbiased data. Part 'attention': cam, "
                                           "gain, gain-ext and gain-adv on the built-in part-dominance world with the "
                                           "same budget. One report: runs/demo/report.html. A second run reuses the "
                                           "first's outputs.")
    demo.add_argument("--parts", nargs="+", default=["shortcut", "attention"], choices=("shortcut", "attention"),
                      help="which parts to run (default both)")
    demo.add_argument(*OUTPUT_FLAGS, dest="output", default="runs/demo", help="output directory")
    demo.add_argument("--epochs", type=int, default=None, help="epochs per method (default: the demo's budget)")
    demo.add_argument("--methods", nargs="+", default=None, help="methods to compare")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument("--threads", type=int, default=None, help="CPU threads")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.add_argument("--faithfulness", type=int, default=24, metavar="N",
                      help="attention part: deletion / insertion AUC and ROAD of each method's maps and of its "
                           "class-agnostic map on the first N test images (0: off; docs/faithfulness.md)")
    demo.set_defaults(func=cmd_demo)


def _supervision_kind(text: str) -> str:
    """``--supervision`` of bias-study: ``boxes`` or ``masks`` (the N list is ``--supervised-count``)."""
    if text in ("boxes", "masks"):
        return text
    hint = " (the numbers of supervised images go to --supervised-count)" if text[:1].isdigit() else ""
    raise argparse.ArgumentTypeError(f"expected boxes or masks, got {text!r}{hint}")


def cmd_bias_study(args: argparse.Namespace) -> int:
    from gainet.studies.bias_study import run_bias_study

    overrides = dict(args.options or {})
    if args.dataset_options:
        overrides["dataset_options"] = {**overrides.get("dataset_options", {}), **args.dataset_options}
    for name in ("epochs", "train_images", "image_size", "model_width", "dataset", "data_root", "supervision"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.overwrite:
        overrides["overwrite"] = True
    run_bias_study(
        args.output, supervised_counts=args.supervised_count, seeds=args.seeds, first_seed=args.first_seed, threads=args.threads,
        progress=not args.no_progress, test_images=args.test_images, reference=not args.no_reference,
        train_split=args.train_split,
        unbiased_split=args.unbiased_split, biased_split=args.biased_split, decorrelated_split=args.decorrelated_split,
        context_split=args.context_split or None, guidance=args.guidance, guidance_method=args.guidance_method,
        supervised_share=args.supervised_share, gain_runs=not args.no_gain, cam=not args.no_cam,
        **overrides,
    )
    return 0


def add_bias_study_command(commands: Any) -> None:
    """``gainet bias-study`` (docs/bias_study.md)."""
    bias = commands.add_parser("bias-study", help="dataset bias: cam vs gain vs gain-ext vs guidance modes with N "
                                                  "supervised images",
                               description="Train a reference (cam on unbiased data), cam, gain and gain-ext (and the "
                                           "--guidance modes) with boxes or masks on N images for each N, evaluate "
                                           "on the biased, decorrelated and context-only test splits, and write "
                                           "results.json, table.md (with the target check and the cheapest guided "
                                           "run that met it) and accuracy_vs_supervision.png.")
    bias.add_argument(*OUTPUT_FLAGS, dest="output", default="runs/bias-study", help="output directory")
    bias.add_argument("--supervised-count", nargs="+", default=["0", "1%", "2%", "5%", "10%"],
                      help="numbers of supervised images, one run each: counts (20), fractions (0.05) or "
                           "percentages (5%%) of the training set (default: %(default)s)")
    bias.add_argument("--supervision", type=_supervision_kind, default=None,
                      help="what the supervised images carry, as in `gainet train`: boxes (default) or masks")
    bias.add_argument("--seeds", type=int, default=1, help="number of seeds (mean and std over them; default 1)")
    bias.add_argument("--first-seed", type=int, default=0, help="first seed")
    bias.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the study's budget)")
    bias.add_argument("--train-images", type=int, default=None, help="training images (generated worlds)")
    bias.add_argument("--test-images", type=int, default=None, help="cap each test split (generated worlds)")
    bias.add_argument("--image-size", type=int, default=None, help="input side in pixels")
    bias.add_argument("--model-width", type=int, default=None, help="small-cnn first-stage width")
    bias.add_argument("--dataset", default=None, help="dataset (default: the built-in bias world)")
    bias.add_argument("--data-root", default=None, help="dataset directory (voc, folder)")
    bias.add_argument("--train-split", default="train", help="biased training split")
    bias.add_argument("--unbiased-split", default="train_unbiased", help="unbiased training split (the reference)")
    bias.add_argument("--no-reference", action="store_true", help="skip the reference (no unbiased training split)")
    bias.add_argument("--biased-split", default="test_biased", help="test split with the training bias")
    bias.add_argument("--decorrelated-split", default="test_decorrelated", help="test split without it")
    bias.add_argument("--context-split", default="test_context",
                      help="context-only split (contexts without objects), used when the dataset has it; '' for none")
    bias.add_argument("--guidance", nargs="+", default=[], metavar="MODES",
                      help="guided runs, one per value and N > 0: modes as in `gainet train --guidance` (l_e, "
                           "context-swap, context-only, actdiff, rrr, upweight), combined with ',' or '+'")
    bias.add_argument("--guidance-method", default="cam", choices=["cam", "gain", "gain-ext"],
                      help="method the guided runs add their modes to (default cam: L_cl only; gain adds L_am)")
    bias.add_argument("--supervised-share", type=float, default=0.25,
                      help="guided runs: share of each batch drawn from the supervised images (default 0.25)")
    bias.add_argument("--no-gain", action="store_true", help="skip the gain and gain-ext runs")
    bias.add_argument("--no-cam", action="store_true",
                      help="skip the cam run (e.g. a second process adding runs to a study; no target check)")
    bias.add_argument("--options", type=parse_mapping, default=None, metavar="K=V,...",
                      help="other training options for every run, e.g. lr=0.001,am_gradient=attention")
    bias.add_argument("--dataset-options", type=parse_mapping, default=None, metavar="K=V,...",
                      help="dataset options as in `gainet train`, e.g. bias_p=0.99 or '{object_size: [0.07, 0.1]}'")
    bias.add_argument("--overwrite", action="store_true",
                      help="retrain the runs whose directory holds a run with other settings: their files are "
                           "deleted first (without it the study refuses them; runs with the same settings are "
                           "reused, interrupted ones resumed)")
    bias.add_argument("--threads", type=int, default=None, help="CPU threads")
    bias.add_argument("--no-progress", action="store_true", help="hide progress bars")
    bias.set_defaults(func=cmd_bias_study)
