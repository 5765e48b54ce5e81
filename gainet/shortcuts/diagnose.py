"""The background test of "Noise or Signal" (Xiao et al., ICLR 2021, ImageNet-9) on annotated images.

From images whose objects are known (pixel masks, or boxes, optionally refined by GrabCut) four
splits are built, each image keeping its own object at its own place:

- ``original``: the image as it is;
- ``mixed_same``: image ``i``'s object pasted onto the filled context of another image ``j`` of the
  *same* labels (``m_i * x_i + (1 - m_i) * ctx_j``);
- ``mixed_rand``: the same onto the context of an image ``j`` whose labels share *no* class with
  ``i``'s (another class's background);
- ``context_only``: ``ctx_i``, image ``i`` with its object removed and the hole filled from the
  surrounding pixels (:func:`gainet.core.counterfactual.fill_from_context`); the target is "none
  of the classes", and the test counts how often the model still names the class the context
  came with.

The *background gap* is the score on ``mixed_same`` minus the score on ``mixed_rand``: a model that
reads the object scores the same on both; a model that reads the context loses what the
context gave it when the context belongs to another class. Scores: top-1 accuracy (single-label)
or mAP (multi-label), from :class:`gainet.evaluation.classification.ClassificationMeter`.

Verdict thresholds (fixed before any model was diagnosed, from the issue's targets: a biased
model's gap >= 0.3, an unbiased reference's <= 0.1): gap >= :data:`GAP_READS_CONTEXT` (0.10) "reads
the context"; gap >= :data:`GAP_SOME` (0.05) "leans on the context"; otherwise "the object decides".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from gainet.core.counterfactual import dilate, fill_from_context
from gainet.evaluation.classification import ClassificationMeter
from gainet.progress import progress_bar

SPLITS = ("original", "mixed_same", "mixed_rand", "context_only")
GAP_READS_CONTEXT = 0.10
GAP_SOME = 0.05
MIN_IMAGES = 20
MIN_CLASSES = 2
IGNORE = 255


@dataclass
class AnnotatedImages:
    """Images whose object pixels are known.

    Attributes:
        images: ``(N, 3, H, W)`` normalised images.
        labels: ``(N, C)`` multi-hot (single-label: one-hot).
        objects: ``(N, H, W)`` in {0, 1}: the pixels pasted as the object (the mask, the box, or
            GrabCut inside the box).
        holes: ``(N, H, W)`` in {0, 1}: the pixels removed to make the context (the mask or the
            whole box, never smaller than ``objects``).
        index: ``(N,)`` positions in the dataset.
        source: ``"masks"`` or ``"boxes"``; ``swap_mask``: ``"mask"`` or ``"grabcut"``.
    """

    images: Tensor
    labels: Tensor
    objects: Tensor
    holes: Tensor
    index: Tensor
    source: str = "boxes"
    swap_mask: str = "mask"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, rows: Tensor | Sequence[int]) -> "AnnotatedImages":
        rows = torch.as_tensor(rows, dtype=torch.long)
        return AnnotatedImages(self.images[rows], self.labels[rows], self.objects[rows], self.holes[rows],
                               self.index[rows], self.source, self.swap_mask)


def object_pixels(masks: Tensor) -> Tensor:
    """``(B, C, H, W)`` per-class masks -> ``(B, H, W)`` in {0, 1}: a pixel is object where some
    class's mask is > 0.5 and not 255 (VOC's "ignore" is never object)."""
    return ((masks > 0.5) & (masks != IGNORE)).any(dim=1).to(torch.float32)


def not_enough_message(where: str, found: int, classes: int, source: str) -> str:
    """The one line that says what to annotate, and how many, when a split has too few objects."""
    what = "boxes (or masks)" if source == "auto" else source
    return (f"{where}: {found} images carry {what} ({classes} classes); the background test needs {what} on at "
            f"least {MIN_IMAGES} images of {MIN_CLASSES}+ classes: add COCO boxes (boxes.json) or VOC XML "
            "(boxes/<image>.xml) for a few dozen images per class (docs/data.md)")


def load_annotated(dataset: Any, *, source: str = "auto", swap_mask: str = "mask", indices: Sequence[int] | None = None,
                   limit: int | None = None, where: str = "split", progress: bool = True,
                   min_images: int = MIN_IMAGES) -> AnnotatedImages:
    """The images of ``dataset`` (a gainet dataset: sample dicts) that carry masks or boxes.

    Args:
        source: ``"masks"``, ``"boxes"`` or ``"auto"`` (boxes where enough images have them, else masks).
        swap_mask: ``"mask"`` (paste the mask or the whole box) or ``"grabcut"`` (boxes: GrabCut's
            foreground inside the box, :func:`gainet.data.grabcut.grabcut_mask`; needs OpenCV).
        indices: only these dataset positions (default: every annotated one).
        limit: at most this many images (the first ones).
        where: names the split in the error message.
        min_images: fewer annotated images (or fewer than 2 classes among them) is a one-line
            ``ValueError`` saying what to annotate.
    """
    from gainet.training.data import supervision_candidates

    if source not in ("auto", "masks", "boxes"):
        raise ValueError(f"--supervision must be masks, boxes or auto, got {source!r}")
    if swap_mask not in ("mask", "grabcut"):
        raise ValueError(f"--swap-mask must be mask or grabcut, got {swap_mask!r}")
    if indices is None:
        if source == "auto":
            boxes = supervision_candidates(dataset, "boxes")
            source, indices = ("boxes", boxes) if len(boxes) >= min_images else ("masks", supervision_candidates(dataset, "masks"))
            if len(indices) < min_images and len(boxes) > len(indices):
                source, indices = "boxes", boxes
        else:
            indices = supervision_candidates(dataset, source)
    elif source == "auto":
        source = "boxes"
    indices = list(indices)[:limit] if limit else list(indices)
    images, labels, objects, holes = [], [], [], []
    key = "masks" if source == "masks" else "box_masks"
    for i in progress_bar(indices, enabled=progress, desc="read annotated images", leave=False):
        sample = dataset[i]
        images.append(sample["image"])
        labels.append(sample["labels"])
        hole = object_pixels(sample[key][None])[0]
        holes.append(hole)
        objects.append(hole)
    if images:
        images_t, labels_t = torch.stack(images), torch.stack(labels).float()
        holes_t = torch.stack(holes)
        objects_t = holes_t.clone()
    else:
        images_t = labels_t = holes_t = objects_t = torch.zeros(0)
    keep = holes_t.flatten(1).sum(1) > 0 if len(images) else torch.zeros(0, dtype=torch.bool)
    classes = int((labels_t[keep] > 0.5).any(0).sum()) if len(images) else 0
    if int(keep.sum()) < min_images or classes < MIN_CLASSES:
        raise ValueError(not_enough_message(where, int(keep.sum()), classes, source))
    rows = keep.nonzero().flatten()
    images_t, labels_t, holes_t, objects_t = images_t[rows], labels_t[rows], holes_t[rows], objects_t[rows]
    if swap_mask == "grabcut" and source == "boxes":
        from gainet.data.grabcut import grabcut_mask

        for n in range(images_t.shape[0]):
            objects_t[n], _ = grabcut_mask(images_t[n], holes_t[n])
    return AnnotatedImages(images_t, labels_t, objects_t, holes_t, torch.tensor(indices)[rows], source, swap_mask)


def contexts_of(data: AnnotatedImages, *, margin: int = 1, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Every image with its object removed and the hole filled from the context.

    Returns:
        ``contexts`` ``(N, 3, H, W)`` and ``ok`` ``(N,)`` bool (False: no context pixel to fill from).
    """
    return fill_from_context(data.images, dilate(data.holes, margin), generator=generator)


def draw_partners(labels: Tensor, same: bool, usable: Tensor, generator: torch.Generator) -> Tensor:
    """For each image, a seeded random partner: another usable image of the same labels
    (``same=True``) or one whose labels share no class (``same=False``); ``-1`` where none exists.

    Args:
        labels: ``(N, C)`` multi-hot. usable: ``(N,)`` bool (images with a context).
    Returns:
        ``(N,)`` long.
    """
    binary = labels > 0.5
    if same:
        allowed = (binary[:, None, :] == binary[None, :, :]).all(-1)
    else:
        allowed = ~(binary[:, None, :] & binary[None, :, :]).any(-1)
    allowed &= usable[None, :]
    allowed.fill_diagonal_(False)
    noise = torch.rand(allowed.shape, generator=generator)
    noise = torch.where(allowed, noise, torch.full_like(noise, -1.0))
    best = noise.argmax(1)
    return torch.where(allowed.any(1), best, torch.full_like(best, -1))


def paste(objects: Tensor, images: Tensor, contexts: Tensor) -> Tensor:
    """``m * x + (1 - m) * ctx``: ``objects`` ``(N, H, W)``, ``images`` and ``contexts`` ``(N, 3, H, W)``."""
    m = objects[:, None].to(images.dtype)
    return m * images + (1.0 - m) * contexts


@dataclass
class CounterfactualSplits:
    """The four splits of the test, as tensors.

    Attributes:
        images: split name -> ``(n_s, 3, H, W)``.
        rows: split name -> ``(n_s,)`` row of :class:`AnnotatedImages` each image keeps the object
            (``context_only``: the context) of.
        partners: split name -> ``(n_s,)`` row whose context was used (the row itself for
            ``original`` and ``context_only``).
        counts: images without a partner or a fillable context, per split.
    """

    images: dict[str, Tensor]
    rows: dict[str, Tensor]
    partners: dict[str, Tensor]
    counts: dict[str, int] = field(default_factory=dict)


def build_splits(data: AnnotatedImages, *, seed: int = 0, margin: int = 1) -> CounterfactualSplits:
    """The original, mixed-same, mixed-rand and context-only splits of ``data`` (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    contexts, ok = contexts_of(data, margin=margin, generator=generator)
    n = len(data)
    everyone = torch.arange(n)
    images = {"original": data.images, "context_only": contexts[ok]}
    rows = {"original": everyone, "context_only": everyone[ok]}
    partners = {"original": everyone, "context_only": everyone[ok]}
    counts = {"no_context": int((~ok).sum())}
    for name, same in (("mixed_same", True), ("mixed_rand", False)):
        partner = draw_partners(data.labels, same, ok, generator)
        keep = partner >= 0
        counts[f"{name}_no_partner"] = int((~keep).sum())
        source, other = everyone[keep], partner[keep]
        images[name] = paste(data.objects[source], data.images[source], contexts[other])
        rows[name], partners[name] = source, other
    return CounterfactualSplits(images, rows, partners, counts)


@torch.no_grad()
def predict(model: Callable[[Tensor], Tensor], images: Tensor, *, batch_size: int = 64,
            device: torch.device | str = "cpu", progress: bool = False, desc: str = "") -> Tensor:
    """Logits ``(N, C)`` of ``model`` on ``images`` ``(N, 3, H, W)``, batch by batch (CPU result)."""
    out = []
    starts = range(0, images.shape[0], batch_size)
    for start in progress_bar(starts, enabled=progress, desc=desc, leave=False):
        out.append(model(images[start:start + batch_size].to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def split_score(scores: Tensor, labels: Tensor, multi_label: bool) -> float:
    """Top-1 accuracy (single-label) or mAP (multi-label) of ``scores`` ``(N, C)`` on ``labels`` ``(N, C)``."""
    if scores.shape[0] == 0:
        return math.nan
    meter = ClassificationMeter(scores.shape[1], multi_label=multi_label)
    meter.update(scores, labels)
    metrics = meter.compute()
    return float(metrics["mAP" if multi_label else "accuracy"])


def context_only_answers(scores: Tensor, labels: Tensor, multi_label: bool) -> tuple[Tensor, Tensor]:
    """Per context-only image: whether the model names the class the context came with, and its
    confidence in it.

    Single-label: named = the top class is the image's class; confidence = its softmax probability.
    Multi-label: named = some class of the image has sigmoid > 0.5; confidence = the highest
    sigmoid among the image's classes.

    Returns:
        ``named`` ``(N,)`` bool and ``confidence`` ``(N,)`` float.
    """
    positive = labels > 0.5
    if multi_label:
        p = torch.sigmoid(scores)
        own = torch.where(positive, p, torch.zeros_like(p)).amax(1)
        return own > 0.5, own
    p = torch.softmax(scores, dim=1)
    target = labels.argmax(1)
    return scores.argmax(1) == target, p[torch.arange(scores.shape[0]), target]


def verdict(result: dict[str, Any]) -> str:
    """One line from the scores of a diagnosis (see the module docstring for the thresholds)."""
    metric = result["metric"]
    same, rand, gap = result["mixed_same"], result["mixed_rand"], result["gap"]
    original = result["original"]
    if not math.isfinite(gap):
        return "no verdict: too few images of distinct classes to build both mixed splits"
    if gap >= GAP_READS_CONTEXT:
        return (f"{metric} falls from {same:.2f} to {rand:.2f} when the object stands on another class's background "
                f"(gap {gap:.2f} >= {GAP_READS_CONTEXT:.2f}): the model reads the context")
    if gap >= GAP_SOME:
        return (f"{metric} falls from {same:.2f} to {rand:.2f} on another class's background (gap {gap:.2f}): the "
                "model leans on the context, the object decides most answers")
    return (f"{metric} {same:.2f} on the same class's background and {rand:.2f} on another's (gap {gap:.2f} < "
            f"{GAP_SOME:.2f}; original {original:.2f}): the object decides, not the context")


def diagnose(model: Callable[[Tensor], Tensor], data: AnnotatedImages, *, multi_label: bool, classes: Sequence[str],
             seed: int = 0, margin: int = 1, batch_size: int = 64, device: torch.device | str = "cpu",
             progress: bool = True) -> tuple[dict[str, Any], CounterfactualSplits, dict[str, Tensor]]:
    """Run the background test.

    Args:
        model: images ``(B, 3, H, W)`` -> logits ``(B, C)`` (eval mode).
        data: the annotated images (:func:`load_annotated`).
        multi_label: score with mAP and sigmoids instead of accuracy and softmax.
        classes: ``C`` names.

    Returns:
        ``result`` (JSON-ready: per split ``score`` and ``images``, ``gap``, ``context_rate``,
        ``context_confidence``, ``chance``, ``verdict``, ``counts``), the splits, and the logits per split.
    """
    if isinstance(model, nn.Module):
        model.eval()
    splits = build_splits(data, seed=seed, margin=margin)
    scores = {name: predict(model, splits.images[name], batch_size=batch_size, device=device, progress=progress,
                            desc=f"diagnose {name}") for name in SPLITS}
    result: dict[str, Any] = {"metric": "mAP" if multi_label else "accuracy", "images": {}, "classes": list(classes),
                              "multi_label": bool(multi_label), "source": data.source, "swap_mask": data.swap_mask,
                              "seed": seed}
    for name in ("original", "mixed_same", "mixed_rand"):
        result[name] = split_score(scores[name], data.labels[splits.rows[name]], multi_label)
        result["images"][name] = int(splits.rows[name].numel())
    result["gap"] = result["mixed_same"] - result["mixed_rand"]
    named, confidence = context_only_answers(scores["context_only"], data.labels[splits.rows["context_only"]], multi_label)
    result["images"]["context_only"] = int(named.numel())
    result["context_rate"] = float(named.float().mean()) if named.numel() else math.nan
    result["context_confidence"] = float(confidence.mean()) if named.numel() else math.nan
    result["chance"] = 1.0 / len(classes) if not multi_label else math.nan
    result["counts"] = splits.counts
    result["verdict"] = verdict(result)
    return result, splits, scores
