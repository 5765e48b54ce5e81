"""Faithfulness metrics: gainet's batched versions against the reference implementations, same model,
images and maps; values and wall time side by side.

- deletion curve: gainet.evaluation.faithfulness.perturbation_curve vs Quantus 0.6.0's PixelFlipping
  (zero baseline, softmax scores, the same number of steps);
- ROAD (MoRF and LeRF, percentiles 10..90): vs pytorch-grad-cam 1.5.7's ROAD metrics (its own sparse
  direct imputation); values with the imputation noise off (noise draws differ), times with it on;
  also the time of Quantus's ROAD (MoRF only, 9 percentages; it reports accuracy, not score changes).

Model: torchvision resnet18 with seeded random weights (nothing may be downloaded), eval mode, 1000
classes; images: seeded smooth noise at 224 px; maps: Grad-CAM of layer4 (TrainableGradCAM) of each
image's top class, with ties broken by a 1e-6-scale seeded jitter so that both sides' pixel orders are
defined (Quantus sorts with an unstable argsort).

Quantus pulls opencv-python, which clashes with the project's opencv-python-headless: install it in a
separate environment that sees the project's (e.g. a venv with a .pth file naming .venv's
site-packages), then: python benchmarks/faithfulness.py --images 64 --threads 2

Reference runs are slow (grad-cam solves one sparse system per image and percentile): --reference-images
caps the images they see; gainet's times are for the same subset and for all --images.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torchvision

from gainet.compat.grad_cam import TrainableGradCAM
from gainet.evaluation.faithfulness import perturbation_curve, road

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--reference-images", type=int, default=8, help="images given to the slow reference runs")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=16, help="deletion steps (must divide size * size)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=("quantus", "gradcam"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} images={args.images} reference_images={args.reference_images} size={args.size} "
          f"steps={args.steps} load_average={os.getloadavg()}")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(args.images, 3, args.size + 8, args.size + 8, generator=generator)
    images = torch.nn.functional.avg_pool2d(noise, 9, stride=1) * 3.0
    with TrainableGradCAM(model, [model.layer4[-1]]) as cam:
        maps = torch.cat([cam(images[i:i + 16], None).detach() for i in range(0, args.images, 16)])
    maps = maps + 1e-6 * torch.rand(maps.shape, generator=generator)
    with torch.no_grad():
        classes = torch.cat([model(images[i:i + 16]).argmax(1) for i in range(0, args.images, 16)])
    n = min(args.reference_images, args.images)
    pixels = args.size * args.size
    if pixels % args.steps:
        raise SystemExit(f"--steps {args.steps} must divide {pixels} so that both sides remove the same pixels")

    # ---------------------------------------------------------------- deletion
    ours_all, t_all = timed(perturbation_curve, model, images, maps, classes, steps=args.steps, baseline="zero")
    ours, t_sub = timed(perturbation_curve, model, images[:n], maps[:n], classes[:n], steps=args.steps,
                        baseline="zero")
    print(f"deletion  gainet: {t_all:.1f} s for {args.images} images, {t_sub:.1f} s for {n}; "
          f"mean AUC {float(ours_all.auc.mean()):.6f}")
    if "quantus" not in args.skip:
        import quantus

        # Quantus flattens the map broadcast over the channels and removes features_in_step channel
        # values per step, but requires it to divide H * W: with H * W / steps per step its step 3k
        # has removed the 3 channels of the same k * H * W / steps pixels as gainet's step k (the map
        # has no ties, so each pixel's three channel values are consecutive in its order), at the
        # cost of 3x the forward passes.
        metric = quantus.PixelFlipping(features_in_step=pixels // args.steps, perturb_baseline=0.0, normalise=False,
                                       abs=False, disable_warnings=True, display_progressbar=False)
        theirs, t_q = timed(metric, model=model, x_batch=images[:n].numpy(), y_batch=classes[:n].numpy(),
                            a_batch=maps[:n, None].numpy(), device="cpu", batch_size=64, softmax=True)
        theirs = np.asarray(theirs)[:, 2::3]  # after 3k channel steps = k pixel steps
        difference = np.abs(ours.scores[:, 1:].numpy() - theirs).max()
        print(f"deletion  quantus PixelFlipping: {t_q:.1f} s for {n} images ({3 * args.steps} forward passes each, "
              f"gainet {args.steps + 1}); max |score difference| over {theirs.size} matching curve points "
              f"{difference:.2e} (scores of scale {float(ours.scores.mean()):.2e}); speed-up on the same images "
              f"{t_q / t_sub:.1f}x")

    # ---------------------------------------------------------------- ROAD
    generator = torch.Generator().manual_seed(0)
    ours_road_all, t_all = timed(road, model, images, maps, classes, score="logit", generator=generator)
    print(f"ROAD      gainet (noise 0.01): {t_all:.1f} s for {args.images} images; morf {float(ours_road_all.morf_mean.mean()):.4f} "
          f"lerf {float(ours_road_all.lerf_mean.mean()):.4f} combined {float(ours_road_all.combined.mean()):.4f}")
    quiet, t_sub = timed(road, model, images[:n], maps[:n], classes[:n], score="logit", noise=0.0)
    print(f"ROAD      gainet (noise 0): {t_sub:.1f} s for {n} images")
    if "gradcam" not in args.skip:
        from pytorch_grad_cam.metrics.perturbation_confidence import (
            PerturbationConfidenceMetric,
            RemoveLeastRelevantFirst,
            RemoveMostRelevantFirst,
        )
        from pytorch_grad_cam.metrics.road import NoisyLinearImputer
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(int(c)) for c in classes[:n]]
        start = time.perf_counter()
        columns = {"morf": [], "lerf": []}
        for order, removal in (("morf", RemoveMostRelevantFirst), ("lerf", RemoveLeastRelevantFirst)):
            for p in PERCENTILES:
                metric = PerturbationConfidenceMetric(removal(p, NoisyLinearImputer(noise=0.0)))
                columns[order].append(metric(images[:n], maps[:n].numpy(), targets, model))
        t_g = time.perf_counter() - start
        for order in ("morf", "lerf"):
            theirs = np.stack(columns[order], axis=1)
            mine = getattr(quiet, order).numpy()
            print(f"ROAD {order}  grad-cam vs gainet (noise 0): max |score change difference| "
                  f"{np.abs(theirs - mine).max():.2e} (logits of scale {np.abs(theirs).mean():.2f})")
        print(f"ROAD      grad-cam: {t_g:.1f} s for {n} images (MoRF + LeRF); speed-up {t_g / t_sub:.1f}x")
    if "quantus" not in args.skip:
        import quantus

        metric = quantus.ROAD(percentages=list(PERCENTILES), noise=0.01, disable_warnings=True,
                              display_progressbar=False)
        try:
            _, t_q = timed(metric, model=model, x_batch=images[:n].numpy(), y_batch=classes[:n].numpy(),
                           a_batch=maps[:n, None].numpy(), device="cpu", batch_size=64, softmax=True)
            print(f"ROAD      quantus (MoRF only): {t_q:.1f} s for {n} images; gainet MoRF+LeRF {t_sub:.1f} s; "
                  f"speed-up {2 * t_q / t_sub:.1f}x per direction")
        except Exception as error:  # report, do not hide
            print(f"ROAD      quantus failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")


if __name__ == "__main__":
    main()
