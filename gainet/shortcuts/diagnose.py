"""The background test of "Noise or Signal" (Xiao et al., ICLR 2021, ImageNet-9) on annotated images.

From images whose objects are known (pixel masks, or boxes, optionally refined by GrabCut) five
splits are built, each image keeping its own object at its own place:

- ``original``: the image as it is;
- ``only_fg``: the object on a neutral fill (the data's mean colour): is the object alone recognised?
- ``mixed_same``: object ``i`` pasted onto the filled context of an image ``j`` of the *same* labels
  (``m_i * x_i + (1 - m_i) * ctx_j``);
- ``mixed_rand``: the same onto the context of an image ``j`` whose labels share *no* class with ``i``'s;
- ``context_only``: ``ctx_j`` alone, image ``j`` with its object removed and the hole filled from the
  surrounding pixels (:func:`gainet.core.counterfactual.fill_from_context`); the test counts how
  often the model still names the class the context came with.

The contexts ``j`` come from where the model learned what a class's context looks like: its
training images (``contexts=``), not the split under test. On a clean test split whose backgrounds
are random, that split's own "context of the same class" carries no class, and a model that reads
the context would score alike on both mixed splits.

The *background gap* is the score on ``mixed_same`` minus the score on ``mixed_rand``: a model that
reads the object scores the same on both; a model that reads the context loses what the
context gave it. Every score comes with a 95% bootstrap interval, paired over the objects
(:mod:`gainet.shortcuts.evidence`); the verdict's rule is in :mod:`gainet.shortcuts.verdict`.
Scores: top-1 accuracy (single-label) or mAP (multi-label).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from gainet.core.counterfactual import dilate, fill_from_context, object_holes
from gainet.io.progress import progress_bar
from gainet.shortcuts.evidence import (
    RESAMPLES,
    SplitAnswers,
    _unit_counts,
    chance_score,
    context_named,
    context_probe,
    interval,
    named_rate_chance,
    point_score,
    resampled_scores,
)

SPLITS = ("original", "only_fg", "mixed_same", "mixed_rand", "context_only")
OBJECT_SPLITS = ("original", "only_fg", "mixed_same", "mixed_rand")
DRAWS = 3
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
            GrabCut inside the box); never VOC's ignore (255) band.
        holes: ``(N, H, W)`` in {0, 1}: the pixels removed to make the context (the mask or the
            whole box, never smaller than ``objects``), with the ignore band near the object (VOC
            draws a 255 band along every outline: left in, the context keeps the object's shape).
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


def resolve_swap_mask(swap_mask: str) -> str:
    """``"auto"`` -> ``"grabcut"`` where OpenCV is installed, else ``"mask"``; others unchanged."""
    if swap_mask != "auto":
        return swap_mask
    from importlib.util import find_spec

    return "grabcut" if find_spec("cv2") is not None else "mask"


def load_annotated(dataset: Any, *, source: str = "auto", swap_mask: str = "mask", indices: Sequence[int] | None = None,
                   limit: int | None = None, where: str = "split", progress: bool = True,
                   min_images: int = MIN_IMAGES, seed: int = 0) -> AnnotatedImages:
    """The images of ``dataset`` (a gainet dataset: sample dicts) that carry masks or boxes.

    Args:
        source: ``"masks"``, ``"boxes"`` or ``"auto"`` (masks where enough images have them, else
            boxes: a box pasted whole carries a border of its own context, which a model that reads
            the object can still stumble on; measured in docs/shortcuts.md).
        swap_mask: ``"mask"`` (paste the mask or the whole box), ``"grabcut"`` (boxes: GrabCut's
            foreground inside the box, :func:`gainet.data.grabcut.grabcut_mask`; needs OpenCV) or
            ``"auto"`` (GrabCut for boxes where OpenCV is installed).
        indices: only these dataset positions (default: every annotated one).
        limit: at most this many images (a seeded random choice among the annotated ones, so a
            folder sorted by class still gives every class).
        seed: of that choice.
        where: names the split in the error message.
        min_images: fewer annotated images (or fewer than 2 classes among them) is a one-line
            ``ValueError`` saying what to annotate.
    """
    from gainet.training.data import supervision_candidates

    if source not in ("auto", "masks", "boxes"):
        raise ValueError(f"--supervision must be masks, boxes or auto, got {source!r}")
    if swap_mask not in ("mask", "grabcut", "auto"):
        raise ValueError(f"--swap-mask must be auto, mask or grabcut, got {swap_mask!r}")
    swap_mask = resolve_swap_mask(swap_mask)
    if indices is None:
        if source == "auto":  # masks first: a box pastes a border of its own context along with the object
            masks = supervision_candidates(dataset, "masks")
            source, indices = ("masks", masks) if len(masks) >= min_images else ("boxes", supervision_candidates(dataset, "boxes"))
            if len(indices) < min_images and len(masks) > len(indices):
                source, indices = "masks", masks
        else:
            indices = supervision_candidates(dataset, source)
    elif source == "auto":
        source = "boxes"
    indices = list(indices)
    if limit and len(indices) > limit:
        pick = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))[:limit]
        indices = [indices[i] for i in sorted(pick.tolist())]
    images, labels, objects, holes = [], [], [], []
    key = "masks" if source == "masks" else "box_masks"
    for i in progress_bar(indices, enabled=progress, desc="read annotated images", leave=False):
        sample = dataset[i]
        images.append(sample["image"])
        labels.append(sample["labels"])
        target = sample[key][None].float()
        objects.append(object_pixels(target)[0])
        holes.append(torch.maximum(object_holes(target, margin=0)[0], objects[-1]))
    if images:
        images_t, labels_t = torch.stack(images), torch.stack(labels).float()
        holes_t, objects_t = torch.stack(holes), torch.stack(objects)
    else:
        images_t = labels_t = holes_t = objects_t = torch.zeros(0)
    keep = objects_t.flatten(1).sum(1) > 0 if len(images) else torch.zeros(0, dtype=torch.bool)
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


def draw_partners(labels: Tensor, same: bool, usable: Tensor, generator: torch.Generator,
                  context_labels: Tensor | None = None) -> Tensor:
    """For each object, a seeded random context: one of the same labels (``same=True``) or one
    whose labels share no class (``same=False``); ``-1`` where none exists.

    Args:
        labels: ``(N, C)`` multi-hot labels of the objects.
        usable: ``(M,)`` bool, contexts that can be used (a fillable context).
        context_labels: ``(M, C)`` labels of the contexts; ``None``: the objects' own images are the
            contexts (``M = N``) and an object never gets its own image's context.
    Returns:
        ``(N,)`` long, rows of the contexts.
    """
    own = context_labels is None
    binary = labels > 0.5
    other = binary if own else context_labels > 0.5
    if same:
        allowed = (binary[:, None, :] == other[None, :, :]).all(-1)
    else:
        allowed = ~(binary[:, None, :] & other[None, :, :]).any(-1)
    allowed &= usable[None, :]
    if own:
        allowed.fill_diagonal_(False)
    noise = torch.rand(allowed.shape, generator=generator)
    noise = torch.where(allowed, noise, torch.full_like(noise, -1.0))
    best = noise.argmax(1)
    return torch.where(allowed.any(1), best, torch.full_like(best, -1))


def paste(objects: Tensor, images: Tensor, contexts: Tensor) -> Tensor:
    """``m * x + (1 - m) * ctx``: ``objects`` ``(N, H, W)``, ``images`` and ``contexts`` ``(N, 3, H, W)``
    (a context may broadcast: ``(1, 3, 1, 1)`` for a flat fill)."""
    m = objects[:, None].to(images.dtype)
    return m * images + (1.0 - m) * contexts


@dataclass
class CounterfactualSplits:
    """The splits of the test, as recipes; images are made on demand (:meth:`images`), so a split
    of a few thousand 224 px images never sits in memory at once.

    Attributes:
        data: the objects under test. context_data: where the contexts come from (may be ``data``).
        contexts: ``(M, 3, H, W)`` ``context_data``'s images with their objects removed and filled.
        rows: split name -> ``(n_s,)`` the object row of ``data`` each image shows (``context_only``:
            the row of ``context_data``).
        partners: split name -> ``(n_s,)`` row of ``context_data`` whose context was used (``-1``:
            none, the original image or the neutral fill).
        counts: objects without a partner, contexts that could not be filled.
    """

    data: AnnotatedImages
    context_data: AnnotatedImages
    contexts: Tensor
    rows: dict[str, Tensor]
    partners: dict[str, Tensor]
    counts: dict[str, int] = field(default_factory=dict)

    def images(self, name: str, positions: Tensor | Sequence[int] | slice | None = None) -> Tensor:
        """The images of split ``name`` at ``positions`` (default: all) ``(n, 3, H, W)``."""
        rows, partners = self.rows[name], self.partners[name]
        if positions is not None:
            rows, partners = rows[positions], partners[positions]
        rows, partners = torch.atleast_1d(rows), torch.atleast_1d(partners)
        if name == "context_only":
            return self.contexts[rows]
        if name == "original":
            return self.data.images[rows]
        if name == "only_fg":  # 0 in normalised space: the data's mean colour, a neutral fill
            return paste(self.data.objects[rows], self.data.images[rows], torch.zeros(1, 1, 1, 1))
        return paste(self.data.objects[rows], self.data.images[rows], self.contexts[partners])

    def labels(self, name: str) -> Tensor:
        """``(n_s, C)`` the labels each image of split ``name`` is scored on."""
        source = self.context_data if name == "context_only" else self.data
        return source.labels[self.rows[name]]


def build_splits(data: AnnotatedImages, *, contexts: AnnotatedImages | None = None, draws: int = 1, seed: int = 0,
                 margin: int = 1) -> CounterfactualSplits:
    """The original, only-FG, mixed-same, mixed-rand and context-only splits (seeded).

    Args:
        data: the objects under test.
        contexts: the images whose contexts are pasted behind them and shown alone: the images the
            model learned from (the training split), so that "a context of the same class" is
            one that went with the class where the model learned it. ``None``: ``data`` itself.
        draws: contexts drawn per object for each mixed split (more draws: a score less tied to
            which context each object happened to get).
    """
    generator = torch.Generator().manual_seed(seed)
    context_data = data if contexts is None else contexts
    filled, ok = contexts_of(context_data, margin=margin, generator=generator)
    n = len(data)
    everyone = torch.arange(n)
    none = torch.full((n,), -1)
    usable = ok.nonzero().flatten()
    rows = {"original": everyone, "only_fg": everyone, "context_only": usable}
    partners = {"original": none, "only_fg": none, "context_only": usable}
    counts = {"no_context": int((~ok).sum())}
    for name, same in (("mixed_same", True), ("mixed_rand", False)):
        sources, others = [], []
        for _ in range(max(1, draws)):
            partner = draw_partners(data.labels, same, ok, generator,
                                    context_labels=None if contexts is None else context_data.labels)
            keep = partner >= 0
            sources.append(everyone[keep])
            others.append(partner[keep])
        counts[f"{name}_no_partner"] = int((partner < 0).sum())
        rows[name], partners[name] = torch.cat(sources), torch.cat(others)
    return CounterfactualSplits(data, context_data, filled, rows, partners, counts)


@torch.no_grad()
def predict(model: Callable[[Tensor], Tensor], images: Tensor | Callable[[slice], Tensor], *, count: int | None = None,
            batch_size: int = 64, device: torch.device | str = "cpu", progress: bool = False, desc: str = "") -> Tensor:
    """Logits ``(N, C)`` of ``model`` on ``images`` ``(N, 3, H, W)`` (or ``images(slice) -> batch``
    with ``count`` images), batch by batch (CPU result)."""
    total = images.shape[0] if isinstance(images, Tensor) else int(count or 0)
    out = []
    starts = range(0, total, batch_size)
    for start in progress_bar(starts, enabled=progress, desc=desc, leave=False):
        window = slice(start, start + batch_size)
        batch = images[window] if isinstance(images, Tensor) else images(window)
        out.append(model(batch.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def _answers(splits: CounterfactualSplits, scores: dict[str, Tensor]) -> dict[str, SplitAnswers]:
    return {name: SplitAnswers(scores[name], splits.labels(name), splits.rows[name]) for name in OBJECT_SPLITS}


def measure(splits: CounterfactualSplits, scores: dict[str, Tensor], *, multi_label: bool,
            seed: int = 0) -> dict[str, Any]:
    """Every number of the test from the logits of each split, with bootstrap intervals.

    Returns:
        JSON-ready: per object split its score; ``gap`` (mixed-same - mixed-rand), ``paste_cost``
        (original - mixed-same), ``context_rate`` / ``context_confidence``; ``intervals`` (name ->
        ``[low, high]``, 95% percentile bootstrap, paired over the objects); ``chances`` (per object
        split, its answers' score against other images' labels), ``chance`` (the original's) and
        ``context_chance``.
    """
    answers = _answers(splits, scores)
    n = len(splits.data)
    result: dict[str, Any] = {name: point_score(answers[name], multi_label) for name in OBJECT_SPLITS}
    result["gap"] = result["mixed_same"] - result["mixed_rand"]
    result["paste_cost"] = result["original"] - result["mixed_same"]
    samples = resampled_scores(answers, n, multi_label=multi_label, seed=seed)
    samples["gap"] = samples["mixed_same"] - samples["mixed_rand"]
    samples["paste_cost"] = samples["original"] - samples["mixed_same"]
    labels = splits.labels("context_only")
    named, matrix, confidence = context_named(scores["context_only"], labels, multi_label)
    result["context_rate"] = float(named.float().mean()) if named.numel() else math.nan
    result["context_confidence"] = float(confidence.mean()) if named.numel() else math.nan
    result["context_chance"] = named_rate_chance(matrix)
    if named.numel():
        counts = _unit_counts(named.numel(), RESAMPLES, torch.Generator().manual_seed(seed + 1))
        samples["context_rate"] = (counts @ named.float()) / named.numel()
    result["intervals"] = {name: list(interval(samples[name])) for name in samples}
    result["chances"] = {name: chance_score(scores[name], splits.labels(name), multi_label, seed=seed)
                         for name in ("original", "only_fg", "mixed_same")}
    result["chance"] = result["chances"]["original"]
    return result


def diagnose(model: Callable[[Tensor], Tensor], data: AnnotatedImages, *, multi_label: bool, classes: Sequence[str],
             contexts: AnnotatedImages | None = None, context_split: str | None = None, draws: int = DRAWS,
             seed: int = 0, margin: int = 1, batch_size: int = 64, device: torch.device | str = "cpu",
             progress: bool = True) -> tuple[dict[str, Any], CounterfactualSplits, dict[str, Tensor]]:
    """Run the background test.

    Args:
        model: images ``(B, 3, H, W)`` -> logits ``(B, C)`` (eval mode).
        data: the annotated images under test (:func:`load_annotated`).
        contexts: the annotated images the contexts come from (the model's training
            distribution); ``None``: ``data``'s own (the result says so: on a split whose
            backgrounds are random, its contexts carry no class and the test cannot tell).
        context_split: names where ``contexts`` came from, for the result.
        multi_label: score with mAP and sigmoids instead of accuracy and softmax.
        classes: ``C`` names.
        draws: contexts per object in each mixed split.

    Returns:
        ``result`` (JSON-ready, :func:`measure`'s numbers plus ``verdict``, ``verdict_code``,
        ``contexts`` (where from, how many, the model-free probe), ``per_class``), the splits, and
        the logits per split.
    """
    from gainet.shortcuts.leaks import annotate_first, per_class_table
    from gainet.shortcuts.verdict import decide

    if isinstance(model, nn.Module):
        model.eval()
    splits = build_splits(data, contexts=contexts, draws=draws, seed=seed, margin=margin)
    scores = {name: predict(model, lambda window, n=name: splits.images(n, window), count=int(splits.rows[name].numel()),
                            batch_size=batch_size, device=device, progress=progress, desc=f"diagnose {name}")
              for name in SPLITS}
    result: dict[str, Any] = {"metric": "mAP" if multi_label else "accuracy", "classes": list(classes),
                              "multi_label": bool(multi_label), "source": data.source, "swap_mask": data.swap_mask,
                              "seed": seed, "draws": draws}
    result.update(measure(splits, scores, multi_label=multi_label, seed=seed))
    result["images"] = {name: int(splits.rows[name].numel()) for name in SPLITS}
    result["objects"] = len(data)
    filled = splits.contexts[splits.rows["context_only"]]
    result["contexts"] = {"split": context_split or ("the split under test" if contexts is None else "given"),
                          "same_as_test": contexts is None, "images": int(filled.shape[0]),
                          "probe": context_probe(filled, splits.labels("context_only"), multi_label=multi_label,
                                                 seed=seed)}
    result["counts"] = splits.counts
    result["per_class"] = per_class_table(splits, scores, list(classes), multi_label)
    result["annotate_first"] = annotate_first(result["per_class"], result["chance"])
    code, line = decide(result)
    result["verdict_code"], result["verdict"] = code, line
    return result, splits, scores
