"""Grad-CAM with pytorch-grad-cam's calling convention whose maps stay in the autograd graph.

``pytorch-grad-cam`` (``grad-cam`` on PyPI) returns numpy maps, so they cannot sit in a loss.
:class:`TrainableGradCAM` takes the same arguments and targets and returns a ``(B, H, W)`` tensor
that is a differentiable function of the target layers' activations (the Grad-CAM weights are
constants, as in Grad-CAM and GAIN), so a training loss can use the maps and the classifier's
logits of the same forward pass (:attr:`TrainableGradCAM.outputs`)::

    from gainet.compat.grad_cam import TrainableGradCAM

    cam = TrainableGradCAM(model, target_layers=[model.layer4[-1]])
    maps = cam(images, targets)                       # (B, H, W), in [0, 1], in the graph
    loss = F.cross_entropy(cam.outputs, labels) + 0.1 * maps.mean()
    loss.backward()

Same numbers as pytorch-grad-cam's ``GradCAM`` (tests/test_compat_grad_cam.py compares them):
per layer ``ReLU(sum_k w_k A_k)`` with ``w_k`` the spatial mean of the target's gradient, min-max
normalised (epsilon 1e-7) and resized bilinearly to the input size; layers averaged, and
normalised again. The weighted sum is gainet's own (:func:`gainet.core.attention.attention_maps`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gainet.core.attention import attention_maps, normalise_maps

# pytorch-grad-cam's normalisation epsilon; kept so that the maps are theirs to 1e-5.
GRAD_CAM_EPS = 1e-7


class _TopClass:
    """Target of the top-scoring class of one image (``targets=None``)."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, model_output: Tensor) -> Tensor:
        return model_output[..., self.category]


class TrainableGradCAM:
    """pytorch-grad-cam's ``GradCAM(model, target_layers, reshape_transform)``, differentiable.

    Args:
        model: the classifier; used in its current train/eval mode (pytorch-grad-cam switches it
            to eval mode, a training loop must not be changed behind its back).
        target_layers: modules whose outputs ``(B, K, h, w)`` are the features; maps of several
            layers are averaged.
        reshape_transform: maps a layer's output to ``(B, K, h, w)`` (e.g. for vision
            transformers), applied to activations and gradients alike.
        create_graph: also differentiate through the Grad-CAM weights (second order); ``False``
            treats them as constants, as Grad-CAM and GAIN do.

    Call ``cam(input_tensor, targets)``: ``targets`` is one callable per image taking that
    image's model output ``(K,)`` and returning a scalar (pytorch-grad-cam's
    ``ClassifierOutputTarget(c)`` and the like), or ``None`` for each image's top class. Returns
    ``(B, H, W)`` maps in [0, 1] at the input's size; the model's output of that forward pass is
    :attr:`outputs` (in the graph, for the classification loss).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        *,
        create_graph: bool = False,
    ) -> None:
        if isinstance(target_layers, nn.Module) or not len(target_layers):
            raise ValueError("target_layers must be a non-empty list of modules (e.g. [model.layer4[-1]])")
        self.model = model
        self.target_layers = list(target_layers)
        self.reshape_transform = reshape_transform
        self.create_graph = create_graph
        self.outputs: Tensor | None = None
        self._activations: dict[int, Tensor] = {}
        self._handles = [layer.register_forward_hook(self._keep(index)) for index, layer in enumerate(self.target_layers)]

    def _keep(self, index: int) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            self._activations[index] = output
        return hook

    def __call__(self, input_tensor: Tensor, targets: Sequence[Callable[[Tensor], Tensor]] | None = None,
                 aug_smooth: bool = False, eigen_smooth: bool = False) -> Tensor:
        if aug_smooth or eigen_smooth:
            raise ValueError("TrainableGradCAM supports neither aug_smooth nor eigen_smooth")
        if input_tensor.dim() != 4:
            raise ValueError(f"input_tensor must be (B, C, H, W), got {tuple(input_tensor.shape)}")
        self._activations.clear()
        with torch.enable_grad():
            outputs = self.model(input_tensor)
            self.outputs = outputs
            missing = [i for i in range(len(self.target_layers)) if i not in self._activations]
            if missing:
                raise ValueError(f"target layer {missing[0]} ({type(self.target_layers[missing[0]]).__name__}) "
                                 "did not run in the model's forward pass")
            if targets is None:
                targets = [_TopClass(int(c)) for c in outputs.detach().argmax(dim=-1)]
            if len(targets) != outputs.shape[0]:
                raise ValueError(f"{len(targets)} targets for a batch of {outputs.shape[0]} images")
            activations = [self._activations[i] for i in range(len(self.target_layers))]
            if not all(a.requires_grad for a in activations):
                raise ValueError("the target layers' outputs do not require grad (frozen model under no_grad?)")
            # Each image's target reads only its own output row, so one summed score gives every
            # image its own gradient (the images must not interact after the target layers).
            loss = sum(target(output) for target, output in zip(targets, outputs))
            gradients = torch.autograd.grad(loss, activations, retain_graph=True, create_graph=self.create_graph)
            size = tuple(input_tensor.shape[-2:])
            per_layer = [self._layer_map(a, g, size) for a, g in zip(activations, gradients)]
        self._activations.clear()
        mean = torch.stack(per_layer).clamp_min(0).mean(dim=0)
        return normalise_maps(mean, eps=GRAD_CAM_EPS)

    def _layer_map(self, activation: Tensor, gradient: Tensor, size: tuple[int, int]) -> Tensor:
        """``(B, H, W)`` normalised map of one layer: ReLU of the weighted sum at the layer's
        size, min-max normalised there, then resized (pytorch-grad-cam's order)."""
        if self.reshape_transform is not None:
            activation, gradient = self.reshape_transform(activation), self.reshape_transform(gradient)
        if activation.dim() != 4:
            raise ValueError(f"a target layer's output must be (B, K, h, w), got {tuple(activation.shape)}; "
                             "pass a reshape_transform")
        weights = gradient.float().mean(dim=(-2, -1))
        batch = torch.arange(activation.shape[0], device=activation.device)
        maps = attention_maps(activation, weights, batch, None, normalise=False)
        maps = normalise_maps(maps, eps=GRAD_CAM_EPS)
        return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]

    def release(self) -> None:
        """Remove the hooks from the target layers."""
        for handle in getattr(self, "_handles", ()):  # absent when __init__ refused its arguments
            handle.remove()
        self._handles = []

    def __enter__(self) -> "TrainableGradCAM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()
