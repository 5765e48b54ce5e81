"""The cascading randomisation check separates Grad-CAM of a trained model from an edge detector;
its Spearman similarity equals scipy's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gainet.evaluation.randomisation import (
    cascade_stages,
    cascading_randomisation,
    gradcam_explain,
    spearman_similarity,
)


def blob_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A red (class 0) or green (class 1) square anywhere on a noisy 24 px image."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = 0.3 * torch.randn(n, 3, 24, 24, generator=generator)
    for i in range(n):
        row, col = (int(v) for v in torch.randint(0, 18, (2,), generator=generator))
        images[i, int(labels[i]), row:row + 6, col:col + 6] += 2.0
    return images, labels


def trained_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("stem", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()))
    model.add_module("block", nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()))
    model.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    model.add_module("head", nn.Linear(16, 2))
    generator = torch.Generator().manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        images, labels = blob_images(32, generator)
        optimiser.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimiser.step()
    images, labels = blob_images(64, generator)
    assert (model(images).argmax(1) == labels).float().mean() > 0.9  # it did learn the task
    return model.eval()


def edge_detector(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the image: a map that ignores the model."""
    gray = images.mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])[None, None]
    magnitude = torch.hypot(F.conv2d(gray, kx, padding=1), F.conv2d(gray, kx.transpose(-1, -2), padding=1))[:, 0]
    flat = magnitude.flatten(1)
    return ((flat - flat.min(1, keepdim=True).values) / (flat.max(1, keepdim=True).values - flat.min(1, keepdim=True).values)).view_as(magnitude)


def test_randomisation_separates_gradcam_from_an_edge_detector() -> None:
    model = trained_model()
    images, labels = blob_images(8, torch.Generator().manual_seed(5))
    before = [p.clone() for p in model.parameters()]
    assert cascade_stages(model) == ["head", "block.2", "block.0", "stem.0"]
    cam = cascading_randomisation(model, images, labels, gradcam_explain("block.3"))
    edges = cascading_randomisation(model, images, labels, edge_detector)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the model itself is untouched
    assert edges.score > 0.999 and edges.ssim.min() > 0.999
    assert cam.score < 0.5, cam.curve
    assert [row["stage"] for row in cam.curve] == cam.stages and cam.spearman.shape == (4, 8)


def test_spearman_similarity_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 6, 7, generator=generator)
    reference = torch.rand(4, 6, 7, generator=generator)
    maps[0, :3] = 0.0  # ties, averaged
    reference[1] = torch.round(reference[1] * 3) / 3
    ours = spearman_similarity(maps, reference)
    expected = [stats.spearmanr(m.flatten().numpy(), r.flatten().numpy()).statistic for m, r in zip(maps, reference)]
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-6)  # torchmetrics ranks in float32
    assert float(spearman_similarity(torch.zeros(1, 4, 4), reference[:1, :4, :4])[0]) == 0.0  # constant: no order
