"""TrainableGradCAM: pytorch-grad-cam's interface and numbers (grad-cam 1.5.7, the `bench` extra;
skipped when absent), with maps that a loss can differentiate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from gainet.compat.grad_cam import TrainableGradCAM


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


def test_maps_equal_pytorch_grad_cam() -> None:
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    model = resnet()
    images = torch.randn(3, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    cases = [([model.layer4[-1]], None),
             ([model.layer3[-1], model.layer4[-1]],
              [ClassifierOutputTarget(1), ClassifierOutputSoftmaxTarget(2), ClassifierOutputTarget(4)])]
    for layers, targets in cases:
        theirs = GradCAM(model, layers)(images, targets)
        with TrainableGradCAM(model, layers) as cam:
            ours = cam(images, targets)
        assert ours.shape == (3, 64, 80) and ours.requires_grad
        np.testing.assert_allclose(ours.detach().numpy(), theirs, atol=1e-5)


def test_maps_are_in_the_graph_of_a_training_loss() -> None:
    model = resnet().train()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    cam = TrainableGradCAM(model, target_layers=[model.layer4[-1]])
    maps = cam(images, None)
    assert cam.outputs is not None and cam.outputs.shape == (2, 5)
    # None targets = each image's top class: the same maps as naming those classes
    top = [lambda out, c=int(c): out[c] for c in cam.outputs.argmax(1)]
    torch.testing.assert_close(cam(images, top), maps)
    model.zero_grad()
    loss = nn.functional.cross_entropy(cam.outputs, torch.tensor([0, 3])) + maps[:, :32].mean()
    loss.backward()
    # the map term reaches the layers before the target layer (through the activations)
    map_only = TrainableGradCAM(model, [model.layer4[-1]])
    model.zero_grad()
    map_only(images, None)[:, :32].mean().backward()
    assert model.layer3[0].conv1.weight.grad.abs().sum() > 0
    assert model.fc.weight.grad is None or model.fc.weight.grad.abs().sum() == 0  # weights are constants
    cam.release(), map_only.release()


def test_bad_input_is_refused_in_one_line() -> None:
    model = resnet()
    with pytest.raises(ValueError, match="non-empty list"):
        TrainableGradCAM(model, model.layer4)
    cam = TrainableGradCAM(model, [nn.Conv2d(1, 1, 1)])
    with pytest.raises(ValueError, match="did not run"):
        cam(torch.randn(1, 3, 32, 32))
    cam = TrainableGradCAM(model, [model.layer4[-1]])
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        cam(torch.randn(1, 3, 32, 32), [lambda o: o[0], lambda o: o[1]])
    with pytest.raises(ValueError, match="aug_smooth"):
        cam(torch.randn(1, 3, 32, 32), None, aug_smooth=True)
