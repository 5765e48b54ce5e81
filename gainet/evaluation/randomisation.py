"""The model-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018), cascading form.

The model's layers are re-initialised one stage at a time from the output down (the head first,
then the last block, ...), keeping the earlier randomisations, and the maps of the same images
and classes are recomputed after each stage. A map that explains what the model learned must
change as its weights are destroyed; one that barely changes (an edge detector, or a method
that mostly reflects the input) is not evidence of what the model learned. Similarity to the
trained model's map: Spearman rank correlation (ties averaged; a constant map shares no order
and scores 0) and SSIM (maps in [0, 1]), per image, then averaged.

One number: ``score``, the mean Spearman similarity over the cascade's stages, in [-1, 1]; low
is what a model-dependent map gives, an edge detector scores 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from gainet.io.progress import progress_bar

# (model, images (B, C, H, W), classes (B,)) -> maps (B, H, W) in [0, 1]
Explain = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def cascade_stages(model: nn.Module) -> list[str]:
    """Names of the modules randomised in turn, output side first.

    The model's children that hold parameters, in reverse registration order (for torchvision
    and timm classifiers that is the head, then the last block, down to the stem); a child that
    is a container (``nn.Sequential`` / ``nn.ModuleList``) is split into its own children, so a
    ResNet's stages go block by block.
    """
    stages: list[str] = []
    for name, child in model.named_children():
        if not _has_parameters(child):
            continue
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            stages += [f"{name}.{sub}" for sub, grandchild in child.named_children() if _has_parameters(grandchild)]
        else:
            stages.append(name)
    if not stages:
        raise ValueError("the model has no parameters to randomise")
    return stages[::-1]


def _reinitialise(module: nn.Module, generator_seed: int) -> None:
    """Fresh initial values for every parameter of ``module`` (each layer's own
    ``reset_parameters``, drawn under a forked RNG so the caller's random state is untouched);
    layers without one get their parameters drawn from N(0, 0.01)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        for sub in module.modules():
            own = list(sub.parameters(recurse=False))
            if not own:
                continue
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
            else:
                with torch.no_grad():
                    for parameter in own:
                        parameter.normal_(0.0, 0.01)


def spearman_similarity(maps: Tensor, reference: Tensor) -> Tensor:
    """``(B,)`` Spearman rank correlation of each map with its reference, both ``(B, H, W)``
    (torchmetrics: ties get their average rank; a constant map gives 0)."""
    from torchmetrics.functional import spearman_corrcoef

    if maps.shape != reference.shape or maps.dim() != 3:
        raise ValueError(f"maps {tuple(maps.shape)} and reference {tuple(reference.shape)} must both be (B, H, W)")
    import warnings

    with warnings.catch_warnings():  # torchmetrics warns about constant maps, scored 0 as documented
        warnings.simplefilter("ignore")
        value = spearman_corrcoef(maps.flatten(1).T.double(), reference.flatten(1).T.double())
    return torch.nan_to_num(value.reshape(-1), nan=0.0)


def ssim_similarity(maps: Tensor, reference: Tensor) -> Tensor:
    """``(B,)`` SSIM of each map with its reference, both ``(B, H, W)`` in [0, 1] (torchmetrics,
    Gaussian window 11, data range 1)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    value = structural_similarity_index_measure(maps[:, None].double(), reference[:, None].double(),
                                                data_range=1.0, reduction="none")
    return value.reshape(-1)


@dataclass
class RandomisationResult:
    """The cascade's similarities.

    Attributes:
        stages: the randomised modules, in order (stage ``i`` = stages ``0..i`` randomised).
        spearman, ssim: ``(S, B)`` float64 similarity of each image's map after stage ``i`` to
            its trained-model map.
    """

    stages: list[str]
    spearman: Tensor
    ssim: Tensor

    @property
    def curve(self) -> list[dict[str, float | str]]:
        """One row per stage: its name and the mean similarities over the images."""
        return [{"stage": name, "spearman": float(s.mean()), "ssim": float(q.mean())}
                for name, s, q in zip(self.stages, self.spearman, self.ssim)]

    @property
    def score(self) -> float:
        """Mean Spearman similarity over stages and images (low = the maps depend on the model)."""
        return float(self.spearman.mean())


def cascading_randomisation(
    model: nn.Module,
    images: Tensor,
    classes: Tensor,
    explain: Explain,
    *,
    stages: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> RandomisationResult:
    """Run the cascade on ``model`` in place; its parameters and buffers are restored afterwards
    (a deep copy is not possible for every model: hooks of wrappers such as GAIN hold tensors).

    Args:
        model: the trained classifier.
        images: ``(B, C, H, W)`` in its input space.
        classes: ``(B,)`` long, the class explained on each image (the same at every stage).
        explain: ``(model, images, classes) -> (B, H, W)`` maps in [0, 1]; called with the
            trained model first, then with each randomised copy.
        stages: module names to randomise in turn (default :func:`cascade_stages`).
        seed: seeds the re-initialisation (stage ``i`` uses ``seed + i``).
        progress: progress bar over the stages.
    """
    stages = list(stages) if stages is not None else cascade_stages(model)
    modules = dict(model.named_modules())
    unknown = [name for name in stages if name not in modules]
    if unknown:
        raise ValueError(f"unknown module {unknown[0]!r} in the randomisation stages")
    reference = explain(model, images, classes).detach().double()
    trained = {key: value.detach().clone() for key, value in model.state_dict().items()}
    spearman, ssim = [], []
    try:
        for index, name in enumerate(progress_bar(stages, enabled=progress, desc="randomise", leave=False)):
            _reinitialise(modules[name], seed + index)
            maps = explain(model, images, classes).detach().double()
            spearman.append(spearman_similarity(maps, reference))
            ssim.append(ssim_similarity(maps, reference))
    finally:
        with torch.no_grad():
            model.load_state_dict(trained)
    return RandomisationResult(stages, torch.stack(spearman), torch.stack(ssim))


def gradcam_explain(layer: str) -> Explain:
    """An :data:`Explain` computing Grad-CAM at the module named ``layer`` of whichever model it
    is given (so it follows the randomised copy), via :class:`gainet.compat.grad_cam.TrainableGradCAM`."""
    from gainet.compat.grad_cam import TrainableGradCAM

    def explain(model: nn.Module, images: Tensor, classes: Tensor) -> Tensor:
        modules = dict(model.named_modules())
        if layer not in modules:
            raise ValueError(f"unknown attention layer {layer!r}")
        with TrainableGradCAM(model, [modules[layer]]) as cam:
            targets = [_ClassTarget(int(c)) for c in classes]
            return cam(images, targets).detach()

    return explain


class _ClassTarget:
    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, output: Tensor) -> Tensor:
        return output[..., self.category]
