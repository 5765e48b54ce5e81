"""The model under diagnosis: a gainet checkpoint, or any classifier with a local state-dict file.

Loading reuses :func:`gainet.evaluation.jobs.load_trained` (checkpoints, ``weights_only=True``) and
:func:`gainet.models.load_classifier` (``--model`` + ``--weights``, as ``gainet explain`` takes them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gainet.core import GAIN
from gainet.training.config import TrainConfig


@dataclass
class Subject:
    """A classifier and what it expects.

    Attributes:
        gain: the classifier wrapped in :class:`GAIN` (eval mode); ``gain(images)`` gives logits ``(B, C)``.
        classes: ``C`` class names (a ``--model``'s outputs are taken in the dataset's class order).
        multi_label: sigmoid outputs (mAP) instead of softmax (accuracy).
        config: a :class:`TrainConfig` that rebuilds the architecture (``build_gain``) and names the
            dataset; a checkpoint's own, or one made for a ``--model``.
        source: the file the weights came from.
        kind: ``"checkpoint"`` or ``"model"``.
    """

    gain: GAIN
    classes: list[str]
    multi_label: bool
    config: TrainConfig
    source: str
    kind: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def device(self) -> torch.device:
        return next(self.gain.parameters()).device

    def copy(self) -> "Subject":
        """A deep copy whose weights can change without touching this one."""
        return Subject(copy.deepcopy(self.gain), list(self.classes), self.multi_label, self.config, self.source,
                       self.kind, self.mean, self.std)

    def checkpoint_state(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """A gainet checkpoint of the current weights (loadable by ``evaluate`` / ``explain`` / ``diagnose``)."""
        return {"format": "gainet-checkpoint-1", "config": self.config.to_dict(), "epoch": 0,
                "classes": list(self.classes), "multi_label": bool(self.multi_label), "mean": list(self.mean),
                "std": list(self.std), "model": {k: v.detach().cpu() for k, v in self.gain.state_dict().items()},
                "best_score": None, "best_epoch": None, "history": [], "final": {}, **(extra or {})}


def checkpoint_subject(path: str | Path, device: torch.device) -> Subject:
    """The model of a gainet checkpoint (``weights_only=True``)."""
    from gainet.evaluation.jobs import load_trained

    gain, config, state = load_trained(path, device)
    return Subject(gain, [str(c) for c in state["classes"]], bool(state["multi_label"]), config, str(path),
                   "checkpoint", tuple(state["mean"]), tuple(state["std"]))


def model_subject(name: str, weights: str | Path, *, classes: list[str], multi_label: bool, config: TrainConfig,
                  device: torch.device, mean: tuple[float, ...] = (), std: tuple[float, ...] = ()) -> Subject:
    """A classifier trained outside gainet: ``name`` as ``gainet explain --model`` takes it, its
    weights from a local state-dict file (``weights_only=True``). Its head must have one output per
    class of the dataset (``classes``, in the dataset's order)."""
    from gainet.models import load_classifier

    model = load_classifier(name, weights=weights)
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, config.image_size, config.image_size)).shape[1]
    if outputs != len(classes):
        raise ValueError(f"{weights}: the model has {outputs} outputs but the dataset has {len(classes)} classes "
                         f"({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''}); give weights trained on "
                         "these classes, in this order")
    width = model.features[0].out_channels if name == "small-cnn" else config.model_width
    config = config.replace(model=name, model_width=width, pretrained=None, method="cam")
    gain = GAIN(model, None, multi_label=multi_label, probe_size=config.image_size).to(device).eval()
    return Subject(gain, list(classes), multi_label, config, str(weights), "model", mean, std)
