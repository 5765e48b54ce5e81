"""``gainet diagnose`` and ``gainet fix``: does a model read the background, and its fix from a few
boxes (docs/shortcuts.md, :mod:`gainet.shortcuts`)."""

from __future__ import annotations

import argparse
from typing import Any

from gainet.cli.common import OUTPUT_FLAGS, parse_mapping


def _model_source_options(parser: argparse.ArgumentParser) -> None:
    """--checkpoint or --model + --weights (as `gainet explain`), and the split's dataset (as `gainet train`)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="gainet checkpoint file (best.pt / last.pt / fixed.pt)")
    source.add_argument("--model", help="a model trained elsewhere: efficientnet-lite0, timm:<name>, a torchvision "
                                        "model name (resnet50, ...) or small-cnn, with --weights")
    parser.add_argument("--weights", default=None, help="--model: local state-dict file (weights_only=True); its "
                                                        "head must have one output per class of the dataset")
    parser.add_argument("--multi-label", action="store_true",
                        help="--model: sigmoid outputs, scored by mAP (default: what the dataset says)")
    parser.add_argument("--normalize", default="imagenet", choices=("imagenet", "dataset"),
                        help="--model: normalise images with ImageNet's statistics (default; a timm model's own "
                             "pretrained_cfg wins) or with the dataset's; a checkpoint uses what it was trained with")
    parser.add_argument("--dataset", default=None, help="dataset as in `gainet train` (bias, garments-bias, folder, "
                                                        "voc, ...; default: the checkpoint's)")
    parser.add_argument("--data-root", default=None, help="dataset directory (folder, voc)")
    parser.add_argument("--dataset-options", type=parse_mapping, default=None, metavar="K=V,...",
                        help="dataset options as in `gainet train`")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side in pixels (default: the checkpoint's; --model: the dataset's)")
    parser.add_argument("--split", default=None, help="held-out split with boxes or masks to test on (default: "
                                                      "test_biased for the bias worlds, else the val split)")
    parser.add_argument("--context-split", default=None,
                        help="split whose annotated images give the class-typical contexts (default: the data the "
                             "model learned from: its training split; the bias worlds' biased 'train'); 'same': the "
                             "split under test")
    parser.add_argument("--swap-mask", default="auto", choices=("auto", "mask", "grabcut"),
                        help="with boxes: paste the whole box (mask) or GrabCut's foreground inside it (grabcut, "
                             "OpenCV) as the object; auto (default): grabcut where OpenCV is installed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the partner draws (and of fix's choices)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--limit", type=int, default=None,
                        help="test on N annotated images only (a seeded random choice)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished output in --output-dir")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _source_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return dict(checkpoint=args.checkpoint, model=args.model, weights=args.weights, multi_label=args.multi_label,
                dataset=args.dataset, data_root=args.data_root, dataset_options=args.dataset_options,
                image_size=args.image_size, split=args.split, swap_mask=args.swap_mask, seed=args.seed,
                batch_size=args.batch_size, limit=args.limit, overwrite=args.overwrite, device=args.device,
                progress=not args.no_progress, output_dir=args.output, normalize=args.normalize,
                context_split=args.context_split)


def cmd_diagnose(args: argparse.Namespace) -> int:
    from gainet.shortcuts.jobs import run_diagnose
    from gainet.shortcuts.report import markdown

    result = run_diagnose(supervision=args.supervision, examples=args.examples, **_source_kwargs(args))
    print(markdown(result))
    print(f"wrote {args.output}/diagnosis.json, diagnosis.md and index.html")
    return 0


def cmd_fix(args: argparse.Namespace) -> int:
    from gainet.shortcuts.jobs import DEFAULT_WAY, fix_markdown, run_fix

    record = run_fix(way=args.way or DEFAULT_WAY, train_split=args.train_split, supervision=args.supervision,
                     supervised_count=args.supervised_count, epochs=args.epochs, lr=args.lr, guidance=args.guidance,
                     contexts_per_class=args.contexts_per_class, threads=args.threads, **{
                         k: v for k, v in _source_kwargs(args).items() if k != "threads"})
    print(fix_markdown(record))
    print(f"wrote {args.output}/fixed.pt (a gainet checkpoint), fix.json, fix.md, before/ and after/")
    return 0


def add_shortcut_commands(commands: Any) -> None:
    """``gainet diagnose`` and ``gainet fix`` (docs/shortcuts.md)."""
    diagnose = commands.add_parser(
        "diagnose", help="does the model read the background? the counterfactual test on annotated images",
        description="The background test of 'Noise or Signal' (Xiao et al. 2020) on your own annotated images: "
                    "the model scored on the originals, on each object pasted onto a context of its own class "
                    "(mixed-same) and of another class (mixed-rand), and on the contexts alone (object removed "
                    "and filled); the background gap (mixed-same - mixed-rand) and a one-line verdict. Writes "
                    "diagnosis.json, diagnosis.md and index.html (with examples).")
    _model_source_options(diagnose)
    diagnose.add_argument("--supervision", default="auto", choices=("auto", "boxes", "masks"),
                          help="what marks the objects: boxes, masks or auto (boxes where at least 20 images have "
                               "them, else masks)")
    diagnose.add_argument("--examples", type=int, default=4, help="example images per split in index.html")
    diagnose.add_argument(*OUTPUT_FLAGS, dest="output", default="runs/diagnose", help="output directory")
    diagnose.set_defaults(func=cmd_diagnose)

    fix = commands.add_parser(
        "fix", help="fix a model that reads the background, from a few boxes; diagnosed before and after",
        description="From a checkpoint (or --model + --weights) and boxes or masks on a few training images: "
                    "--way dfr retrains the last layer on counterfactual images (each annotated object on every "
                    "class's contexts, and the contexts alone), backbone frozen (DFR, Kirichenko et al. 2023); "
                    "--way guidance fine-tunes with gainet train's counterfactual guidance. Writes fixed.pt (a "
                    "gainet checkpoint), fix.json, fix.md and the diagnoses before/ and after/.")
    _model_source_options(fix)
    # default None: gainet.shortcuts.jobs.DEFAULT_WAY decides (chosen from measurements, docs/shortcuts.md)
    fix.add_argument("--way", default=None, choices=("auto", "guidance", "dfr", "guidance-dfr", "dfr-l2"),
                     help="how to fix: guidance (fine-tuning with counterfactual guidance), dfr (last layer, "
                          "group-balanced, l1), guidance-dfr (both), dfr-l2 (the earlier last-layer refit), auto "
                          "(a quarter of the annotated images held out to choose among them and the epochs); "
                          "default: gainet.shortcuts.jobs.DEFAULT_WAY, chosen from docs/shortcuts.md's measurements")
    fix.add_argument("--train-split", default=None, help="split the annotated images come from (default: the "
                                                         "checkpoint's training split, else train)")
    fix.add_argument("--supervision", default="boxes", choices=("boxes", "masks"),
                     help="what the annotated images carry, as in `gainet train` (default boxes)")
    fix.add_argument("--supervised-count", default="5%",
                     help="annotated training images: a count (100) or a share (5%%) of the training split, as in "
                          "`gainet train` (default 5%%)")
    fix.add_argument("--epochs", type=int, default=2,
                     help="fine-tuning epochs of guidance / guidance-dfr; auto: the most it tries (default 2)")
    fix.add_argument("--lr", type=float, default=1e-3, help="--way guidance: learning rate (default 1e-3)")
    fix.add_argument("--guidance", default="context-swap,context-only",
                     help="--way guidance: modes as in `gainet train --guidance` (default context-swap,context-only)")
    fix.add_argument("--contexts-per-class", type=int, default=1,
                     help="--way dfr: contexts of each class every annotated object is pasted on (default 1)")
    fix.add_argument(*OUTPUT_FLAGS, dest="output", default="runs/fix", help="output directory")
    fix.set_defaults(func=cmd_fix)
