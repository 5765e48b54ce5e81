"""Adversarial attention mining: a separate classifier scores the erased images.

Stammes et al., "Find it if you can: end-to-end adversarial erasing for weakly-supervised
semantic segmentation" (arXiv 2011.04626) replace GAIN's shared S_am stream by an adversary.
A shared network can lower L_am by learning to give erased images low scores instead of by
widening its attention (METHOD.md, pitfalls); an adversary that is itself *trained to find*
whatever class evidence the mask left cannot be fooled that way.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from gainet.core.backbone import batchnorm_with_batch_stats_only, call_with_constant_parameters
from gainet.core.gain import GAIN, GAINOutput
from gainet.core.losses import class_scores, classification_loss


class AdversarialGAIN(GAIN):
    """GAIN whose attention-mining score comes from a separately trained adversary.

    Streams:
        - the attention network (the wrapped ``model``) is trained with
          ``L_cl + alpha * L_am + omega_e * L_e + area_weight * L_area``, where L_am is the
          adversary's bounded score (sigmoid, or softmax probability for single-label) of class
          ``c`` on the erased image ``I*^c``. Its gradient reaches the attention network only
          through the soft mask: the adversary's parameters are constants in that pass, and its
          BatchNorm running statistics do not move.
          ``L_area`` is the mean of the normalised attention maps, a regulariser against
          attention spreading into the background.
        - the adversary is trained (``loss_adversary``, to be minimised by its own optimiser)
          with its classification loss on the clean images and on the erased images, masks
          detached, against each image's *full* label set: it learns to find whatever evidence
          the mask left. During the warm-up (``mine=False``) it trains on clean images only.

    BatchNorm: the adversary is scored under the normalisation it is trained under. In train
    mode its training pass normalises the clean + erased batch ``(B + P)`` with that batch's
    statistics (and moves the running ones); the L_am pass runs the *same* ``B + P`` images with
    the same batch statistics (running buffers neither read nor written) and keeps the ``P``
    erased rows, so the score L_am minimises is exactly the score the adversary is trained to
    raise. Scoring the erased images as their own batch, or with running statistics gathered on
    mixed batches, would train one function and attack another (issue 11.3). In eval mode both
    passes use the running statistics. The attention network never sees an erased image, so
    ``erased_batchnorm="running"`` has nothing to govern and is refused.

    The two losses touch disjoint parameters, so ``(out.loss + out.loss_adversary).backward()``
    fills both networks' gradients in one pass; step each optimiser on its own parameters.

    Args:
        model: the attention network's classifier.
        attention_layer: as in :class:`GAIN`.
        adversary: any classifier with the same classes; default: a copy of ``model`` taken
            before training (same architecture, same initial or pretrained weights).
        area_weight: weight of ``L_area`` (0 disables it).
        gain_options: the other :class:`GAIN` options. ``am_gradient`` does not apply (L_am
            always reaches the attention network only through the mask); ``erased_batchnorm``
            must be ``"batch"`` (see BatchNorm above).
    """

    def __init__(
        self,
        model: nn.Module,
        attention_layer: str | nn.Module | None = None,
        *,
        adversary: nn.Module | None = None,
        area_weight: float = 0.0,
        **gain_options,
    ) -> None:
        # Copy before GAIN registers its hook on the model, so the copy carries no hook.
        if gain_options.get("erased_batchnorm", "batch") != "batch":
            raise ValueError(
                "erased_batchnorm must be 'batch' for the adversarial variant: the adversary is scored "
                "with the batch statistics of the clean + erased batch it is trained on"
            )
        adversary = copy.deepcopy(model) if adversary is None else adversary
        super().__init__(model, attention_layer, **gain_options)
        self.adversary = adversary
        self.area_weight = area_weight

    def attention_parameters(self) -> list[nn.Parameter]:
        """Parameters of the attention network (everything but the adversary)."""
        adversary = {id(p) for p in self.adversary.parameters()}
        return [p for p in self.parameters() if id(p) not in adversary]

    def adversary_batch(self, images: Tensor, erased: Tensor) -> Tensor:
        """The ``(B + P, 3, H, W)`` batch the adversary trains on and is scored on: clean images
        first, then the erased ones (one BatchNorm regime for both passes, see the class doc)."""
        return torch.cat([images.detach(), erased])

    def _erased_scores(self, erased: Tensor, class_index: Tensor, images: Tensor) -> Tensor:
        # Same B + P batch as the training pass in forward(), so train-mode BatchNorm normalises
        # with the same statistics; the running buffers stay untouched (only the training pass
        # moves them), and eval mode reads them in both passes.
        with batchnorm_with_batch_stats_only(self.adversary):
            scores = call_with_constant_parameters(self.adversary, self.adversary_batch(images, erased))
        return class_scores(scores[images.shape[0]:], class_index, self.multi_label)

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
        """As :meth:`GAIN.forward`, plus ``loss_adversary`` and ``loss_area`` in the output (the
        adversary reads the images and their erased versions, never the counterfactual rows)."""
        output = super().forward(images, labels, masks, supervised, mine=mine, counterfactuals=counterfactuals)
        if labels is None:
            return output
        assert isinstance(output, GAINOutput)
        targets = output.scores.new_zeros(output.scores.shape)
        targets[output.pairs[:, 0], output.pairs[:, 1]] = 1.0
        adversary_inputs = images
        adversary_targets = targets
        if output.erased is not None:
            # Masks detached: the adversary learns to read the erased images, not to move the masks.
            adversary_inputs = self.adversary_batch(images, output.erased.detach())
            adversary_targets = torch.cat([targets, targets[output.pairs[:, 0]]])
        adversary_scores = self.adversary(adversary_inputs)
        output.loss_adversary = classification_loss(adversary_scores, adversary_targets, self.multi_label)
        output.loss_area = output.loss_cl.new_zeros(())
        if mine and self.area_weight > 0 and output.attention is not None:
            # No pair (no label on any image of this batch): a zero that stays in the graph.
            attention = output.attention
            output.loss_area = attention.mean() if attention.numel() else attention.sum()
            output.loss = output.loss + self.area_weight * output.loss_area
        return output
