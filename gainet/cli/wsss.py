"""The weakly-supervised segmentation stages (docs/wsss.md): ``make-cams``, ``eval-cams``,
``pseudo-labels``, ``refine-cams``, ``train-seg`` and ``eval-seg``."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from gainet.cli.common import OUTPUT_FLAGS, base_type
from gainet.training.config import load_yaml
from gainet.wsss.config import DEFAULT_SCALES


def _crf_params(args: argparse.Namespace):
    from gainet.wsss.crf import CRFParams

    return CRFParams(gaussian_sxy=args.crf_gaussian_sxy, gaussian_compat=args.crf_gaussian_compat,
                     bilateral_sxy=args.crf_bilateral_sxy, bilateral_srgb=args.crf_bilateral_srgb,
                     bilateral_compat=args.crf_bilateral_compat, iterations=args.crf_iterations,
                     gt_prob=args.crf_gt_prob)


def cmd_make_cams(args: argparse.Namespace) -> int:
    from gainet.wsss.cams import make_cams

    result = make_cams(args.checkpoint, args.output, split=args.split, data_root=args.data_root, limit=args.limit,
                       scales=args.scales, flip=args.flip, base_size=args.base_size, dtype=args.dtype,
                       attention_layer=args.attention_layer, class_agnostic=args.class_agnostic,
                       overwrite=args.overwrite, device=args.device, progress=not args.no_progress)
    print(f"make-cams: {result['written']} written, {result['skipped']} already there, "
          f"{result['images']} images in {result['output']}/cams")
    return 0


def cmd_eval_cams(args: argparse.Namespace) -> int:
    from gainet.wsss.cams import eval_cams

    result = eval_cams(args.cams, thresholds=args.thresholds, data_root=args.data_root, output=args.output,
                       progress=not args.no_progress)
    print(result["markdown"])
    return 0


def cmd_pseudo_labels(args: argparse.Namespace) -> int:
    from gainet.wsss.pseudo_labels import make_pseudo_labels

    fg = args.fg_threshold if args.fg_threshold == "auto" else float(args.fg_threshold)
    result = make_pseudo_labels(args.cams, args.output, fg_threshold=fg, bg_threshold=args.bg_threshold,
                                band=args.band, crf=args.crf, crf_params=_crf_params(args), data_root=args.data_root,
                                overwrite=args.overwrite, evaluate=not args.no_eval, progress=not args.no_progress)
    print(f"pseudo-labels: {result['written']} written, {result['skipped']} already there, {result['images']} images "
          f"in {result['output']}/labels (fg {result['fg_threshold']:.2f}, bg {result['bg_threshold']:.2f})")
    if result["eval"]:
        print(result["eval"]["markdown"])
    return 0


def cmd_train_seg(args: argparse.Namespace) -> int:
    from gainet.wsss.config import SegConfig
    from gainet.wsss.seg_trainer import train_seg

    values: dict[str, Any] = load_yaml(args.config) if args.config else {}
    names = {f.name for f in dataclasses.fields(SegConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    final = train_seg(SegConfig.from_dict(values))
    print(f"train-seg: epoch {final.get('epoch')} loss {final.get('train/loss', float('nan')):.4f}")
    return 0


def cmd_eval_seg(args: argparse.Namespace) -> int:
    from gainet.wsss.seg_trainer import evaluate_segmentation

    output = args.output or str(Path(args.checkpoint).parent / f"eval-{args.split}")
    result = evaluate_segmentation(args.checkpoint, output, split=args.split, data_root=args.data_root,
                                   limit=args.limit, scales=args.scales, flip=args.flip, base_size=args.base_size,
                                   crf=args.crf, crf_params=_crf_params(args), overwrite=args.overwrite,
                                   device=args.device, progress=not args.no_progress)
    print(result["markdown"])
    return 0


def _add_crf_options(parser: argparse.ArgumentParser) -> None:
    from gainet.wsss.crf import CRFParams

    defaults = CRFParams()
    group = parser.add_argument_group("dense CRF (optional package pydensecrf2)")
    group.add_argument("--crf", action="store_true", help="refine with a dense CRF")
    for name, kind, text in (("gaussian_sxy", float, "Gaussian kernel spatial std"),
                             ("gaussian_compat", float, "Gaussian kernel weight"),
                             ("bilateral_sxy", float, "bilateral kernel spatial std"),
                             ("bilateral_srgb", float, "bilateral kernel colour std"),
                             ("bilateral_compat", float, "bilateral kernel weight"),
                             ("iterations", int, "mean-field iterations"),
                             ("gt_prob", float, "confidence given to a hard label (pseudo labels)")):
        group.add_argument("--crf-" + name.replace("_", "-"), dest="crf_" + name, type=kind,
                           default=getattr(defaults, name), help=f"{text} (default: %(default)s)")


def _add_seg_options(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per :class:`SegConfig` field (``SUPPRESS`` defaults: only given options
    override the YAML file)."""
    from gainet.wsss.config import SegConfig

    hints = typing.get_type_hints(SegConfig)
    group = parser.add_argument_group("train-seg options (override --config)")
    for field in dataclasses.fields(SegConfig):
        kind = base_type(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS,
                                  "help": f"{field.metadata.get('help', '')} (default: {default})"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is list:
            kwargs.update(type=float, nargs=2, metavar=("LOW", "HIGH"))
        else:
            kwargs["type"] = kind
            if "choices" in field.metadata:
                kwargs["choices"] = field.metadata["choices"]
        group.add_argument("--" + field.name.replace("_", "-"), **kwargs)


# refine-cams (issue 21): its own block
def cmd_refine_cams(args: argparse.Namespace) -> int:
    from gainet.wsss.refine import RefineParams, refine_cams

    params = RefineParams(method=args.method, dilations=tuple(args.dilations), iterations=args.iterations,
                          w_rgb=args.w_rgb, w_pos=args.w_pos, layers=tuple(args.affinity_layers or ()),
                          conf_fg=args.conf_fg, conf_bg=args.conf_bg, radius=args.radius, epochs=args.epochs,
                          lr=args.lr, seed=args.seed, beta=args.beta, walk_radius=args.walk_radius,
                          background_power=args.background_power, label_crf=args.label_crf,
                          walk_normalise=args.walk_normalise, walk_base_size=args.walk_base_size)
    result = refine_cams(args.cams, args.output, params, data_root=args.data_root, overwrite=args.overwrite,
                         device=args.device, progress=not args.no_progress)
    print(f"refine-cams: {result['written']} written, {result['skipped']} already there, {result['images']} images "
          f"in {result['output']}/cams ({args.method}; train {result['seconds']['train']:.1f} s, refine "
          f"{result['seconds']['refine']:.1f} s)")
    return 0


def add_refine_command(commands: Any) -> None:
    refine = commands.add_parser(
        "refine-cams", help="WSSS 1b: refine the maps with affinities (par: colour/position; affinity: learned)",
        description="Refine a make-cams folder into a new one (same layout, so eval-cams and pseudo-labels read it): "
                    "par = training-free pixel-adaptive refinement on colour and position; affinity = an "
                    "inter-pixel affinity head on the classifier's frozen features, trained from the seeds' "
                    "confident pixels, then a random walk. Resumes: existing files are skipped.")
    refine.add_argument("--cams", required=True, help="make-cams output folder (the seeds)")
    refine.add_argument(*OUTPUT_FLAGS, dest="output", required=True, help="output folder (maps go to OUTPUT/cams/)")
    refine.add_argument("--method", default="affinity", choices=("par", "affinity"),
                        help="refinement: affinity (learned; needs eval-cams on the seeds, their classifier "
                             "checkpoint and, for its default --label-crf, pydensecrf2 (or give --no-label-crf); "
                             "+5.7 mIoU over par on real photos, docs/wsss.md) or par (training-free, needs nothing) "
                             "(default: %(default)s)")
    refine.add_argument("--iterations", type=int, default=None,
                        help="propagation steps (default: par 10, affinity 256)")
    refine.add_argument("--dilations", type=int, nargs="+", default=[1, 2, 4, 8, 12, 24], help="par: dilations")
    refine.add_argument("--w-rgb", type=float, default=0.3, help="par: colour scale")
    refine.add_argument("--w-pos", type=float, default=0.01, help="par: weight of the position term")
    refine.add_argument("--affinity-layers", nargs="+", default=None,
                        help="affinity: backbone layers (stride4 stride8 stride16 or dotted names; default: all "
                             "named strides of the model family)")
    refine.add_argument("--conf-fg", type=float, default=None,
                        help="affinity: confident-foreground threshold (default: eval-cams best + 0.15)")
    refine.add_argument("--conf-bg", type=float, default=None,
                        help="affinity: confident-background threshold (default: eval-cams best - 0.10)")
    refine.add_argument("--radius", type=int, default=5, help="affinity: training pair radius (feature grid)")
    refine.add_argument("--epochs", type=int, default=8, help="affinity: training epochs")
    refine.add_argument("--lr", type=float, default=1e-3, help="affinity: Adam learning rate")
    refine.add_argument("--seed", type=int, default=0, help="affinity: training seed")
    refine.add_argument("--beta", type=float, default=8.0, help="affinity: power of the affinities in the walk")
    refine.add_argument("--walk-radius", type=int, default=5, help="affinity: random-walk radius (feature grid)")
    refine.add_argument("--background-power", type=float, default=0.0,
                        help="affinity: walk AffinityNet's background map (1 - max map)^P beside the maps and "
                             "score each class against it (P = 16 in AffinityNet; default 0: no background map)")
    refine.add_argument("--walk-normalise", default="minmax", choices=("minmax", "max", "none"),
                        help="affinity, without --background-power: how the walked maps are written: minmax (each "
                             "map to [0, 1]), max (divided by the image's largest walked value, IRN's), none (as "
                             "walked) (default: %(default)s)")
    refine.add_argument("--label-crf", action=argparse.BooleanOptionalAction, default=True,
                        help="affinity: train the head on IRN's labels: the seeds at --conf-fg and at --conf-bg each "
                             "refined by a dense CRF (pseudo-labels --crf's kernels; needs pydensecrf2); "
                             "--no-label-crf: the raw seeds' labels (default: on)")
    refine.add_argument("--walk-base-size", default="train",
                        help="affinity: the random walk's input, in make-cams --base-size's words: train (the "
                             "classifier's square input), native (the image at its own size and aspect, IRN's) "
                             "or N (an N x N square); the head trains on train inputs (default: %(default)s)")
    refine.add_argument("--data-root", default=None, help="override the dataset directory")
    refine.add_argument("--overwrite", action="store_true", help="redo every file (and retrain the head)")
    refine.add_argument("--device", default="cpu", help="cpu or cuda")
    refine.add_argument("--no-progress", action="store_true", help="hide progress bars")
    refine.set_defaults(func=cmd_refine_cams)


def add_wsss_commands(commands: Any) -> None:
    """Subcommands of the weakly-supervised segmentation pipeline (docs/wsss.md)."""
    progress = {"action": "store_true", "help": "hide progress bars"}

    cams = commands.add_parser("make-cams", help="WSSS 1: attention maps of every training image",
                               description="Save the normalised attention map of each ground-truth class of every "
                                           "image (native resolution, .npy per image with class keys), optionally "
                                           "multi-scale and flip-averaged. Resumes: existing files are skipped.")
    cams.add_argument("--checkpoint", required=True, help="classifier checkpoint (gainet train: best.pt / last.pt)")
    cams.add_argument(*OUTPUT_FLAGS, dest="output", required=True, help="output folder (maps go to OUTPUT/cams/)")
    cams.add_argument("--split", default=None, help="split to process (default: the checkpoint's training split)")
    cams.add_argument("--data-root", default=None, help="override the dataset directory")
    cams.add_argument("--limit", type=int, default=None, help="first N images only (generated worlds: draw N)")
    cams.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES),
                      help="input scales, e.g. 0.5 1 1.5 2 (default: 1 1.5, measured better than 1 alone on every "
                           "seed of both worlds: docs/wsss.md)")
    cams.add_argument("--flip", action="store_true", help="also average the horizontally mirrored image")
    cams.add_argument("--base-size", default="train",
                      help="size that scale 1 means: train (the checkpoint's square input), native, or N pixels")
    cams.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="storage precision")
    cams.add_argument("--attention-layer", default=None,
                      help="maps of this layer of the same weights (as train's --attention-layer: stride16, stride32 "
                           "or a dotted module name; default: the layer the checkpoint was trained with)")
    cams.add_argument("--class-agnostic", action="store_true",
                      help="the class-agnostic baseline: the mean of all class maps stands for each class's map")
    cams.add_argument("--overwrite", action="store_true", help="recompute images whose file exists")
    cams.add_argument("--device", default="auto", help="auto, cpu or cuda")
    cams.add_argument("--no-progress", **progress)
    cams.set_defaults(func=cmd_make_cams)

    evalcams = commands.add_parser("eval-cams", help="WSSS 2: mIoU of the maps over a swept background threshold",
                                   description="mIoU (background + classes, 255 ignored) of the segmentation the maps "
                                               "give at each constant background threshold; best and whole curve.")
    evalcams.add_argument("--cams", required=True, help="make-cams output folder")
    evalcams.add_argument("--thresholds", type=float, nargs="+", default=None,
                          help="background thresholds (default 0.05 0.10 ... 0.95)")
    evalcams.add_argument("--data-root", default=None, help="override the dataset directory")
    evalcams.add_argument(*OUTPUT_FLAGS, dest="output", default=None,
                          help="where eval_cams.json/.md go (default: the cams folder)")
    evalcams.add_argument("--no-progress", **progress)
    evalcams.set_defaults(func=cmd_eval_cams)

    labels = commands.add_parser("pseudo-labels", help="WSSS 3: index PNGs from the maps (255 = unsure)",
                                 description="Pseudo labels: class where the strongest map > fg threshold, background "
                                             "where <= bg threshold, 255 between; optional dense CRF; scored against "
                                             "the ground truth. Resumes: existing PNGs are skipped.")
    labels.add_argument("--cams", required=True, help="make-cams output folder")
    labels.add_argument(*OUTPUT_FLAGS, dest="output", required=True, help="output folder (PNGs go to OUTPUT/labels/)")
    labels.add_argument("--fg-threshold", default="auto",
                        help="foreground threshold, or auto: eval-cams' best background threshold (default)")
    labels.add_argument("--bg-threshold", type=float, default=None,
                        help="background threshold (default: fg threshold - band)")
    labels.add_argument("--band", type=float, default=0.1, help="width of the unsure band below the fg threshold")
    labels.add_argument("--data-root", default=None, help="override the dataset directory")
    labels.add_argument("--overwrite", action="store_true", help="rewrite existing PNGs")
    labels.add_argument("--no-eval", action="store_true", help="do not score the labels against the ground truth")
    labels.add_argument("--no-progress", **progress)
    _add_crf_options(labels)
    labels.set_defaults(func=cmd_pseudo_labels)

    add_refine_command(commands)

    trainseg = commands.add_parser("train-seg", help="WSSS 4: train a segmentation network on the pseudo labels",
                                   description="Train a torchvision segmentation model on pseudo labels (255 ignored); "
                                               "checkpoints every epoch, --resume auto continues.")
    trainseg.add_argument("--config", help="YAML file of train-seg options; command-line options override it")
    _add_seg_options(trainseg)
    trainseg.set_defaults(func=cmd_train_seg)

    evalseg = commands.add_parser("eval-seg", help="WSSS 5: segmentation mIoU on the ground-truth split",
                                  description="Predict every image of a split (PNG per image; resumes), then the mIoU "
                                              "and per-class IoU of the saved predictions against the ground truth.")
    evalseg.add_argument("--checkpoint", required=True, help="train-seg checkpoint (last.pt)")
    evalseg.add_argument(*OUTPUT_FLAGS, dest="output", default=None,
                         help="output folder (default: CHECKPOINT_DIR/eval-SPLIT)")
    evalseg.add_argument("--split", default="val", help="ground-truth split (default: val)")
    evalseg.add_argument("--data-root", default=None, help="override the dataset directory")
    evalseg.add_argument("--limit", type=int, default=None, help="first N images only (generated worlds: draw N)")
    evalseg.add_argument("--scales", type=float, nargs="+", default=[1.0], help="inference scales, e.g. 0.5 1 1.5")
    evalseg.add_argument("--flip", action="store_true", help="also average the mirrored image")
    evalseg.add_argument("--base-size", default="native", help="size that scale 1 means: native (default), train "
                                                               "(the training crop, square) or N pixels")
    evalseg.add_argument("--overwrite", action="store_true", help="predict images whose PNG exists again")
    evalseg.add_argument("--device", default="auto", help="auto, cpu or cuda")
    evalseg.add_argument("--no-progress", **progress)
    _add_crf_options(evalseg)
    evalseg.set_defaults(func=cmd_eval_seg)
