"""Faithfulness metrics (deletion / insertion, ROAD) against float64 loops over images, pixels and
steps written independently here (a dense-looping sparse solve for ROAD's imputation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gainet.evaluation.faithfulness import (
    baseline_images,
    noisy_linear_impute,
    perturbation_curve,
    road,
    road_keep,
)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(24, 4)).eval()


def inputs(batch: int = 3, height: int = 10, width: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, height, width, generator=generator)
    maps = torch.rand(batch, height, width, generator=generator)
    maps[0, :3] = 0.25  # ties: the order must still be defined (row-major among equals)
    return images, maps, torch.tensor([0, 2, 3])[:batch]


def softmax_score(model: nn.Module, image: np.ndarray, cls: int) -> float:
    with torch.no_grad():
        logits = model(torch.from_numpy(image)[None]).double()[0].numpy()
    e = np.exp(logits - logits.max())
    return float(e[cls] / e.sum())


@pytest.mark.parametrize("mode,baseline", [("deletion", "zero"), ("deletion", "mean"), ("insertion", "blur")])
def test_perturbation_curve_matches_a_float64_loop(mode: str, baseline: str) -> None:
    model = small_model()
    images, maps, classes = inputs()
    steps = 5
    curve = perturbation_curve(model, images, maps, classes, mode=mode, steps=steps, baseline=baseline, batch_size=2)
    model64 = small_model().double()
    fill = baseline_images(images.double(), baseline).numpy() if baseline != "mean" else None
    for b in range(images.shape[0]):
        image = images[b].double().numpy()
        base = fill[b] if fill is not None else np.broadcast_to(image.mean(axis=(1, 2), keepdims=True), image.shape)
        values = maps[b].flatten().tolist()
        order = sorted(range(len(values)), key=lambda i: (-values[i], i))  # ties: row-major
        width = image.shape[2]
        expected = []
        for k in range(steps + 1):
            count = k * len(values) // steps
            out = base.copy() if mode == "insertion" else image.copy()
            for i in order[:count]:
                r, c = divmod(i, width)
                out[:, r, c] = image[:, r, c] if mode == "insertion" else base[:, r, c]
            expected.append(softmax_score(model64, out, int(classes[b])))
        np.testing.assert_allclose(curve.scores[b].numpy(), expected, atol=1e-5)
        xs = [k * len(values) // steps / len(values) for k in range(steps + 1)]
        area = sum((xs[i + 1] - xs[i]) * (expected[i] + expected[i + 1]) / 2 for i in range(steps))
        assert abs(float(curve.auc[b]) - area) < 1e-5


def test_context_deletion_keeps_the_remaining_pixels_and_changes_the_removed() -> None:
    model = small_model()
    images, maps, classes = inputs()
    curve = perturbation_curve(model, images, maps, classes, steps=4, baseline="context",
                               generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        intact = model(images).softmax(1).gather(1, classes[:, None])[:, 0].double()
    torch.testing.assert_close(curve.scores[:, 0], intact, atol=1e-6, rtol=0)
    assert not torch.allclose(curve.scores[:, 2], intact)
    with torch.no_grad():  # everything removed: nothing to fill from, the image is 0
        empty = model(torch.zeros_like(images)).softmax(1).gather(1, classes[:, None])[:, 0].double()
    torch.testing.assert_close(curve.scores[:, -1], empty, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="deletion only"):
        perturbation_curve(model, images, maps, classes, mode="insertion", baseline="context")


def reference_impute(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation, solved densely in float64: each removed pixel equals the weighted
    mean (1/6 edge, 1/12 diagonal, in-image neighbours only) of its neighbours."""
    height, width = keep.shape
    holes = [(i, j) for i in range(height) for j in range(width) if not keep[i, j]]
    index = {p: n for n, p in enumerate(holes)}
    a = np.zeros((len(holes), len(holes)))
    b = np.zeros((len(holes), image.shape[0]))
    for n, (i, j) in enumerate(holes):
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ii, jj = i + di, j + dj
                if (di, dj) == (0, 0) or not (0 <= ii < height and 0 <= jj < width):
                    continue
                w = 1 / 12 if di and dj else 1 / 6
                a[n, n] += w
                if keep[ii, jj]:
                    b[n] += w * image[:, ii, jj]
                else:
                    a[n, index[(ii, jj)]] -= w
    out = image.copy()
    if holes:
        solution = np.linalg.solve(a, b)
        for n, (i, j) in enumerate(holes):
            out[:, i, j] = solution[n]
    return out


def test_noisy_linear_imputation_matches_a_dense_solve() -> None:
    images, maps, _ = inputs(3, 14, 11)
    keep = torch.stack([road_keep(maps[:1], 20, "morf")[0], road_keep(maps[1:2], 70, "lerf")[0],
                        torch.rand(14, 11, generator=torch.Generator().manual_seed(3)) > 0.8])
    keep[2, :, 0] = False  # a hole along the border
    imputed, iterations = noisy_linear_impute(images.double(), keep, noise=0.0, tolerance=1e-10)
    assert iterations > 0
    for b in range(3):
        expected = reference_impute(images[b].double().numpy(), keep[b].numpy())
        np.testing.assert_allclose(imputed[b].numpy(), expected, atol=1e-8)
    # float32, default tolerance: within 1e-4 (ROAD's noise is 0.01)
    imputed32, _ = noisy_linear_impute(images, keep, noise=0.0)
    assert (imputed32.double() - imputed).abs().max() < 1e-4
    # an image large enough for multigrid levels (36 x 40 -> 18 x 20 -> 9 x 10), a blob-shaped hole
    big, big_maps, _ = inputs(1, 36, 40)
    rows, cols = torch.meshgrid(torch.arange(36.0), torch.arange(40.0), indexing="ij")
    big_keep = road_keep((-((rows - 12) ** 2 + (cols - 25) ** 2) / 80).exp()[None] + 0.01 * big_maps, 30, "morf")
    filled, _ = noisy_linear_impute(big.double(), big_keep, noise=0.0, tolerance=1e-10)
    np.testing.assert_allclose(filled[0].numpy(), reference_impute(big[0].double().numpy(), big_keep[0].numpy()), atol=1e-8)
    # the noise: N(0, noise^2) on the removed pixels only
    noisy, _ = noisy_linear_impute(images.double(), keep, noise=0.5, tolerance=1e-10,
                                   generator=torch.Generator().manual_seed(0))
    difference = noisy - imputed
    assert torch.equal(difference[keep[:, None].expand_as(difference)], torch.zeros(int(keep.sum()) * 3, dtype=torch.float64))
    removed = difference[(~keep)[:, None].expand_as(difference)]
    assert abs(float(removed.std()) - 0.5) < 0.05


def test_road_matches_a_float64_loop() -> None:
    model = small_model()
    images, maps, classes = inputs()
    percentiles = (20, 50, 80)
    result = road(model, images, maps, classes, percentiles=percentiles, noise=0.0, score="softmax",
                  tolerance=1e-7, batch_size=2)
    model64 = small_model().double()
    for b in range(images.shape[0]):
        image, values = images[b].double().numpy(), maps[b].double().numpy()
        intact = softmax_score(model64, image, int(classes[b]))
        for p_index, p in enumerate(percentiles):
            for order, got in (("morf", result.morf), ("lerf", result.lerf)):
                ranked = values if order == "morf" else 1.0 - values
                keep = ranked < np.percentile(ranked, p)
                score = softmax_score(model64, reference_impute(image, keep), int(classes[b]))
                assert abs(float(got[b, p_index]) - (score - intact)) < 1e-5, (b, p, order)
    torch.testing.assert_close(result.combined, (result.lerf.mean(1) - result.morf.mean(1)) / 2)


def test_road_matches_pytorch_grad_cam() -> None:
    """grad-cam 1.5.7's ROAD (its own imputer, noise off) on the same model, images and maps."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = small_model()
    images, maps, classes = inputs()
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    ours = road(model, images, maps, classes, percentiles=(30, 70), noise=0.0, score="logit", tolerance=1e-6)
    for index, p in enumerate((30, 70)):
        theirs = PerturbationConfidenceMetric(RemoveMostRelevantFirst(p, NoisyLinearImputer(noise=0.0)))(
            images, maps.numpy(), targets, model)
        np.testing.assert_allclose(ours.morf[:, index].numpy(), theirs, atol=1e-4)


def test_bad_input_is_refused_in_one_line() -> None:
    model = small_model()
    images, maps, classes = inputs()
    with pytest.raises(ValueError, match="maps must be"):
        perturbation_curve(model, images, maps[:, :5], classes)
    with pytest.raises(ValueError, match="baseline must be one of"):
        perturbation_curve(model, images, maps, classes, baseline="grey")
    with pytest.raises(ValueError, match="percentiles must lie"):
        road(model, images, maps, classes, percentiles=(0, 50))
    with pytest.raises(ValueError, match="score must be"):
        road(model, images, maps, classes, score="prob")
