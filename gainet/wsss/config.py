"""Settings of ``train-seg`` (no torch import: the CLI builds its options from them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SEG_MODELS = (
    "lraspp_mobilenet_v3_large",
    "deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "fcn_resnet50",
)


def _option(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class SegConfig:
    """Everything one ``train-seg`` run depends on (saved in every checkpoint)."""

    labels_dir: str = _option("", "pseudo-labels output folder (gainet pseudo-labels --output)")
    output_dir: str = _option("runs/seg", "where checkpoints and logs go")
    data_root: str | None = _option(None, "override the dataset directory recorded by the earlier stages")
    limit: int | None = _option(None, "train on the first N labelled images only (quick runs)")
    model: str = _option("lraspp_mobilenet_v3_large", "segmentation network", choices=SEG_MODELS)
    weights: str | None = _option(None, "local state-dict file of the whole segmentation model")
    weights_backbone: str | None = _option(None, "local state-dict file of the ImageNet backbone (torchvision "
                                           "resnet50/resnet101/mobilenet_v3_large layout); never downloaded")
    bn_momentum: float | None = _option(0.1, "BatchNorm momentum set on every BN layer (torchvision's "
                                        "MobileNetV3 uses 0.01, too slow for short runs)")
    crop_size: int | None = _option(None, "training crop side in pixels (default: the dataset's image_size)")
    crop_scale: list = _option([0.5, 1.0], "RandomResizedCrop area range (fraction of the image)")
    epochs: int = _option(10, "training epochs")
    batch_size: int = _option(16, "images per step")
    optimizer: str = _option("adamw", "sgd, adam or adamw", choices=("sgd", "adam", "adamw"))
    lr: float = _option(3e-3, "learning rate")
    momentum: float = _option(0.9, "SGD momentum")
    weight_decay: float = _option(1e-4, "weight decay")
    schedule: str = _option("poly", "per-step schedule: poly (DeepLab, power 0.9), cosine or constant",
                            choices=("poly", "cosine", "constant"))
    device: str = _option("auto", "auto, cpu, cuda or cuda:N")
    amp: str = _option("auto", "mixed precision on GPU: auto (bf16 where supported), bf16, fp16 or off",
                       choices=("auto", "bf16", "fp16", "off"))
    num_workers: int = _option(0, "data-loader worker processes")
    seed: int = _option(0, "random seed")
    threads: int | None = _option(None, "CPU threads for torch")
    resume: str | None = _option(None, "checkpoint to resume from, or 'auto' (output_dir/last.pt if present)")
    keep_epoch_checkpoints: bool = _option(False, "also keep epoch-N.pt for every epoch")
    progress: bool = _option(True, "show progress bars")

    def __post_init__(self) -> None:
        if self.model not in SEG_MODELS:
            raise ValueError(f"unknown segmentation model {self.model!r}; choose one of {', '.join(SEG_MODELS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be positive, got {self.epochs}, {self.batch_size}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be [low, high] with 0 < low <= high <= 1, got {self.crop_scale}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SegConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown train-seg config keys: {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> "SegConfig":
        return dataclasses.replace(self, **changes)
