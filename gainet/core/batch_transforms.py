"""Counterfactual batch transforms: extra rows for the training batch, built from a few masks or boxes.

Modelled on torchvision's ``transforms.v2.CutMix`` / ``MixUp``: a transform takes a collated
batch and returns something to train on, here *extra rows* that go through the network with the
originals (:class:`gainet.core.GAIN`'s ``counterfactuals``: by default a BatchNorm batch of their
own, issue 34; a distributed run makes the same calls on every rank). Each
transform is plain PyTorch, tensors in and out, usable in anyone's loop or in a DataLoader's
``collate_fn`` (:class:`CounterfactualCollate`), where it costs the training process nothing.

- :class:`ContextSwap`: each supervised object pasted on other images' contexts (another
  class's first, ``partners`` each); target: the classes whose pixels were pasted.
- :class:`ContextOnly`: each supervised image with its object removed and the hole filled;
  target: "none of the classes" (all-zero for multi-label models, uniform for single-label).
- :class:`MaskedCounterpart`: ActDiff's counterpart, the same image with the outside of its
  object shuffled; its target is unused by ActDiff (the activations are compared instead).

Inputs of every transform::

    images      (B, 3, H, W) float, normalised
    labels      (B, C) multi-hot (single-label: one-hot) or (B,) indices
    masks       (B, C, H, W) per-class masks or box masks in {0, 1}; 255 = ignore (never object)
    supervised  (B,) bool: rows whose masks may be used
    paste_masks (B, H, W) in {0, 1} or None: what a swap pastes (e.g. GrabCut inside the boxes)

Output: :class:`CounterfactualRows`; nothing is raised for bad input, it is skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import default_collate

from gainet.core.counterfactual import Counterfactuals, _multi_hot, context_only, context_swap, masked_counterpart

KINDS = ("context-swap", "context-only", "counterpart")


@dataclass
class CounterfactualRows:
    """Rows to append to a batch of ``B`` originals.

    Attributes:
        images: ``(S, 3, H, W)``.
        targets: ``(S, C)`` float training targets: hard multi-hot labels (swaps), all-zero
            (multi-label context-only) or a distribution (single-label context-only: uniform).
        labels: ``(S, C)`` multi-hot: the classes each row concerns (pasted / erased / source's).
        weights: ``(S,)`` float per-row loss weights.
        source: ``(S,)`` long, the original row each one was built from (its object, or for a
            context-only image its context).
        kind: ``(S,)`` long index into :data:`KINDS`.
        counts: what was built and skipped, and why (``empty_mask``, ``no_context``,
            ``no_partner``, ``same_class_partner``, ``no_supervised``, and ``rows/<kind>``).
    """

    images: Tensor
    targets: Tensor
    labels: Tensor
    weights: Tensor
    source: Tensor
    kind: Tensor
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, images: Tensor, num_classes: int, counts: dict[str, int] | None = None) -> "CounterfactualRows":
        """No rows, shaped after ``images`` ``(B, 3, H, W)``."""
        index = torch.zeros(0, dtype=torch.long, device=images.device)
        targets = images.new_zeros((0, num_classes))
        return cls(images.new_zeros((0, *images.shape[1:])), targets, targets.clone(), images.new_zeros(0), index,
                   index.clone(), dict(counts or {}))

    @classmethod
    def from_counterfactuals(cls, built: Counterfactuals, kind: str, targets: Tensor, weight: float) -> "CounterfactualRows":
        size = built.images.shape[0]
        code = KINDS.index(kind)
        counts = {**built.counts, f"rows/{kind}": size}
        return cls(built.images, targets.to(built.images.dtype), built.labels.to(built.images.dtype),
                   built.images.new_full((size,), float(weight)), built.source,
                   torch.full((size,), code, dtype=torch.long, device=built.images.device), counts)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @staticmethod
    def cat(parts: Sequence["CounterfactualRows"]) -> "CounterfactualRows":
        """Rows of several transforms, in order; counts are summed by key."""
        if not parts:
            raise ValueError("cat needs at least one CounterfactualRows")
        counts: dict[str, int] = {}
        for part in parts:
            for key, value in part.counts.items():
                counts[key] = counts.get(key, 0) + int(value)
        fields = ("images", "targets", "labels", "weights", "source", "kind")
        return CounterfactualRows(*(torch.cat([getattr(p, f) for p in parts]) for f in fields), counts)

    def of_kind(self, kind: str) -> tuple[Tensor, "CounterfactualRows"]:
        """``(positions, rows)``: the positions ``(S_k,)`` among these rows of the rows of ``kind``."""
        positions = (self.kind == KINDS.index(kind)).nonzero().flatten()
        return positions, self.select(positions)

    def select(self, positions: Tensor) -> "CounterfactualRows":
        return replace(self, images=self.images[positions], targets=self.targets[positions],
                       labels=self.labels[positions], weights=self.weights[positions],
                       source=self.source[positions], kind=self.kind[positions])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "CounterfactualRows":
        moved = {f: getattr(self, f).to(device, non_blocking=non_blocking)
                 for f in ("images", "targets", "labels", "weights", "source", "kind")}
        return replace(self, **moved)

    def pin_memory(self) -> "CounterfactualRows":
        """For ``DataLoader(pin_memory=True)``."""
        pinned = {f: getattr(self, f).pin_memory() for f in ("images", "targets", "labels", "weights", "source", "kind")}
        return replace(self, **pinned)


def _supervised(images: Tensor, supervised: Tensor | None) -> Tensor:
    if supervised is None:
        return torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
    return supervised.to(device=images.device, dtype=torch.bool)


class ContextOnly:
    """The object removed, its hole filled from the context; target "none of the classes".

    Args:
        multi_label: all-zero targets (multi-label models) or the uniform distribution
            (single-label models, where "no class" has no label of its own).
        weight: per-row loss weight.
        margin, ignore_margin, smoothing_steps, noise: see :func:`~gainet.core.counterfactual.context_only`.
    """

    kind = "context-only"

    def __init__(self, *, multi_label: bool = True, weight: float = 1.0, margin: int = 1, ignore_margin: int = 4,
                 smoothing_steps: int = 8, noise: bool = True) -> None:
        self.multi_label = multi_label
        self.weight = weight
        self.fill = dict(margin=margin, ignore_margin=ignore_margin, smoothing_steps=smoothing_steps, noise=noise)

    def contexts(self, images: Tensor, labels: Tensor, masks: Tensor, supervised: Tensor | None,
                 generator: torch.Generator | None = None) -> Counterfactuals:
        """The filled contexts (also what :class:`ContextSwap` pastes on)."""
        return context_only(images, masks, labels, supervised, generator=generator, **self.fill)

    def rows(self, built: Counterfactuals, num_classes: int) -> CounterfactualRows:
        size = built.images.shape[0]
        targets = built.images.new_zeros((size, num_classes))
        if not self.multi_label:
            targets += 1.0 / num_classes
        return CounterfactualRows.from_counterfactuals(built, self.kind, targets, self.weight)

    def __call__(self, images: Tensor, labels: Tensor, masks: Tensor, supervised: Tensor | None = None,
                 paste_masks: Tensor | None = None, generator: torch.Generator | None = None) -> CounterfactualRows:
        return self.rows(self.contexts(images, labels, masks, supervised, generator), masks.shape[1])


class ContextSwap:
    """Each supervised object pasted on ``partners`` other supervised images' filled contexts
    (another class's first); target: exactly the classes whose pixels were pasted.

    Args:
        partners: contexts per object (distinct images of the batch).
        weight: per-row loss weight.
        margin, ignore_margin, smoothing_steps, noise: the contexts' fill (:class:`ContextOnly`).
    """

    kind = "context-swap"

    def __init__(self, *, partners: int = 1, weight: float = 1.0, margin: int = 1, ignore_margin: int = 4,
                 smoothing_steps: int = 8, noise: bool = True) -> None:
        if partners < 1:
            raise ValueError(f"partners must be >= 1, got {partners}")
        self.partners = partners
        self.weight = weight
        self.fill = dict(margin=margin, ignore_margin=ignore_margin, smoothing_steps=smoothing_steps, noise=noise)

    def __call__(self, images: Tensor, labels: Tensor, masks: Tensor, supervised: Tensor | None = None,
                 paste_masks: Tensor | None = None, generator: torch.Generator | None = None, *,
                 contexts: Counterfactuals | None = None) -> CounterfactualRows:
        built = context_swap(images, masks, labels, supervised, paste_masks=paste_masks, contexts=contexts,
                             partners=self.partners, generator=generator, **self.fill)
        return CounterfactualRows.from_counterfactuals(built, self.kind, built.labels, self.weight)


class MaskedCounterpart:
    """ActDiff's counterpart: the image with the pixels outside its object shuffled.

    Args:
        margin: dilation of the object before the outside is shuffled.
        weight: per-row loss weight.
    """

    kind = "counterpart"

    def __init__(self, *, margin: int = 1, weight: float = 1.0) -> None:
        self.margin = margin
        self.weight = weight

    def __call__(self, images: Tensor, labels: Tensor, masks: Tensor, supervised: Tensor | None = None,
                 paste_masks: Tensor | None = None, generator: torch.Generator | None = None) -> CounterfactualRows:
        built = masked_counterpart(images, masks, labels, supervised, margin=self.margin, generator=generator)
        return CounterfactualRows.from_counterfactuals(built, self.kind, built.labels, self.weight)


class CounterfactualTransforms:
    """Several transforms on one batch; :class:`ContextSwap` reuses :class:`ContextOnly`'s filled
    contexts when both are given (one fill per image).

    ``__call__(images, labels, masks, supervised, paste_masks, generator)`` returns the rows of
    every transform, in the given order, with their counts (plus ``no_supervised``: 1 when the
    batch had no supervised image).
    """

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def __call__(self, images: Tensor, labels: Tensor, masks: Tensor, supervised: Tensor | None = None,
                 paste_masks: Tensor | None = None, generator: torch.Generator | None = None) -> CounterfactualRows:
        num_classes = masks.shape[1]
        labels = _multi_hot(labels, num_classes, images.dtype)
        chosen = _supervised(images, supervised)
        no_supervised = {"no_supervised": int(not bool(chosen.any()))}
        if not self.transforms or not bool(chosen.any()):
            return CounterfactualRows.empty(images, num_classes, no_supervised)
        filler = next((t for t in self.transforms if isinstance(t, ContextOnly)), None)
        contexts = None
        if filler is not None and any(isinstance(t, ContextSwap) for t in self.transforms):
            contexts = filler.contexts(images, labels, masks, chosen, generator)
        parts = []
        for transform in self.transforms:
            if isinstance(transform, ContextOnly) and contexts is not None:
                parts.append(transform.rows(contexts, num_classes))
            elif isinstance(transform, ContextSwap) and contexts is not None:
                part = transform(images, labels, masks, chosen, paste_masks, generator, contexts=contexts)
                # The shared contexts' skips are counted once, by ContextOnly's rows.
                part.counts = {k: v for k, v in part.counts.items() if k not in ("empty_mask", "no_context")} | {
                    "empty_mask": part.counts["empty_mask"] - contexts.counts["empty_mask"]}
                parts.append(part)
            else:
                parts.append(transform(images, labels, masks, chosen, paste_masks, generator))
        rows = CounterfactualRows.cat(parts)
        rows.counts.update(no_supervised)
        return rows


class CounterfactualCollate:
    """A ``collate_fn`` that appends counterfactual rows to each batch, in the DataLoader workers.

    ``collate(samples)`` collates with ``collate_fn`` (default: ``default_collate``), then runs
    ``transforms`` (a :class:`CounterfactualTransforms` or one transform) on the batch's
    ``image``, ``labels``, ``masks_key``, ``supervised_key`` and, when present, ``paste_key``
    entries, and stores the :class:`CounterfactualRows` under ``batch["counterfactual"]``. Random
    draws use the worker's (seeded) default generator, so a seeded DataLoader is reproducible.
    """

    def __init__(self, transforms: Callable[..., CounterfactualRows], *, collate_fn: Callable = default_collate,
                 masks_key: str = "target_masks", supervised_key: str = "supervised", paste_key: str = "paste_mask") -> None:
        self.transforms = transforms
        self.collate_fn = collate_fn
        self.masks_key, self.supervised_key, self.paste_key = masks_key, supervised_key, paste_key

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate_fn(samples)
        batch["counterfactual"] = self.transforms(
            batch["image"], batch["labels"], batch[self.masks_key], batch.get(self.supervised_key),
            batch.get(self.paste_key))
        return batch
