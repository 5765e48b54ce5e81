"""Diagnose and fix a classifier that is in memory: the notebook's way to ``gainet diagnose`` / ``fix``.

No checkpoint file, no gainet dataset needed: a model (any ``nn.Module`` or callable ``images ->
logits``), images as tensors with their labels and the objects' masks or boxes::

    from gainet.shortcuts import annotated_images, diagnose_model, fix_model

    test = annotated_images(test_images, test_labels, boxes=test_boxes)       # the split under test
    seen = annotated_images(train_images, train_labels, boxes=train_boxes)    # where the model learned
    report = diagnose_model(model, test, contexts=seen, classes=names)
    report.verdict, report.code, report.per_class     # the line, its code, which context leaks where
    report.write("runs/diagnose", mean=MEAN, std=STD)  # diagnosis.json / .md / index.html
    fixed = fix_model(model, seen, way="dfr")          # a copy with its last layer refit (DFR)
    fixed = fix_model(model, seen, way="finetune", train=(train_images, train_labels))
    diagnose_model(fixed.model, test, contexts=seen, classes=names).verdict

Images are ``(N, 3, H, W)`` float tensors, normalised as the model expects; labels ``(N,)`` class
indices or ``(N, C)`` multi-hot; masks ``(N, H, W)`` (object = > 0.5; 255 = ignore) or boxes
``(N, 4)`` ``(x0, y0, x1, y1)`` in pixels (one object per image; for several, give the union as a mask).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gainet.core.counterfactual import object_holes
from gainet.shortcuts.diagnose import AnnotatedImages, CounterfactualSplits, diagnose, load_annotated, object_pixels



def _multi_hot(labels: Tensor, num_classes: int | None) -> Tensor:
    if labels.dim() == 2:
        return labels.float()
    count = num_classes or int(labels.max()) + 1
    return F.one_hot(labels.long(), count).float()


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """``(N, 4)`` boxes ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive) -> ``(N, H, W)`` in {0, 1}."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    ys = torch.arange(height, dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, None, :] + 0.5
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    return ((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).float()


def annotated_images(images: Tensor | Any, labels: Tensor | None = None, *, masks: Tensor | None = None,
                     boxes: Tensor | None = None, num_classes: int | None = None, grabcut: bool = False,
                     **dataset_options: Any) -> AnnotatedImages:
    """Annotated images from tensors (or, given a gainet dataset as ``images``, its annotated images:
    :func:`gainet.shortcuts.diagnose.load_annotated` with ``dataset_options``).

    Args:
        images: ``(N, 3, H, W)`` normalised. labels: ``(N,)`` or ``(N, C)``.
        masks: ``(N, H, W)`` object masks (255 = ignore: removed with the object, never pasted).
        boxes: ``(N, 4)`` pixel boxes, when there are no masks.
        grabcut: with boxes, paste GrabCut's foreground inside each box (OpenCV).
    """
    if not isinstance(images, Tensor):
        return load_annotated(images, progress=False, **dataset_options)
    if labels is None or (masks is None) == (boxes is None):
        raise ValueError("annotated_images needs labels and exactly one of masks= or boxes=")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    n, _, height, width = images.shape
    target = _multi_hot(torch.as_tensor(labels), num_classes)
    if target.shape[0] != n:
        raise ValueError(f"{n} images but {target.shape[0]} labels")
    if masks is not None:
        masks = torch.as_tensor(masks).float()
        if masks.shape != (n, height, width):
            raise ValueError(f"masks must be (N, H, W) = {(n, height, width)}, got {tuple(masks.shape)}")
        objects = object_pixels(masks[:, None])
        holes = torch.maximum(object_holes(masks[:, None], margin=0), objects)
        source = "masks"
    else:
        objects = box_masks(boxes, height, width)
        holes = objects.clone()
        source = "boxes"
    if bool((objects.flatten(1).sum(1) == 0).any()):
        raise ValueError("some images have an empty mask or box: give each image its object")
    data = AnnotatedImages(images.float(), target, objects, holes, torch.arange(n), source,
                           "grabcut" if grabcut and source == "boxes" else "mask")
    if data.swap_mask == "grabcut":
        from gainet.data.grabcut import grabcut_mask

        for i in range(n):
            data.objects[i], _ = grabcut_mask(data.images[i], data.holes[i])
    return data


@dataclass
class Diagnosis:
    """The background test's result on an in-memory model.

    Attributes:
        result: the JSON-ready numbers (``diagnosis.json``'s content).
        splits, scores: the counterfactual splits and the logits on each (for your own plots).
    """

    result: dict[str, Any]
    splits: CounterfactualSplits
    scores: dict[str, Tensor]

    @property
    def verdict(self) -> str:
        return self.result["verdict"]

    @property
    def code(self) -> str:
        """``reads_context``, ``object_decides``, ``uncertain`` or ``no_verdict``."""
        return self.result["verdict_code"]

    @property
    def gap(self) -> tuple[float, float, float]:
        """The background gap and its 95% interval."""
        low, high = self.result["intervals"]["gap"]
        return self.result["gap"], low, high

    @property
    def per_class(self) -> list[dict[str, Any]]:
        return self.result["per_class"]

    def markdown(self, title: str = "Background test") -> str:
        from gainet.shortcuts.report import markdown

        return markdown(self.result, title)

    def _repr_markdown_(self) -> str:  # Jupyter shows the table
        return self.markdown()

    def write(self, output_dir: str | Path, *, mean: Sequence[float] = (0.0, 0.0, 0.0),
              std: Sequence[float] = (1.0, 1.0, 1.0), examples: int = 4, title: str = "Background test") -> dict[str, Path]:
        """``diagnosis.json``, ``diagnosis.md``, ``index.html`` and example images into ``output_dir``
        (``mean`` / ``std``: how the images were normalised, to show them)."""
        from gainet.shortcuts.report import write_report

        return write_report(output_dir, self.result, self.splits, self.scores, self.splits.data.labels, mean=mean,
                            std=std, examples=examples, title=title)


def _as_logits(model: nn.Module | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def forward(images: Tensor) -> Tensor:
        out = model(images)
        return out["logits"] if isinstance(out, dict) else out

    return forward


def diagnose_model(model: nn.Module | Callable[[Tensor], Tensor], test: AnnotatedImages, *,
                   classes: Sequence[str] | None = None, contexts: AnnotatedImages | None = None,
                   multi_label: bool = False, draws: int = 3, seed: int = 0, batch_size: int = 64,
                   device: torch.device | str | None = None) -> Diagnosis:
    """The background test of ``model`` on ``test``, contexts from ``contexts`` (the images it
    learned from; default: ``test``'s own, which on a clean split carry no class: the result then
    says so instead of a verdict). ``model`` is put in eval mode and left there."""
    if isinstance(model, nn.Module):
        model.eval()
        device = device or next(iter(model.parameters()), torch.zeros(0)).device
    names = list(classes) if classes is not None else [str(k) for k in range(test.labels.shape[1])]
    result, splits, scores = diagnose(_as_logits(model), test, multi_label=multi_label, classes=names,
                                      contexts=contexts, context_split="given" if contexts is not None else None,
                                      draws=draws, seed=seed, batch_size=batch_size, device=device or "cpu",
                                      progress=False)
    return Diagnosis(result, splits, scores)


@dataclass
class Fix:
    """A fixed copy of the model and what was done (``details``)."""

    model: nn.Module
    way: str
    details: dict[str, Any] = field(default_factory=dict)


def _logits(output: Any) -> Tensor:
    return output["logits"] if isinstance(output, dict) else output


def _batches(train: tuple[Tensor, Tensor] | Iterable, batch_size: int, generator: torch.Generator) -> Iterable:
    if isinstance(train, tuple):
        images, labels = train
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, images.shape[0] - batch_size + 1, batch_size):
            rows = order[start:start + batch_size]
            yield images[rows], labels[rows]
        return
    for batch in train:
        if isinstance(batch, dict):
            yield batch["image"], batch["labels"]
        else:
            yield batch[0], batch[1]


def finetune(model: nn.Module, annotated: AnnotatedImages, train: tuple[Tensor, Tensor] | Iterable, *,
             multi_label: bool = False, epochs: int = 2, lr: float = 1e-3, weight_decay: float = 1e-4,
             batch_size: int = 32, annotated_per_batch: int = 8, seed: int = 0,
             device: torch.device | str = "cpu") -> dict[str, Any]:
    """Fine-tune ``model`` in place on its training data plus counterfactual rows of ``annotated``
    (``gainet train --guidance context-swap,context-only`` in a plain loop).

    Every step: a batch of training images (their labels, cross entropy) and, from
    ``annotated_per_batch`` annotated images drawn at random, each object pasted on another annotated
    image's context (its own labels; :class:`gainet.core.batch_transforms.ContextSwap`) and each
    context alone (target "no class"; :class:`~gainet.core.batch_transforms.ContextOnly`), the rows
    normalised as a BatchNorm batch of their own (as the trainer does, issue 34); the rows' loss is
    their mean soft cross entropy, added with weight 1.

    Args:
        train: ``(images, labels)`` tensors or an iterable of such batches (or of gainet sample dicts).
    Returns:
        ``{"steps", "epochs", "rows_per_step", "final_loss"}``.
    """
    from gainet.core.backbone import own_batch_statistics
    from gainet.core.batch_transforms import ContextOnly, ContextSwap
    from gainet.shortcuts.heads import head_loss

    generator = torch.Generator().manual_seed(seed)
    num_classes = annotated.labels.shape[1]
    masks = annotated.labels[:, :, None, None] * annotated.holes[:, None]  # (N, C, H, W): each class's object
    swap, alone = ContextSwap(), ContextOnly(multi_label=multi_label)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    model.train()
    steps, rows_seen, loss = 0, 0, torch.zeros(())
    for _ in range(epochs):
        for images, labels in _batches(train, batch_size, generator):
            pick = torch.randperm(len(annotated), generator=generator)[:annotated_per_batch]
            built = alone.contexts(annotated.images[pick], annotated.labels[pick], masks[pick], None, generator)
            rows = [swap(annotated.images[pick], annotated.labels[pick], masks[pick], None,
                         paste_masks=annotated.objects[pick], generator=generator, contexts=built),
                    alone.rows(built, num_classes)]
            extra = torch.cat([r.images for r in rows])
            targets = torch.cat([r.targets for r in rows]).float()
            logits = _logits(model(images.float().to(device)))
            originals = _multi_hot(torch.as_tensor(labels), num_classes).to(logits.device)
            loss = head_loss(logits, originals, multi_label)
            if extra.shape[0]:
                # The rows are a BatchNorm batch of their own, as in the trainer (GAIN's
                # counterfactual_batchnorm="own", issue 34).
                with own_batch_statistics(model, extra.shape[0]):
                    extra_logits = _logits(model(extra.to(device)))
                loss = loss + head_loss(extra_logits, targets.to(logits.device), multi_label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            rows_seen += int(extra.shape[0])
    model.eval()
    return {"steps": steps, "epochs": epochs, "rows_per_step": rows_seen / max(1, steps),
            "final_loss": float(loss.detach()) if steps else math.nan}


def fix_model(model: nn.Module, annotated: AnnotatedImages, *, way: str = "dfr", multi_label: bool = False,
              train: tuple[Tensor, Tensor] | Iterable | None = None, inplace: bool = False, seed: int = 0,
              batch_size: int = 64, device: torch.device | str | None = None, **options: Any) -> Fix:
    """Fix ``model`` (a copy, unless ``inplace``) with ``annotated``'s objects and contexts.

    Ways: ``dfr`` (DFR: the last ``nn.Linear`` refit, group-balanced, l1, averaged resamples;
    :func:`gainet.shortcuts.fix.fix_dfr`), ``dfr-l2`` (:func:`~gainet.shortcuts.fix.fix_dfr_plain`),
    ``finetune`` (:func:`finetune` on ``train`` plus counterfactual rows; ``options`` go to it) and
    ``finetune-dfr`` (``finetune``, then ``dfr``). ``batch_size``: images per forward pass, in the
    fine-tuning's training batches too.
    """
    from gainet.shortcuts.fix import fix_dfr, fix_dfr_plain

    ways = ("dfr", "dfr-l2", "finetune", "finetune-dfr")
    if way not in ways:
        raise ValueError(f"way must be one of {', '.join(ways)}, got {way!r}")
    if way.startswith("finetune") and train is None:
        raise ValueError(f"way={way!r} fine-tunes on the training data: give train=(images, labels) or a loader")
    fixed = model if inplace else copy.deepcopy(model)
    device = device or next(fixed.parameters()).device
    details: dict[str, Any] = {}
    if way.startswith("finetune"):
        details["finetune"] = finetune(fixed, annotated, train, multi_label=multi_label, seed=seed, device=device,
                                       batch_size=batch_size, **options)
    if way in ("dfr", "finetune-dfr", "dfr-l2"):
        refit = fix_dfr_plain if way == "dfr-l2" else fix_dfr
        details["dfr"] = refit(_Logits(fixed), fixed, annotated, multi_label=multi_label, seed=seed,
                               batch_size=batch_size, device=device)
    fixed.eval()
    return Fix(fixed, way, details)


class _Logits(nn.Module):
    """``model`` whose dict outputs are reduced to their logits (a GAIN wrapper's forward)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        out = self.model(images)
        return out["logits"] if isinstance(out, dict) else out
