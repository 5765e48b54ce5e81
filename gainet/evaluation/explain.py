"""``gainet explain``: attention (Grad-CAM) overlays of a trained gainet checkpoint, or of any
torchvision / timm / EfficientNet-Lite classifier without training.

Sits above models, core, data, the rest of evaluation and :mod:`gainet.evaluation.jobs` (which loads
checkpoints), below the CLI.
"""

from __future__ import annotations

import glob
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from gainet.core import GAIN
from gainet.data.errors import DataError
from gainet.data.readers import read_rgb
from gainet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from gainet.evaluation.overlays import denormalise, overlay, save_png
from gainet.io.input_size import check_input_size
from gainet.io.outputs import refuse_existing_run
from gainet.models import IMAGENET_NUM_CLASSES, imagenet_categories, load_classifier

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_IMAGE_SIZE = 224


@dataclass
class Explainer:
    """What explaining needs: the model wrapped for Grad-CAM, its class names and its input format.

    Attributes:
        gain: the classifier in :class:`GAIN` (eval mode), for its ``explain``.
        class_names: one name per output (indices as strings where the model has none).
        image_size: square input side in pixels.
        mean, std: the normalisation the model was trained with.
    """

    gain: GAIN
    class_names: list[str]
    image_size: int
    mean: tuple[float, ...] = field(default=tuple(IMAGENET_MEAN))
    std: tuple[float, ...] = field(default=tuple(IMAGENET_STD))

    @property
    def device(self) -> torch.device:
        return next(self.gain.parameters()).device


@dataclass
class ExplainResult:
    """Files written, the inputs skipped as ``(file, reason)`` (unreadable images), and the
    opt-in faithfulness / randomisation results (:func:`model_dependence`; empty when off)."""

    written: list[Path]
    skipped: list[tuple[str, str]]
    checks: dict = field(default_factory=dict)


def checkpoint_explainer(checkpoint: str | Path, device: str = "auto", image_size: int | None = None) -> Explainer:
    """The explainer of a gainet checkpoint (its classes, input size and normalisation)."""
    from gainet.evaluation.jobs import load_trained
    from gainet.training.distributed import DistributedContext
    from gainet.training.trainer import resolve_device

    gain, config, state = load_trained(checkpoint, resolve_device(device, DistributedContext()))
    if image_size is not None:  # the checkpoint's own size was checked when the model was built
        check_input_size(gain.model, image_size, "--image-size", config.model)
    return Explainer(gain, [str(c) for c in state["classes"]], image_size or config.image_size,
                     tuple(state["mean"]), tuple(state["std"]))


def model_explainer(
    name: str,
    *,
    weights: str | Path | None = None,
    pretrained: bool | str = False,
    attention_layer: str | None = None,
    image_size: int | None = None,
    device: str = "auto",
) -> Explainer:
    """The explainer of any classifier with its own head (see :func:`gainet.models.load_classifier`).

    Class names: ImageNet-1k's (offline, from torchvision's metadata) when the model has 1000
    outputs; timm's own names for its other ImageNet heads (12k, 22k); else the output indices. Normalisation: the model's own (timm's pretrained config),
    else ImageNet's.
    """
    from gainet.training.distributed import DistributedContext
    from gainet.training.trainer import resolve_device

    size = image_size or DEFAULT_IMAGE_SIZE
    model = load_classifier(name, weights=weights, pretrained=pretrained)
    config = getattr(model, "pretrained_cfg", None) or {}  # timm models say how they normalise
    mean = tuple(float(m) for m in config.get("mean", IMAGENET_MEAN))
    std = tuple(float(s) for s in config.get("std", IMAGENET_STD))
    check_input_size(model, size, "--image-size", name)
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, size, size)).shape[1]
    names = _class_names(name, outputs)
    gain = GAIN(model, attention_layer, multi_label=False, probe_size=size)
    gain = gain.to(resolve_device(device, DistributedContext())).eval()
    return Explainer(gain, names, size, mean, std)


def _class_names(name: str, outputs: int) -> list[str]:
    """ImageNet-1k's names for a 1000-output head; a timm head of another ImageNet subset
    (12k, 21k/22k) gets timm's names for it (shipped with timm: offline); else the indices."""
    if name == "small-cnn":
        return [str(i) for i in range(outputs)]
    if outputs == IMAGENET_NUM_CLASSES:
        return imagenet_categories()
    if name.startswith("timm:"):
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset({"num_classes": outputs})  # timm's own guess: by the head's size
        if subset is not None:
            info = ImageNetInfo(subset)
            if info.num_classes() == outputs:
                return [info.index_to_description(i).split(",")[0].strip() for i in range(outputs)]
    return [str(i) for i in range(outputs)]


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (non-recursively, sorted) in directories."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image file or directory")
    if not files:
        raise ValueError(f"no image files in {', '.join(map(str, inputs))}")
    return files


def output_stems(files: Sequence[Path]) -> list[str]:
    """One distinct output stem per file: the file's stem, and for a stem that several inputs share
    (``a/cat.jpg``, ``b/cat.jpg``, ``cat.png``) ``cat``, ``cat-2``, ``cat-3``... in input order (never
    an existing stem)."""
    taken = set(p.stem for p in files)
    counts = Counter(p.stem for p in files)
    seen: Counter[str] = Counter()
    stems = []
    for path in files:
        seen[path.stem] += 1
        stem = path.stem
        if counts[path.stem] > 1 and seen[path.stem] > 1:
            number = seen[path.stem]
            while f"{path.stem}-{number}" in taken:
                number += 1
            stem = f"{path.stem}-{number}"
            taken.add(stem)
        stems.append(stem)
    return stems


def safe_name(name: str) -> str:
    """A class name usable in a file name (``great white shark`` -> ``great_white_shark``)."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "class"


def resolve_classes(requested: Sequence[str] | None, names: Sequence[str]) -> list[int] | None:
    """Indices of the requested classes (names, or output indices); ``None`` for top-k."""
    if not requested:
        return None
    indices = []
    for item in requested:
        if item in names:
            indices.append(list(names).index(item))
        elif item.isdigit() and int(item) < len(names):
            indices.append(int(item))
        else:
            shown = ", ".join(names[:20]) + (f", ... ({len(names)} classes)" if len(names) > 20 else "")
            raise ValueError(f"unknown class {item!r}; classes of this model: {shown}")
    return indices


def explain_images(
    inputs: Sequence[str | Path],
    explainer: Explainer,
    *,
    output_dir: str | Path = "runs/explain",
    classes: Sequence[str] | None = None,
    top_k: int = 1,
    save_npy: bool = False,
    overwrite: bool = False,
    faithfulness: bool = False,
    randomisation: bool = False,
    progress: bool = False,
) -> ExplainResult:
    """Attention overlays ``<stem>_<class>.png`` (and ``.npy`` maps in [0, 1]) for each image.

    Classes: the named ones (names or output indices), else the ``top_k`` highest-scoring. Images
    are resized to the explainer's square input and normalised with its statistics. Each image is
    one batch of its classes (one Grad-CAM backward for all of them). Unreadable images are skipped
    and returned in ``skipped``; inputs sharing a stem get distinct names (:func:`output_stems`).
    Overlays of these images already in ``output_dir`` (an earlier explain) are refused in one line
    before anything is written, unless ``overwrite`` (then they are replaced).
    ``faithfulness`` / ``randomisation``: also score the maps (:func:`model_dependence`) and write
    ``checks.json`` beside the overlays.
    """
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    names = explainer.class_names
    chosen = resolve_classes(classes, names)
    files = image_files(inputs)
    transform = build_transform(explainer.image_size, train=False, mean=explainer.mean, std=explainer.std)
    output = Path(output_dir)
    stems = output_stems(files)
    if not overwrite:
        refuse_existing_run(output, [f"{glob.escape(stem)}_*{suffix}" for stem in stems for suffix in (".png", ".npy")],
                            what="overlays of these images from an earlier explain", resume=None,
                            overwrite="replaces them")
    result = ExplainResult([], [])
    from torchvision import tv_tensors

    device = explainer.device
    explained: dict[str, list] = {"images": [], "classes": [], "maps": [], "names": []}
    for path, stem in zip(files, stems):
        try:
            rgb = read_rgb(path)
        except DataError as error:
            logger.warning("skipped %s", error)
            result.skipped.append((error.file, error.problem))
            continue
        image, _, _, _ = transform(
            tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1)), None,
            tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=rgb.shape[:2]),
        )
        batch = image[None].to(device)
        if chosen is None:
            with torch.no_grad():
                scores = explainer.gain(batch)[0]
            targets = scores.topk(min(top_k, len(names))).indices.tolist()
        else:
            targets = chosen
        _, maps = explainer.gain.explain(batch.expand(len(targets), -1, -1, -1), targets)
        picture = denormalise(image, explainer.mean, explainer.std)
        if faithfulness or randomisation:
            explained["images"].append(batch.expand(len(targets), -1, -1, -1).cpu())
            explained["classes"].append(torch.as_tensor(targets, dtype=torch.long))
            explained["maps"].append(maps.cpu())
            explained["names"] += [f"{stem}_{safe_name(names[c])}" for c in targets]
        for class_index, attention in zip(targets, maps.cpu()):
            name = f"{stem}_{safe_name(names[class_index])}"
            result.written.append(save_png(overlay(picture, attention), output / f"{name}.png"))
            if save_npy:
                np.save(output / f"{name}.npy", attention.numpy())
    if explained["images"]:
        result.checks = model_dependence(
            explainer, torch.cat(explained["images"]), torch.cat(explained["classes"]), torch.cat(explained["maps"]),
            explained["names"], faithfulness=faithfulness, randomisation=randomisation, progress=progress)
        (output / "checks.json").write_text(json.dumps(result.checks, indent=2))
    if not result.written and result.skipped:
        file, reason = result.skipped[0]
        raise DataError(file, reason if len(result.skipped) == 1 else f"{reason} (and {len(result.skipped) - 1} "
                                                                       "more unreadable images; nothing written)")
    return result


def model_dependence(
    explainer: Explainer,
    images: torch.Tensor,
    classes: torch.Tensor,
    maps: torch.Tensor,
    names: Sequence[str],
    *,
    faithfulness: bool = True,
    randomisation: bool = True,
    progress: bool = False,
) -> dict:
    """Does the model use what its maps show, and do the maps depend on the model?

    ``images`` ``(N, 3, H, W)``, ``classes`` ``(N,)``, ``maps`` ``(N, H, W)``: the explained
    (image, class) pairs, named by ``names``. ``faithfulness``: per pair deletion and insertion
    AUC and ROAD (:mod:`gainet.evaluation.faithfulness`) and their means; ``randomisation``: the
    cascading randomisation check's curve and mean Spearman similarity
    (:mod:`gainet.evaluation.randomisation`). Scores: sigmoid for a multi-label model, else softmax.
    """
    from gainet.evaluation.faithfulness import FAITHFULNESS_METRICS, perturbation_curve, road
    from gainet.evaluation.randomisation import cascading_randomisation, gradcam_explain

    gain, device = explainer.gain, explainer.device
    images, classes, maps = images.to(device), classes.to(device), maps.to(device)
    score = "sigmoid" if gain.multi_label else "softmax"
    out: dict = {}
    if faithfulness:
        generator = torch.Generator().manual_seed(0)
        deletion = perturbation_curve(gain.model, images, maps, classes, mode="deletion", baseline="zero", score=score,
                                      progress=progress)
        insertion = perturbation_curve(gain.model, images, maps, classes, mode="insertion", baseline="blur",
                                       score=score, progress=progress)
        removed = road(gain.model, images, maps, classes, score=score, generator=generator, progress=progress)
        columns = (deletion.auc, insertion.auc, removed.morf_mean, removed.lerf_mean, removed.combined)
        out["faithfulness"] = [{"map": name, **{key: float(values[i]) for key, values in zip(FAITHFULNESS_METRICS, columns)}}
                               for i, name in enumerate(names)]
        out["faithfulness_mean"] = {key: float(values.mean()) for key, values in zip(FAITHFULNESS_METRICS, columns)}
    if randomisation:
        result = cascading_randomisation(gain.model, images, classes, gradcam_explain(gain.backbone.layer_name),
                                         progress=progress)
        out["randomisation_curve"] = result.curve
        out["randomisation_spearman"] = result.score
    return out
