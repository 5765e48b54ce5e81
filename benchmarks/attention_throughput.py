#!/usr/bin/env python
"""Attention maps per second of ``GAIN.explain`` against pytorch-grad-cam's ``GradCAM``.

Both explain the same model (identical weights, eval mode), the same images and the same target
class per image, and both return min-max normalised maps at input resolution:

* gainet: ``GAIN(model).explain(images, classes)``. For a global-average-pool + linear head (resnet18)
  the Grad-CAM weights have the closed form ``W_c / (h*w)`` (fast path: one forward pass, no
  backward); otherwise one ``torch.autograd.grad`` from the scores to the attention layer only.
  ``GAIN(model, fast_path=False)`` forces the autograd path; both are timed.
* pytorch-grad-cam: ``GradCAM(model, [layer])(images, [ClassifierOutputTarget(c), ...])``, which runs
  ``loss.backward()`` through the whole network (all parameter gradients too) and works in numpy/cv2.

Agreement (the largest absolute difference between the two maps, per model, over all batches):

(a) at feature resolution (target <= 1e-4): gainet's pieces with ``output_size=None``
    (``scores, feats = gain.backbone(x)``; ``gain.pair_attention(scores, feats, pairs, None)``) against
    pytorch-grad-cam's own pipeline without its resize (``get_cam_image`` -> ``np.maximum(., 0)`` ->
    ``scale_cam_image(cam)`` with no target size, exactly what ``compute_cam_per_layer`` does
    before resizing). Also the raw (un-normalised) maps, relative to their largest value.
(b) at input resolution: ``explain`` against ``GradCAM.__call__``. pytorch-grad-cam normalises at
    feature resolution and resizes with ``cv2.resize`` (``compute_cam_per_layer``), gainet resizes
    bilinearly (torch, ``align_corners=False``) and then normalises. Bilinear upsampling with
    half-pixel centres never samples the feature grid's centres exactly, so the upsampled map's
    interior maximum/minimum differ from the feature map's and the two orders disagree by ~1e-2
    (column "per-layer"). But pytorch-grad-cam 1.5.7 then min-max normalises *again* after the resize
    (``aggregate_multi_layers`` -> ``scale_cam_image``); min-max is affine and bilinear resizing is
    linear, so its final output equals normalise(resize(raw)), gainet's order, and the remaining
    difference is cv2 against torch bilinear (both half-pixel) plus epsilons: tiny.
    At feature resolution, in contrast, the epsilons differ (pytorch-grad-cam 1e-7 absolute,
    gainet 1e-12): a map whose un-normalised peak is p moves by up to ~1e-7 / p, and on a randomly
    initialised vgg11 peaks go down to 1e-4 - 1e-3 (column "min peak"), hence ~1e-4 - 1e-3. Column "eps 1e-7" repeats (a)
    with gainet's maps normalised with pytorch-grad-cam's epsilon to show that this is all of it.

Run ``python benchmarks/attention_throughput.py --help``. The defaults take about 40 s of CPU time
(1.2-1.5 min of wall time on a shared 2-core CPU).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import numpy as np
import torch

from gainet.core import GAIN, attention_maps, gradcam_weights, label_pairs, linear_head_weights, normalise_maps
from gainet.models import build_classifier

try:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
except ImportError as error:  # pragma: no cover - depends on the optional extra
    sys.exit(f"pytorch-grad-cam is needed: pip install 'gainet[bench]' ({error})")


GRADCAM_EPS = 1e-7  # pytorch_grad_cam.utils.image.scale_cam_image: img / (1e-7 + max(img))


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device):
    synchronise(device)
    start = time.perf_counter()
    result = function()
    synchronise(device)
    return time.perf_counter() - start, result


# ----------------------------------------------------------------------------- the two pipelines
def gradcam_at_feature_resolution(cam: GradCAM, images: torch.Tensor, targets: list) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-grad-cam's ``forward`` + ``compute_cam_per_layer`` for one layer, minus the resize.

    Returns the raw ReLU'd map and the min-max normalised map, both ``(B, h, w)`` at feature resolution.
    """
    outputs = cam.activations_and_grads(images)
    cam.model.zero_grad()
    loss = sum(target(output) for target, output in zip(targets, outputs))
    loss.backward(retain_graph=True)
    activations = cam.activations_and_grads.activations[0].cpu().numpy()
    gradients = cam.activations_and_grads.gradients[0].cpu().numpy()
    raw = cam.get_cam_image(images, cam.target_layers[0], targets, activations, gradients)
    raw = np.maximum(raw, 0)
    return raw, scale_cam_image(raw)  # no target_size: normalise only


def gainet_at_feature_resolution(gain: GAIN, images: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gainet's pieces with ``output_size=None``: raw and normalised maps ``(B, h, w)``."""
    pairs = label_pairs(classes)
    with torch.enable_grad(), gain.backbone.features_require_grad():
        scores, features = gain.backbone(images)
        normalised = gain.pair_attention(scores, features, pairs, None)
        if gain.backbone.linear_head is not None:
            weights = linear_head_weights(gain.backbone.linear_head.weight, pairs[:, 1], tuple(features.shape[-2:]))
        else:
            weights = gradcam_weights(scores, features, pairs)
        raw = attention_maps(features, weights, pairs[:, 0], None, normalise=False)
    return raw.detach(), normalised.detach()


def max_abs(a, b) -> float:
    a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a.cpu()).float()
    b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b.cpu()).float()
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------- one model
def bench_model(args: argparse.Namespace, name: str, device: torch.device) -> dict:
    torch.manual_seed(args.seed)
    base = build_classifier(name, args.classes).eval()
    generator = torch.Generator().manual_seed(args.seed)
    batches = [torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(device)
               for _ in range(args.batches)]
    classes = [torch.randint(0, args.classes, (args.batch,), generator=generator).to(device)
               for _ in range(args.batches)]

    # Separate copies with identical weights, so that no tool's hooks run inside the other's timing.
    gain = GAIN(copy.deepcopy(base), probe_size=args.size).to(device).eval()
    fast = gain.backbone.linear_head is not None
    gain_autograd = GAIN(copy.deepcopy(base), gain.backbone.layer_name, probe_size=args.size,
                         fast_path=False).to(device).eval() if fast else None
    cam_model = copy.deepcopy(base).to(device).eval()
    cam = GradCAM(model=cam_model, target_layers=[cam_model.get_submodule(gain.backbone.layer_name)])

    def run_gradcam(index: int) -> np.ndarray:
        targets = [ClassifierOutputTarget(int(c)) for c in classes[index]]
        return cam(input_tensor=batches[index], targets=targets)

    methods = {"pytorch-grad-cam": run_gradcam, "gainet": lambda i: gain.explain(batches[i], classes[i])[1]}
    if gain_autograd is not None:
        methods["gainet autograd"] = lambda i: gain_autograd.explain(batches[i], classes[i])[1]

    for function in methods.values():  # warm-up
        for _ in range(args.warmup):
            function(0)
    seconds = {key: [] for key in methods}
    for _ in range(args.rounds):
        round_time = dict.fromkeys(methods, 0.0)
        for index in range(args.batches):
            for key, function in methods.items():  # interleaved: load from other processes hits all alike
                elapsed, _ = timed(lambda: function(index), device)
                round_time[key] += elapsed
        for key in methods:
            seconds[key].append(round_time[key])
    maps_per_round = args.batch * args.batches
    rate = {key: maps_per_round / statistics.median(values) for key, values in seconds.items()}

    # Agreement, outside the timing.
    diff = {"feature": 0.0, "same_eps": 0.0, "raw_rel": 0.0, "input": 0.0, "per_layer": 0.0, "fast_vs_autograd": 0.0}
    feature_size, smallest_peak = None, float("inf")
    for index in range(args.batches):
        raw_g, norm_g = gainet_at_feature_resolution(gain, batches[index], classes[index])
        targets = [ClassifierOutputTarget(int(c)) for c in classes[index]]
        raw_p, norm_p = gradcam_at_feature_resolution(cam, batches[index], targets)
        feature_size = tuple(norm_g.shape[-2:])
        diff["feature"] = max(diff["feature"], max_abs(norm_g, norm_p))
        diff["same_eps"] = max(diff["same_eps"], max_abs(normalise_maps(raw_g, eps=GRADCAM_EPS), norm_p))
        scale = float(np.abs(raw_p).max()) or 1.0
        peaks = raw_p.reshape(len(raw_p), -1).max(axis=1)
        if (peaks > 0).any():
            smallest_peak = min(smallest_peak, float(peaks[peaks > 0].min()))
        diff["raw_rel"] = max(diff["raw_rel"], max_abs(raw_g, raw_p) / scale)
        explained = gain.explain(batches[index], classes[index])[1]
        diff["input"] = max(diff["input"], max_abs(explained, run_gradcam(index)))
        # pytorch-grad-cam's per-layer map: normalised at feature resolution, then cv2-resized, before
        # aggregate_multi_layers normalises again (what compute_cam_per_layer returns).
        per_layer = scale_cam_image(raw_p, cam.get_target_width_height(batches[index]))
        diff["per_layer"] = max(diff["per_layer"], max_abs(explained, per_layer))
        if gain_autograd is not None:
            other = gain_autograd.explain(batches[index], classes[index])[1]
            diff["fast_vs_autograd"] = max(diff["fast_vs_autograd"], max_abs(explained, other))
    return {"name": name, "layer": gain.backbone.layer_name, "fast": fast, "rate": rate, "diff": diff,
            "feature_size": feature_size, "smallest_peak": smallest_peak}


# ----------------------------------------------------------------------------- report
def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Attention maps per second: GAIN.explain vs pytorch-grad-cam GradCAM, and their difference.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--models", default="resnet18,vgg11",
                        help="comma-separated gainet.models.build_classifier names (random weights)")
    parser.add_argument("--size", type=int, default=112, help="input side in pixels")
    parser.add_argument("--batch", type=int, default=8, help="images per batch")
    parser.add_argument("--batches", type=int, default=3, help="batches per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the median round is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per method before timing")
    parser.add_argument("--classes", type=int, default=20, help="number of classes C")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU)")
    parser.add_argument("--speed-target", type=float, default=3.0, help="target: gainet maps/s >= this x pytorch-grad-cam")
    parser.add_argument("--diff-target", type=float, default=1e-4, help="target: max |difference| at feature resolution")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    torch.set_num_threads(args.threads)
    results = [bench_model(args, name.strip(), device) for name in args.models.split(",") if name.strip()]

    print(f"Attention maps per second, GAIN.explain vs pytorch-grad-cam GradCAM  (device {args.device}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads() if device.type == 'cpu' else '-'})")
    print(f"random weights, eval mode, {args.size} px, batch {args.batch}, {args.batches} batches x {args.rounds} "
          f"interleaved rounds (median round) after {args.warmup} warm-up call(s); one random target class per image; "
          "maps returned normalised at input resolution by both")
    print()
    header = (f"{'model':<9} {'layer':<12} {'grid':>5} {'grad-cam/s':>10} {'gainet/s':>9} {'speed-up':>8} "
              f"{'target':>7} {'':>4}  {'autograd/s':>10} {'fast/autograd':>13}")
    print(header)
    print("-" * len(header))
    for result in results:
        rate = result["rate"]
        speedup = rate["gainet"] / rate["pytorch-grad-cam"]
        grid = "x".join(map(str, result["feature_size"]))
        autograd = f"{rate['gainet autograd']:>10.1f} {rate['gainet'] / rate['gainet autograd']:>12.2f}x" \
            if result["fast"] else f"{'n/a':>10} {'(no GAP+fc)':>13}"
        print(f"{result['name']:<9} {result['layer']:<12} {grid:>5} {rate['pytorch-grad-cam']:>10.1f} "
              f"{rate['gainet']:>9.1f} {speedup:>7.2f}x {'>=' + format(args.speed_target, 'g') + 'x':>7} "
              f"{verdict(speedup >= args.speed_target):>4}  {autograd}")
    print()
    header = (f"{'model':<9} {'min peak':>8} {'feature-res max|d|':>18} {'target':>8} {'':>4} {'eps 1e-7':>9} "
              f"{'raw |d|/max':>11} {'input-res max|d|':>16} {'per-layer':>9} {'fast vs autograd':>16}")
    print(header)
    print("-" * len(header))
    for result in results:
        diff = result["diff"]
        fast = f"{diff['fast_vs_autograd']:>16.2e}" if result["fast"] else f"{'n/a':>16}"
        print(f"{result['name']:<9} {result['smallest_peak']:>8.1e} {diff['feature']:>18.2e} "
              f"{'<=' + format(args.diff_target, 'g'):>8} {verdict(diff['feature'] <= args.diff_target):>4} "
              f"{diff['same_eps']:>9.2e} {diff['raw_rel']:>11.2e} {diff['input']:>16.2e} {diff['per_layer']:>9.2e} {fast}")
    print(
        "\ncolumns: grid = attention layer's feature map; speed-up = gainet maps/s / pytorch-grad-cam maps/s;\n"
        "autograd/s = GAIN(model, fast_path=False).explain (only where the fast path applies: GAP + linear head);\n"
        "min peak = smallest per-map maximum of the un-normalised Grad-CAM maps (all-zero maps left out); feature-res = both min-max normalised at feature resolution "
        "(gainet output_size=None, eps 1e-12;\n"
        "grad-cam scale_cam_image without target size, eps 1e-7); eps 1e-7 = the same with gainet's raw maps "
        "normalised with grad-cam's eps;\n"
        "raw |d|/max = un-normalised maps, max difference / largest raw value; input-res = explain() vs GradCAM() (both "
        "normalise after resizing: grad-cam re-normalises);\n"
        "per-layer = explain() vs grad-cam's per-layer map (normalised at feature resolution, then cv2-resized, "
        "before that re-normalisation)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
