"""The GAIN module: S_cl, S_am and S_e streams around any classifier (METHOD.md, Eq. 1-8)."""

from __future__ import annotations

import logging

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from gainet.core.attention import attention_maps, gradcam_weights, label_pairs, label_slots, linear_head_weights
from gainet.core.backbone import (
    AttentionBackbone,
    batchnorm_in_eval_mode,
    batchnorm_with_batch_stats_only,
    call_with_constant_parameters,
    own_batch_statistics,
)
from gainet.core.collectives import agreed_maximum, synchronising_modules
from gainet.core.losses import (
    attention_mining_loss,
    class_scores,
    classification_loss,
    empty_target_pairs,
    external_supervision_loss,
    gain_loss,
)
from gainet.core.masking import erase, soft_mask

AmGradient = Literal["all", "attention"]
ErasedBatchNorm = Literal["batch", "running"]
CounterfactualBatchNorm = Literal["own", "shared"]


@dataclass
class GAINOutput:
    """What one GAIN training/validation forward returns.

    Attributes:
        loss: the total loss to back-propagate (L_cl, L_self or L_ext).
        loss_cl, loss_am, loss_e: the terms (zero tensors when a term is off).
        scores: ``(B, C)`` logits of the clean images (S_cl).
        pairs: ``(P, 2)`` ``(image_index, class_index)``, one per ground-truth label.
        attention: ``(P, H, W)`` normalised maps in [0, 1], one per pair, part of the graph;
            ``None`` when no term needed them (plain classification, warm-up).
        erased_scores: ``(P,)`` bounded score of each pair's class on its erased image, or ``None``.
        erased: ``(P, 3, H, W)`` the erased images I*^c (part of the graph), or ``None``.
        loss_adversary: adversarial variant only: the adversary's own loss (see
            :class:`~gainet.core.adversarial.AdversarialGAIN`); ``None`` otherwise.
        loss_area: adversarial variant only: mean of the normalised maps (the regulariser).
        skipped_e: ``()`` long tensor, pairs of supervised images left out of L_e because their
            target mask is empty (no positive valid pixel, e.g. the object cropped away); zero
            when L_e is off. Count it per step to log how much supervision was lost.
        all_scores: ``(B + S, C)`` logits of the images then of the ``S`` counterfactual rows
            passed to ``forward`` (``scores`` is its first ``B`` rows).
        features: ``(B + S, K, h, w)`` the attention layer's activations of the same rows.
    """

    loss: Tensor
    loss_cl: Tensor
    loss_am: Tensor
    loss_e: Tensor
    scores: Tensor
    pairs: Tensor
    attention: Tensor | None = None
    erased_scores: Tensor | None = None
    erased: Tensor | None = None
    loss_adversary: Tensor | None = None
    loss_area: Tensor | None = None
    skipped_e: Tensor | None = None
    all_scores: Tensor | None = None
    features: Tensor | None = None

    def __post_init__(self) -> None:
        if self.skipped_e is None:
            self.skipped_e = torch.zeros((), dtype=torch.long, device=self.loss.device)


class GAIN(nn.Module):
    """Guided Attention Inference Network around an image classifier.

    Args:
        model: classifier ``(B, 3, H, W) -> (B, C)`` logits (torchvision, timm, your own).
        attention_layer: layer ``l`` (dotted name or module); ``None`` finds it automatically.
        multi_label: multi-label soft-margin L_cl and sigmoid scores on erased images; ``False``
            gives cross entropy and softmax probabilities (METHOD.md, single-label pitfall).
        sigma, omega: soft-mask threshold and sharpness (Eq. 4); METHOD.md: 0.5 and 10.
        alpha: weight of L_am (Eq. 6); ``0`` turns GAIN into the plain classifier (CAM baseline).
        omega_e: weight of L_e (Eq. 8); METHOD.md: 10.
        am_gradient: which weights L_am may update through the S_am stream.
            ``"all"`` (the paper): every weight, both through the attention map and through the
            erased forward pass. ``"attention"``: only through the attention map; the erased
            forward pass runs with its parameters held constant, so the network cannot lower
            L_am by learning to recognise erased images (METHOD.md pitfall 1).
        erased_batchnorm: how the erased forward meets BatchNorm. ``"batch"``: normalise with the
            erased batch's own statistics without reading or updating the running buffers;
            ``"running"``: normalise with the running statistics (BatchNorm in eval mode). Either
            way the erased images never move a running statistic.
        counterfactual_batchnorm: how the ``counterfactuals`` rows of :meth:`forward` meet
            BatchNorm. ``"own"`` (default): a second backbone call in which the rows are normalised
            with their own batch statistics, running buffers untouched (the originals' forward is
            exactly a plain one; a lone row in one process: the running statistics).
            ``"shared"``: one call over images + rows, one set of statistics (running ones moved
            by both). Issue 34, 3 seeds: ``"own"`` 5.6 points of decorrelated accuracy ahead on a
            10-class garment world, 1.7 behind on the bias world, level on 4 garment classes.
        weights_grad: let losses differentiate through the Grad-CAM weights ``w^c`` as well
            (second-order gradient). Default ``False``: ``w^c`` is a constant, as in Grad-CAM and
            METHOD.md ("computing w uses back-propagation but does NOT update weights"); ``A^c``
            still depends differentiably on ``f_l``.
        fast_path, probe_size, log_level: see :class:`~gainet.core.backbone.AttentionBackbone`.

    S_e deviation from the paper's figure: the attention maps that L_e supervises are those of
    the S_cl pass itself rather than of a separate forward pass over the supervised images. With
    every weight shared the maps are the same function; re-running the few supervised images as
    their own tiny batch would make train-mode BatchNorm normalise with the statistics of 1-2
    images (METHOD.md pitfall 2) and cost an extra forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        attention_layer: str | nn.Module | None = None,
        *,
        multi_label: bool = True,
        sigma: float = 0.5,
        omega: float = 10.0,
        alpha: float = 1.0,
        omega_e: float = 10.0,
        am_gradient: AmGradient = "all",
        erased_batchnorm: ErasedBatchNorm = "batch",
        counterfactual_batchnorm: CounterfactualBatchNorm = "own",
        weights_grad: bool = False,
        fast_path: bool | None = None,
        probe_size: int = 224,
        log_level: int = logging.INFO,
    ) -> None:
        super().__init__()
        if am_gradient not in ("all", "attention"):
            raise ValueError(f"am_gradient must be 'all' or 'attention', got {am_gradient!r}")
        if erased_batchnorm not in ("batch", "running"):
            raise ValueError(f"erased_batchnorm must be 'batch' or 'running', got {erased_batchnorm!r}")
        if counterfactual_batchnorm not in ("own", "shared"):
            raise ValueError(f"counterfactual_batchnorm must be 'own' or 'shared', got {counterfactual_batchnorm!r}")
        self.backbone = AttentionBackbone(model, attention_layer, probe_size=probe_size, fast_path=fast_path,
                                          log_level=log_level)
        self.multi_label = multi_label
        self.sigma = sigma
        self.omega = omega
        self.alpha = alpha
        self.omega_e = omega_e
        self.am_gradient: AmGradient = am_gradient
        self.erased_batchnorm: ErasedBatchNorm = erased_batchnorm
        self.counterfactual_batchnorm: CounterfactualBatchNorm = counterfactual_batchnorm
        self.weights_grad = weights_grad

    @property
    def model(self) -> nn.Module:
        """The wrapped classifier."""
        return self.backbone.model

    # ------------------------------------------------------------------ attention
    def pair_attention(
        self, scores: Tensor, features: Tensor, pairs: Tensor, output_size: tuple[int, int] | None
    ) -> Tensor:
        """Normalised maps ``(P, H, W)`` for ``pairs`` from one forward's ``scores`` and ``features``.

        Autograd weights in a model with a train-mode synchronised BatchNorm (DDP): the Grad-CAM
        backward runs its collectives, so the label slots are looped over, never vmapped, and
        their number is the maximum over the ranks (one small all_reduce): every rank runs the
        same backwards, including one whose images have fewer labels or none
        (:func:`~gainet.core.attention.gradcam_weights`). Otherwise one vmapped call.
        """
        if self.backbone.linear_head is not None:
            head = self.backbone.linear_head.weight
            weights = linear_head_weights(
                head if self.weights_grad else head.detach(), pairs[:, 1], tuple(features.shape[-2:])
            )
        else:
            synchronising = synchronising_modules(self.backbone.model)
            slots = None
            if synchronising:
                needed = int(label_slots(pairs[:, 0]).max()) + 1 if pairs.numel() else 0
                slots = agreed_maximum(needed, synchronising, features.device)
            weights = gradcam_weights(scores, features, pairs, create_graph=self.weights_grad,
                                      batched=not synchronising, slots=slots)
        return attention_maps(features, weights, pairs[:, 0], output_size)

    def label_attention(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Attention of every ground-truth class, for evaluation, in the current mode.

        Args:
            images: ``(B, 3, H, W)``; labels: multi-hot ``(B, C)`` or indices ``(B,)``.

        Returns:
            ``scores`` ``(B, C)``, ``pairs`` ``(P, 2)`` and ``maps`` ``(P, H, W)`` in [0, 1], detached.
        """
        pairs = label_pairs(labels.to(images.device))
        needs_autograd = self.backbone.linear_head is None
        with (torch.enable_grad() if needs_autograd else torch.no_grad()), self.backbone.features_require_grad():
            scores, features = self.backbone(images)
            maps = self.pair_attention(scores, features, pairs, tuple(images.shape[-2:]))
        return scores.detach(), pairs, maps.detach()

    def explain(
        self, images: Tensor, classes: int | Sequence[int] | Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Attention maps for inference, in the model's current train/eval mode.

        Args:
            images: ``(B, 3, H, W)`` normalised images.
            classes: one class for the whole batch, one per image ``(B,)``, or ``None`` for each
                image's top-scoring class.

        Returns:
            ``scores`` ``(B, C)`` logits and ``maps`` ``(B, H, W)`` in [0, 1], detached, on the
            model's device.
        """
        needs_autograd = self.backbone.linear_head is None
        grad_context = torch.enable_grad() if needs_autograd else torch.no_grad()
        with grad_context, self.backbone.features_require_grad():
            scores, features = self.backbone(images)
            if classes is None:
                targets = scores.argmax(dim=1)
            else:
                targets = torch.as_tensor(classes, device=scores.device, dtype=torch.long)
                targets = targets.expand(scores.shape[0]) if targets.dim() == 0 else targets
            if targets.shape != (scores.shape[0],):
                raise ValueError(f"classes must be one index or one per image ({scores.shape[0]}), got {tuple(targets.shape)}")
            if (targets < 0).any() or (targets >= scores.shape[1]).any():
                raise ValueError(f"class index out of range [0, {scores.shape[1]}): {targets.tolist()}")
            pairs = label_pairs(targets)
            maps = self.pair_attention(scores, features, pairs, tuple(images.shape[-2:]))
        return scores.detach(), maps.detach()

    # ------------------------------------------------------------------ training
    def erased_batchnorm_context(self, network: nn.Module) -> AbstractContextManager[None]:
        """How ``network``'s BatchNorm layers meet erased images (``erased_batchnorm``): never
        moving a running statistic."""
        if self.erased_batchnorm == "running":
            return batchnorm_in_eval_mode(network)
        return batchnorm_with_batch_stats_only(network)

    def _erased_scores(self, erased: Tensor, class_index: Tensor, images: Tensor) -> Tensor:
        """S_am: bounded score of each pair's class on its erased image ``(P,)``.

        ``images`` ``(B, 3, H, W)``, the clean batch, is unused here (the shared network meets the
        erased images as their own batch, ``erased_batchnorm``); the adversarial variant scores
        the erased images together with the clean ones."""
        with self.erased_batchnorm_context(self.backbone.model):
            if self.am_gradient == "attention":
                scores, _ = call_with_constant_parameters(self.backbone, erased)
            else:
                scores, _ = self.backbone(erased)
        return class_scores(scores, class_index, self.multi_label)

    def _forward_with_rows(self, images: Tensor,
                           counterfactuals: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Logits ``(B + S, C)`` and attention-layer activations of the images then the rows, and
        the logits and activations of the backbone call that holds the images (Grad-CAM
        differentiates the one by the other, so they must come from the same call).

        ``counterfactual_batchnorm="own"``: the rows are a batch of their own in a second backbone
        call, normalised with their own statistics and never moving a running one (issue 34: on a
        10-class garment world the rows normalised with the originals, ``"shared"``, cost 5 points
        of decorrelated accuracy, docs/bias_study.md). Under a synchronising BatchNorm that call is
        made whenever rows are passed, zero rows included, so every rank makes the same collectives.
        """
        if counterfactuals is not None and counterfactuals.shape[1:] != images.shape[1:]:
            raise ValueError(f"counterfactuals {tuple(counterfactuals.shape)} must be (S, *images.shape[1:]) "
                             f"= (S, {', '.join(map(str, images.shape[1:]))})")
        rows = None if counterfactuals is None else counterfactuals.to(images.dtype)
        if self.counterfactual_batchnorm == "shared" and rows is not None and rows.shape[0]:
            scores, features = self.backbone(torch.cat([images, rows]))
            return scores, features, scores, features
        scores, features = self.backbone(images)
        synchronising = bool(rows is not None and synchronising_modules(self.backbone.model))
        if rows is None or self.counterfactual_batchnorm == "shared" or (rows.shape[0] == 0 and not synchronising):
            return scores, features, scores, features  # no row, and no collective to keep in step
        with own_batch_statistics(self.backbone.model, rows.shape[0], synchronising=synchronising):
            row_scores, row_features = self.backbone(rows)
        return torch.cat([scores, row_scores]), torch.cat([features, row_features]), scores, features

    def forward(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        masks: Tensor | None = None,
        supervised: Tensor | None = None,
        *,
        mine: bool = True,
        counterfactuals: Tensor | None = None,
    ) -> Tensor | GAINOutput:
        """Without ``labels``: the logits ``(B, C)``. With ``labels``: a :class:`GAINOutput`.

        Args:
            images: ``(B, 3, H, W)`` normalised images.
            labels: multi-hot ``(B, C)`` (single-label: one-hot, or indices ``(B,)``).
            masks: ``(B, C, H, W)`` per-class masks ``H^c`` in [0, 1] (pixel masks or boxes made
                masks by :func:`~gainet.core.masking.boxes_to_masks`), read only where ``supervised``;
                pixels equal to 255 (:data:`~gainet.core.losses.IGNORE_INDEX`, VOC's "ignore") are
                left out of L_e, and so are labelled classes whose mask is empty (``skipped_e``).
            supervised: ``(B,)`` bool, images whose masks L_e may use; default: all when ``masks``
                is given.
            mine: run attention mining (S_am). ``False`` during the classification-only warm-up.
            counterfactuals: ``(S, 3, H, W)`` extra rows (:mod:`gainet.core.batch_transforms`),
                ``S >= 0``: run with the images (as a BatchNorm batch of their own by default,
                ``counterfactual_batchnorm``), left out of L_cl, the maps, L_am and L_e; their
                logits and activations are in ``output.all_scores`` / ``output.features`` for the
                guidance terms (:mod:`gainet.core.guidance`). Under DDP pass the tensor whenever
                guidance is configured, even with zero rows on this rank.
        """
        batch = images.shape[0]
        all_scores, features, call_scores, call_features = self._forward_with_rows(images, counterfactuals)
        scores = all_scores[:batch]
        if labels is None:
            return scores
        if labels.dim() == 1:
            labels = nn.functional.one_hot(labels.long(), scores.shape[1]).to(scores.dtype)
        if labels.shape != scores.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} != scores shape {tuple(scores.shape)}")
        loss_cl = classification_loss(scores, labels, self.multi_label)
        zero = loss_cl.new_zeros(())
        pairs = label_pairs(labels)
        image_index, class_index = pairs[:, 0], pairs[:, 1]

        # Which streams run is decided by the arguments, never by the data: under DDP with a
        # synchronised BatchNorm the Grad-CAM backward and the erased forward make collectives, so
        # a process whose share holds no supervised image (or no label) runs them too, with L_e
        # (L_am) a zero that stays in the graph.
        use_mining = mine and self.alpha > 0
        use_masks = masks is not None and self.omega_e > 0
        if use_masks:
            if masks.shape != (*scores.shape, *images.shape[-2:]):
                raise ValueError(
                    f"masks must be (B, C, H, W) = {(*scores.shape, *images.shape[-2:])}, got {tuple(masks.shape)}"
                )
            supervised = (
                torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
                if supervised is None else supervised.to(device=images.device, dtype=torch.bool)
            )
        if not synchronising_modules(self.backbone.model):
            # Nothing in these passes makes a collective (one process, or no synchronised
            # BatchNorm): the data may skip them, which saves the Grad-CAM backward on the steps
            # with nothing to supervise and an erased forward over zero rows (a head that reshapes
            # with view(B, -1) cannot take those).
            use_masks = use_masks and bool(supervised.any())
            use_mining = use_mining and pairs.shape[0] > 0
        if not (use_mining or use_masks):
            return GAINOutput(loss_cl, loss_cl, zero, zero, scores, pairs, all_scores=all_scores, features=features)

        # Grad-CAM from the scores and activations of the call that holds the images (with shared
        # BatchNorm, the rows too): pairs only name original rows.
        attention = self.pair_attention(call_scores, call_features, pairs, tuple(images.shape[-2:]))
        loss_am, loss_e, erased_scores, erased = zero, zero, None, None
        skipped_e = torch.zeros((), dtype=torch.long, device=images.device)
        if use_mining:
            erased = erase(images, soft_mask(attention, self.sigma, self.omega), image_index)
            erased_scores = self._erased_scores(erased, class_index, images)
            loss_am = attention_mining_loss(erased_scores, image_index, images.shape[0])
        if use_masks:
            targets = masks[image_index, class_index].to(attention.dtype)
            loss_e = external_supervision_loss(attention, targets, image_index, supervised)
            skipped_e = (empty_target_pairs(targets) & supervised[image_index]).sum()
        loss = gain_loss(
            loss_cl, loss_am if use_mining else zero, loss_e if use_masks else None,
            alpha=self.alpha, omega_e=self.omega_e,
        )
        return GAINOutput(
            loss, loss_cl, loss_am, loss_e, scores, pairs, attention, erased_scores, erased, skipped_e=skipped_e,
            all_scores=all_scores, features=features,
        )
