"""Input sizes a model can take, checked before use: an image side too small for a network's
strides and kernels is a one-line error naming the option and the smallest side that works,
instead of torch's "Calculated padded input size per channel" from deep inside a forward pass.

The smallest side is measured, not derived from strides (padding, pooling and architectures
gainet does not know all change it): forward passes of one zero image under ``torch.no_grad`` in
eval mode, doubling then bisecting, a dozen passes on tiny inputs at most; cached per
architecture (the model's class and parameter shapes), so a command that rebuilds the same model
probes once.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Sides searched for the smallest working one (beyond this nothing is looked for).
LARGEST_PROBED_SIZE = 4096
_SMALLEST: dict[tuple, int | None] = {}


def _architecture(model: nn.Module) -> tuple:
    """A key for ``model``'s architecture: its class and the names and shapes of its parameters."""
    return (type(model).__qualname__, tuple((name, tuple(p.shape)) for name, p in model.named_parameters()))


def _takes(model: nn.Module, size: int) -> bool:
    """Whether a forward pass of one ``size`` x ``size`` zero image runs."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    training = {module: module.training for module in model.modules()}
    model.eval()  # BatchNorm in training mode would refuse a 1x1 map of one image, and change its stats
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
        return True
    except RuntimeError:
        return False
    finally:
        for module, mode in training.items():
            module.training = mode


def smallest_input_size(model: nn.Module, start: int = 1) -> int | None:
    """The smallest square side ``>= start`` that ``model`` takes (``None``: none up to
    :data:`LARGEST_PROBED_SIZE`), assuming every larger side works too."""
    key = (_architecture(model), start)
    if key not in _SMALLEST:
        high = max(1, start)
        while high <= LARGEST_PROBED_SIZE and not _takes(model, high):
            high *= 2
        if high > LARGEST_PROBED_SIZE:
            _SMALLEST[key] = None
        else:
            low = max(start, high // 2)  # low fails (or is start); high works
            while low < high:
                middle = (low + high) // 2
                if _takes(model, middle):
                    high = middle
                else:
                    low = middle + 1
            _SMALLEST[key] = high
    return _SMALLEST[key]


def check_input_size(model: nn.Module, size: int, option: str = "--image-size", name: str | None = None) -> None:
    """Raise a one-line ``ValueError`` naming ``option`` when ``model`` cannot take ``size`` x ``size``
    inputs, with the smallest side it takes. One forward pass of one image when the size works."""
    if _takes(model, size):
        return
    smallest = smallest_input_size(model, start=1)
    described = name or type(model).__name__
    if smallest is None or smallest <= size:  # fails for another reason than the size: let it show
        return
    raise ValueError(f"{option} {size} is too small for {described}: the smallest input it takes is "
                     f"{smallest} x {smallest} pixels")
