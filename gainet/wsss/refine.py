"""Stage 1b, between ``make-cams`` and ``pseudo-labels``: refine the seeds with affinities
(``gainet refine-cams``).

Two methods (numerics in :mod:`gainet.wsss.affinity`):

- ``par``: training-free pixel-adaptive refinement on the image's colours and positions, at the
  image's native resolution.
- ``affinity``: AffinityNet / IRN style. An inter-pixel affinity head (:class:`AffinityHead`) on
  the frozen features of the classifier's own backbone (stride 4, 8 and 16 of the same weights) is
  trained from the seeds: pixels whose strongest map exceeds ``conf_fg`` are that class, pixels
  below ``conf_bg`` background, the rest unsure; pairs within ``radius`` with the same label are
  trained to affinity 1, with different labels to 0, pairs with an unsure pixel ignored. With
  ``label_crf`` the labels are IRN's (``cam_to_ir_label``): the segmentation at ``conf_fg`` and the
  one at ``conf_bg`` each refined by a dense CRF on the image, foreground where the first says so,
  background where both say so, unsure elsewhere. Then each image's maps, downsampled to the
  features' stride-4 grid (of the classifier's square input, or with ``walk_base_size`` "native"
  of the image at its own size and aspect, as IRN walks), are propagated by a random walk on the predicted affinities (``beta``,
  ``iterations``) and resized back to native size. With ``background_power`` a > 0 the walk
  carries AffinityNet's background map ``(1 - max_k M_k)^a`` beside them and each output map is
  ``walked M_k / (walked M_k + walked background)`` (0.5 = the argmax of the walked maps); with 0
  the foreground maps walk alone and are written as ``walk_normalise`` says: ``minmax`` each map
  min-max normalised (the default), ``max`` divided by the image's largest walked value (IRN's
  ``rw_up / max(rw_up)``, classes keep their relative strength), ``none`` as walked.

The output folder is a ``make-cams`` folder (``meta.json`` with ``stage: cams`` plus the
``refinement`` and its ``source``; ``cams/<image_id>.npy``, every map in [0, 1]: min-max
normalised again unless ``walk_normalise`` says otherwise, or the ratio against the walked
background with ``background_power``), so
``eval-cams`` and ``pseudo-labels`` read it unchanged. One file per image, atomically; existing
files are skipped (resume), a folder made with other settings or from other seeds is refused
unless ``overwrite``. The trained head is ``affinity.pt`` in the output folder
(reused when its settings match).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gainet.core import normalise_maps
from gainet.io.progress import progress_bar
from gainet.wsss import data as io
from gainet.wsss.affinity import (affinity_loss, background_scores, disc_offsets, feature_affinity, pair_labels,
                                  par_refine, random_walk)
from gainet.wsss.cams import CAMS_DIR, CAMS_STAGE, EVAL_CAMS_JSON, parse_base_size, require_complete, to_input
from gainet.wsss.crf import INSTALL_HINT, CRFParams, crf_available
from gainet.wsss.pseudo_labels import pseudo_label

logger = logging.getLogger(__name__)

METHODS = ("par", "affinity")
# how the walked class maps are written when no background map walks with them
WALK_NORMALISATIONS = ("minmax", "max", "none")
AFFINITY_FILE = "affinity.pt"
# settings of the random walk alone: they do not change the trained affinity head
WALK_SETTINGS = ("iterations", "beta", "walk_radius", "background_power", "walk_normalise", "walk_base_size")
# Backbone layers of the affinity head, by stride, per model family (the stride-16 names are
# gainet.models.ATTENTION_LAYERS', the vocabulary of gainet train --attention-layer).
FEATURE_LAYERS: dict[str, dict[str, str]] = {
    "efficientnet-lite0": {"stride4": "_blocks.2", "stride8": "_blocks.4", "stride16": "_blocks.10"},
    **{name: {"stride4": "layer1", "stride8": "layer2", "stride16": "layer3"}
       for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")},
    "small-cnn": {"stride4": "features"},
    # VGG16 (the paper's VOC backbone): the ReLUs before pool3, pool4 and pool5
    "vgg16": {"stride4": "features.15", "stride8": "features.22", "stride16": "features.29"},
}


@dataclass(frozen=True)
class RefineParams:
    """Settings of ``refine-cams`` (see the module docstring). PAR: ``dilations``, ``iterations``
    (default 10 for par), ``w_rgb``, ``w_pos``. Affinity: ``layers`` (strides or dotted names of
    the backbone; empty: every stride :data:`FEATURE_LAYERS` names for the model family),
    ``dim`` of the affinity features, ``conf_fg`` / ``conf_bg`` (numbers, or ``None``: the source's
    eval-cams best threshold + ``fg_margin`` / - ``bg_margin``), training ``radius``, ``epochs``,
    ``lr``, ``batch_size``, ``seed``, ``label_crf`` (default: the head's labels from CRF-refined
    seeds, IRN's ``cam_to_ir_label``, with :class:`~gainet.wsss.crf.CRFParams`' defaults; needs
    ``pydensecrf2``; ``False``: the raw seeds' labels); random walk
    ``beta``, ``iterations`` (default 256), ``walk_radius``, ``background_power`` (0: no
    background map in the walk), ``walk_normalise`` (one of :data:`WALK_NORMALISATIONS`; only
    without a background map), ``walk_base_size`` (the walk's input in ``make-cams --base-size``'s
    vocabulary: ``"train"`` the classifier's square input, ``"native"`` the image as it is, its own
    aspect and size, or ``N`` an N x N square; the head is trained on ``"train"`` inputs whatever
    this says)."""

    # the learned refinement (with label_crf) beat PAR by 5.7 +- 0.4 mIoU on the garments world,
    # 3 seeds (docs/wsss.md, issue 31)
    method: str = "affinity"
    dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    iterations: int | None = None
    w_rgb: float = 0.3
    w_pos: float = 0.01
    layers: tuple[str, ...] = ()
    dim: int = 64
    conf_fg: float | None = None
    conf_bg: float | None = None
    fg_margin: float = 0.15
    bg_margin: float = 0.10
    radius: int = 5
    epochs: int = 8
    lr: float = 1e-3
    batch_size: int = 16
    seed: int = 0
    beta: float = 8.0
    walk_radius: int = 5
    background_power: float = 0.0
    # IRN's CRF-refined labels: +12 to +15 mIoU over the raw seeds' on the garments world, 3 seeds
    # (docs/wsss.md, issue 31)
    label_crf: bool = True
    walk_normalise: str = "minmax"
    walk_base_size: str | int = "train"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "walk_base_size", parse_base_size(self.walk_base_size))
        except ValueError as error:
            raise ValueError(f"walk_base_size (--walk-base-size): {error}") from None
        if self.walk_base_size != "train" and self.method != "affinity":
            raise ValueError("walk_base_size is a setting of the affinity random walk (--method affinity)")
        if self.method not in METHODS:
            raise ValueError(f"refinement method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.iterations is not None and self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        for name in ("conf_fg", "conf_bg"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.background_power < 0:
            raise ValueError(f"background_power must be >= 0, got {self.background_power}")
        if self.background_power and self.method != "affinity":
            raise ValueError("background_power is a setting of the affinity random walk (--method affinity)")
        if self.walk_normalise not in WALK_NORMALISATIONS:
            raise ValueError(f"walk_normalise must be one of {', '.join(WALK_NORMALISATIONS)}, "
                             f"got {self.walk_normalise!r}")
        if self.method != "affinity" and self.walk_normalise != "minmax":
            raise ValueError("walk_normalise is a setting of the affinity refinement (--method affinity)")
        if self.background_power and self.walk_normalise != "minmax":
            raise ValueError("walk_normalise applies to the class maps walked alone; with background_power the "
                             "output is the ratio against the walked background")
        if self.epochs < 1 or self.batch_size < 1 or self.dim < 1:
            raise ValueError("epochs, batch_size and dim must be >= 1")

    @property
    def steps(self) -> int:
        if self.iterations is not None:
            return int(self.iterations)
        return 10 if self.method == "par" else 256

    def to_dict(self) -> dict[str, Any]:
        """The settings that matter for ``method`` (stored in ``meta.json``)."""
        values = asdict(self)
        par = ("dilations", "w_rgb", "w_pos")
        learned = ("layers", "dim", "conf_fg", "conf_bg", "fg_margin", "bg_margin", "radius", "epochs", "lr",
                   "batch_size", "seed", "beta", "walk_radius", "background_power", "label_crf", "walk_normalise",
                   "walk_base_size")
        drop = learned if self.method == "par" else par
        values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if k not in drop}
        # recorded only when used, so that folders (and heads) made before the options still resume
        if not self.background_power:
            values.pop("background_power", None)
        if self.label_crf and self.method == "affinity":
            values["label_crf"] = CRFParams().to_dict()
        else:
            values.pop("label_crf", None)
        if self.walk_normalise == "minmax":
            values.pop("walk_normalise", None)
        if self.walk_base_size == "train":
            values.pop("walk_base_size", None)
        values["iterations"] = self.steps
        return values


# ----------------------------------------------------------------------------- affinity network
class FeatureTap(nn.Module):
    """The frozen activations of named layers of a classifier (forward hooks).

    ``forward(images (B, 3, H, W))`` -> list of ``(B, C_l, H / s_l, W / s_l)``, in ``names`` order.
    The classifier stays in eval mode and gets no gradient."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        modules = dict(model.named_modules())
        missing = [name for name in names if name not in modules]
        if missing:
            raise ValueError(f"the classifier has no layer {missing[0]!r}")
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.names = list(names)
        self._store: dict[str, torch.Tensor] = {}
        for name in self.names:
            modules[name].register_forward_hook(lambda _m, _i, out, name=name: self._store.__setitem__(name, out))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        self._store.clear()
        self.model(images)
        return [self._store[name].detach() for name in self.names]


class AffinityHead(nn.Module):
    """A small head that maps multi-stride backbone features to affinity features.

    Each input ``(B, C_l, h_l, w_l)`` gets a 1x1 convolution to 32 channels and a ReLU, is resized
    bilinearly to the first (finest) input's grid, and the concatenation goes through a 1x1
    convolution to ``dim`` channels: ``(B, dim, h_0, w_0)``. Affinities of two positions are
    ``exp(-mean_c |f_i - f_j|)`` (:func:`~gainet.wsss.affinity.feature_affinity`)."""

    def __init__(self, channels: Sequence[int], dim: int = 64) -> None:
        super().__init__()
        self.reduce = nn.ModuleList(nn.Sequential(nn.Conv2d(c, 32, 1), nn.ReLU(inplace=True)) for c in channels)
        self.project = nn.Conv2d(32 * len(channels), dim, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        parts = [F.interpolate(reduce(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size
                 else reduce(f) for reduce, f in zip(self.reduce, features)]
        return self.project(torch.cat(parts, dim=1))


def feature_layers(model_name: str, layers: Sequence[str]) -> list[str]:
    """Module names of ``layers`` (``stride4`` / ``stride8`` / ``stride16`` or dotted names; empty:
    all the family's named strides, finest first) for ``model_name``; one-line error for a stride
    the model family does not name."""
    named = FEATURE_LAYERS.get(model_name, {})
    if not layers:
        if not named:
            raise ValueError(f"no feature layers are named for model {model_name!r}; give dotted module names")
        layers = list(named)
    names = []
    for layer in layers:
        if layer.startswith("stride") and layer[6:].isdigit():
            if layer not in named:
                known = ", ".join(named) if named else "none; give dotted module names"
                raise ValueError(f"feature layer {layer!r} is not named for model {model_name!r} (named: {known})")
            names.append(named[layer])
        else:
            names.append(layer)
    return names


def seed_thresholds(params: RefineParams, cams_dir: Path) -> tuple[float, float]:
    """``(conf_fg, conf_bg)``: the given numbers, or the source's eval-cams best threshold plus
    ``fg_margin`` / minus ``bg_margin`` (clipped to [0, 1])."""
    if params.conf_fg is not None and params.conf_bg is not None:
        fg, bg = params.conf_fg, params.conf_bg
    else:
        path = cams_dir / EVAL_CAMS_JSON
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run gainet eval-cams on the seeds or give --conf-fg and "
                                    "--conf-bg")
        best = float(json.loads(path.read_text())["best_threshold"])
        fg = params.conf_fg if params.conf_fg is not None else min(1.0, best + params.fg_margin)
        bg = params.conf_bg if params.conf_bg is not None else max(0.0, best - params.bg_margin)
    if not 0.0 <= bg <= fg <= 1.0:
        raise ValueError(f"need 0 <= conf_bg ({bg}) <= conf_fg ({fg}) <= 1")
    return round(fg, 6), round(bg, 6)


def _network_input(image: np.ndarray, meta: dict[str, Any], device: torch.device,
                   base: str | int = "train") -> torch.Tensor:
    """The classifier's input ``(1, 3, h, w)`` for a native image ``(H, W, 3)``: normalised and
    resized to its square training size (``base`` "train"), to ``N x N`` (an int), or kept at its
    own size and aspect ("native")."""
    tensor = to_input(image, meta["mean"], meta["std"], device)
    if base == "native":
        return tensor
    size = int(meta["train_size"]) if base == "train" else int(base)
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _seed_grid(keys: np.ndarray, maps: np.ndarray, num_classes: int, fg: float, bg: float,
               size: tuple[int, int], *, image: np.ndarray | None = None, crf: CRFParams | None = None) -> torch.Tensor:
    """int64 ``(h, w)`` seed labels (0 bg, 1 + class, 255 unsure) on the feature grid (nearest).

    With ``crf`` (and the native uint8 ``image`` ``(H, W, 3)``), the labels of IRN's
    ``cam_to_ir_label``, made at native size before the resize: :func:`pseudo_label` with a dense
    CRF on both threshold segmentations."""
    label = torch.from_numpy(pseudo_label(keys, maps, num_classes, fg, bg, image=image, crf=crf).astype(np.int64))
    return F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()


def train_affinity(tap: FeatureTap, head: AffinityHead, inputs: list[torch.Tensor], seeds: list[torch.Tensor],
                   params: RefineParams, *, progress: bool = True) -> list[float]:
    """Train ``head`` on the seeds (AffinityNet's pairs within ``params.radius``, the backbone
    frozen). ``inputs``: classifier inputs ``(1, 3, S, S)``; ``seeds``: ``(h, w)`` labels on the
    head's grid. Features are computed once and kept. Returns the mean loss of each epoch."""
    generator = torch.Generator().manual_seed(params.seed)
    torch.manual_seed(params.seed)
    cached = []
    for start in range(0, len(inputs), params.batch_size):
        cached.append(tap(torch.cat(inputs[start:start + params.batch_size])))
    features = [torch.cat([batch[level] for batch in cached]) for level in range(len(cached[0]))]
    labels = torch.stack(seeds)
    offsets = disc_offsets(params.radius, half=True)
    bg_pos, fg_pos, neg = pair_labels(labels, offsets)
    optimizer = torch.optim.Adam(head.parameters(), lr=params.lr)
    losses = []
    head.train()
    for _epoch in progress_bar(range(params.epochs), desc="train affinity", enabled=progress):
        order = torch.randperm(labels.shape[0], generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(order), params.batch_size):
            index = order[start:start + params.batch_size]
            affinity, _ = feature_affinity(head([f[index] for f in features]), offsets)
            loss = affinity_loss(affinity, bg_pos[index], fg_pos[index], neg[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / max(1, batches))
    head.eval()
    return losses


# ----------------------------------------------------------------------------- the stage
def refine_cams(
    cams_dir: str | Path,
    output_dir: str | Path,
    params: RefineParams | None = None,
    *,
    data_root: str | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """``output_dir/cams/<image_id>.npy`` for every image of a ``make-cams`` output ``cams_dir``,
    refined by ``params.method`` (see the module docstring), plus ``meta.json`` (and
    ``affinity.pt`` for ``affinity``). Returns ``{"written", "skipped", "images", "output",
    "seconds": {"train", "refine"}, "losses"}``."""
    params = params or RefineParams()
    cams_dir, output = Path(cams_dir), Path(output_dir)
    if output.resolve() == cams_dir.resolve():
        raise ValueError(f"{output}: the refined maps need another folder than their seeds")
    meta = io.read_meta(cams_dir, CAMS_STAGE, "gainet make-cams")
    dataset, classes = io.open_stage_dataset(meta, data_root)
    folder = cams_dir / CAMS_DIR
    require_complete(folder, dataset, ".npy", "gainet make-cams")
    settings = params.to_dict()
    if params.method == "affinity":
        settings["conf_fg"], settings["conf_bg"] = seed_thresholds(params, cams_dir)
    if params.method == "affinity" and params.label_crf and not crf_available():
        raise ImportError(f"{INSTALL_HINT}; or give --no-label-crf (labels from the raw seeds, lower: docs/wsss.md)")
    refined_meta = {**meta, "source": str(cams_dir.resolve()), "refinement": settings,
                    "data": {**meta["data"], **({"root": str(data_root)} if data_root else {})}}
    io.claim_folder(output, refined_meta, ["source", "data", "refinement"], overwrite)
    out_dir = output / CAMS_DIR
    torch_device = torch.device(device)
    total = dataset.wsss_size
    todo = [index for index, _ in io.pending(dataset, out_dir, ".npy", overwrite)]
    seconds = {"train": 0.0, "refine": 0.0}
    losses: list[float] = []
    tap = head = None
    if params.method == "affinity" and todo:
        started = time.perf_counter()
        tap, head, losses = _affinity_model(meta, dataset, folder, output, settings, params, torch_device,
                                            overwrite, progress)
        seconds["train"] = time.perf_counter() - started
    started = time.perf_counter()
    bar = progress_bar(total=len(todo), desc=f"refine-cams {params.method}", enabled=progress, dynamic_ncols=True)
    # PAR's neighbour tensors are (B, 3, 8 x dilations, H, W) at native size: one image at a time
    for chunk in _chunks(dataset, folder, todo, params.batch_size if params.method == "affinity" else 1):
        refined = _refine_chunk(chunk, params, meta, tap, head, torch_device)
        for (item, keys, _), maps in zip(chunk, refined):
            io.save_cams(io.item_path(out_dir, item.image_id, ".npy"), keys, maps, str(meta.get("dtype", "float16")))
        bar.update(len(chunk))
    bar.close()
    seconds["refine"] = time.perf_counter() - started
    logger.info("refine-cams: %d written, %d already there, in %s", len(todo), total - len(todo), out_dir)
    return {"written": len(todo), "skipped": total - len(todo), "images": total, "output": str(output),
            "seconds": seconds, "losses": losses}


def _chunks(dataset, folder: Path, indices: list[int], size: int):
    """Lists of up to ``size`` consecutive ``(raw item, keys, maps)`` whose images have one shape."""
    chunk: list = []
    for index in indices:
        item = io.raw_item(dataset, index)
        keys, maps = io.load_cams(io.item_path(folder, item.image_id, ".npy"))
        if chunk and (len(chunk) == size or chunk[0][0].image.shape != item.image.shape):
            yield chunk
            chunk = []
        chunk.append((item, keys, maps))
    if chunk:
        yield chunk


@torch.no_grad()
def _refine_chunk(chunk: list, params: RefineParams, meta: dict[str, Any], tap: FeatureTap | None,
                  head: AffinityHead | None, device: torch.device) -> list[np.ndarray]:
    """Refined ``(K_b, H, W)`` float32 maps in [0, 1] of a chunk of same-size images, computed as
    one batch: each image's maps padded with zero maps to the chunk's largest ``K`` (a zero map
    propagates to zero), the padding dropped again."""
    most = max(keys.size for _, keys, _ in chunk)
    height, width = chunk[0][0].image.shape[:2]
    if most == 0:
        return [maps for _, _, maps in chunk]
    stacked = torch.zeros(len(chunk), most, height, width)
    for b, (_, keys, maps) in enumerate(chunk):
        stacked[b, :keys.size] = torch.from_numpy(maps)
    stacked = stacked.to(device)
    background = params.background_power > 0  # affinity only (RefineParams checks)
    if params.method == "par":
        images = torch.stack([torch.from_numpy(np.ascontiguousarray(item.image)) for item, _, _ in chunk])
        images = images.permute(0, 3, 1, 2).float().to(device) / 255.0
        refined = par_refine(images, stacked, dilations=params.dilations, iterations=params.steps,
                             w_rgb=params.w_rgb, w_pos=params.w_pos)
    else:
        # a chunk's images share one shape (_chunks), so their native inputs stack too
        inputs = torch.cat([_network_input(item.image, meta, device, params.walk_base_size) for item, _, _ in chunk])
        embedding = head(tap(inputs))
        if background:
            # the padding's zero maps leave the max unchanged (maps are >= 0)
            stacked = torch.cat([(1 - stacked.amax(1, keepdim=True)).clamp(min=0) ** params.background_power,
                                 stacked], 1)
        small = F.interpolate(stacked, size=embedding.shape[-2:], mode="area")
        walked = random_walk(small, embedding, radius=params.walk_radius, beta=params.beta, iterations=params.steps)
        refined = F.interpolate(walked, size=(height, width), mode="bilinear", align_corners=False)
        if background:  # the ratio against the walked background is the output, not renormalised
            refined = background_scores(refined[:, 1:].clamp(min=0), refined[:, :1].clamp(min=0))
    if background:  # the ratios, as they are
        finish = lambda maps: maps  # noqa: E731
    elif params.method == "par":
        finish = normalise_maps
    else:
        finish = lambda maps: walk_output(maps, params.walk_normalise)  # noqa: E731
    return [finish(refined[b, :keys.size]).cpu().numpy() if keys.size else maps
            for b, (_, keys, maps) in enumerate(chunk)]


def walk_output(maps: torch.Tensor, mode: str) -> torch.Tensor:
    """One image's walked class maps ``(K, H, W)`` (averages of maps in [0, 1]) as written:
    ``minmax`` each map to [0, 1] (:func:`~gainet.core.normalise_maps`), ``max`` divided by the
    largest value of all K maps (IRN; all-zero maps stay 0), ``none`` clipped to [0, 1] (float
    error only). Returns ``(K, H, W)`` in [0, 1]."""
    if mode == "minmax":
        return normalise_maps(maps)
    if mode == "max":
        return maps.clamp(min=0) / maps.max().clamp(min=1e-12)
    if mode == "none":
        return maps.clamp(0.0, 1.0)
    raise ValueError(f"walk_normalise must be one of {', '.join(WALK_NORMALISATIONS)}, got {mode!r}")


def _affinity_model(meta, dataset, folder: Path, output: Path, settings: dict[str, Any], params: RefineParams,
                    device: torch.device, overwrite: bool, progress: bool) -> tuple[FeatureTap, AffinityHead, list]:
    """The feature tap on the seeds' classifier and the trained affinity head (loaded from
    ``output/affinity.pt`` when its settings match, else trained and saved there)."""
    from gainet.evaluation.jobs import load_trained

    checkpoint = meta.get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        raise FileNotFoundError(f"{checkpoint}: the seeds' classifier checkpoint is needed for the affinity head")
    gain, config, _ = load_trained(checkpoint, device)
    tap = FeatureTap(gain.model, feature_layers(config.model, params.layers))
    probe = tap(torch.zeros(1, 3, int(meta["train_size"]), int(meta["train_size"]), device=device))
    torch.manual_seed(params.seed)
    head = AffinityHead([f.shape[1] for f in probe], params.dim).to(device)
    path = output / AFFINITY_FILE
    # the walk's settings do not change the head: a folder re-walked with another beta or number
    # of iterations (--overwrite) keeps its trained head
    settings = {k: v for k, v in settings.items() if k not in WALK_SETTINGS}
    if path.is_file() and not overwrite:
        stored = torch.load(path, map_location=device, weights_only=True)
        if stored.get("settings") == json.loads(json.dumps(settings)):
            head.load_state_dict(stored["head"])
            return tap, head.eval(), list(stored.get("losses", []))
    grid = tuple(probe[0].shape[-2:])
    inputs, seeds = [], []
    fg, bg = settings["conf_fg"], settings["conf_bg"]
    crf = CRFParams() if params.label_crf else None
    for _, item in progress_bar(io.iterate(dataset), total=dataset.wsss_size, desc="affinity seeds",
                                enabled=progress):
        keys, maps = io.load_cams(io.item_path(folder, item.image_id, ".npy"))
        inputs.append(_network_input(item.image, meta, device))
        seeds.append(_seed_grid(keys, maps, len(meta["classes"]), fg, bg, grid, image=item.image if crf else None,
                                crf=crf).to(device))
    losses = train_affinity(tap, head, inputs, seeds, params, progress=progress)
    torch.save({"settings": json.loads(json.dumps(settings)), "head": head.state_dict(), "losses": losses}, path)
    return tap, head, losses
