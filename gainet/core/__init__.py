"""The GAIN method in plain PyTorch: no trainer, data or CLI imports, so it drops into any loop."""

from gainet.core.adversarial import AdversarialGAIN
from gainet.core.attention import (
    attention_maps,
    gradcam_weights,
    label_pairs,
    linear_head_weights,
    normalise_maps,
)
from gainet.core.backbone import (
    AttentionBackbone,
    batchnorm_in_eval_mode,
    batchnorm_with_batch_stats_only,
    find_attention_layer,
    preserved_batchnorm_stats,
)
from gainet.core.batch_transforms import (
    KINDS,
    ContextOnly,
    ContextSwap,
    CounterfactualCollate,
    CounterfactualRows,
    CounterfactualTransforms,
    MaskedCounterpart,
)
from gainet.core.counterfactual import (
    Counterfactuals,
    context_only,
    context_swap,
    fill_from_context,
    masked_counterpart,
    masks_within_boxes,
)
from gainet.core.gain import GAIN, GAINOutput
from gainet.core.guidance import (
    GUIDANCE_MODES,
    GUIDES,
    Guide,
    GuidanceBatch,
    GuideTerm,
    batch_transforms,
    build_guides,
    parse_guidance,
    term_mean,
)
from gainet.core.losses import (
    attention_mining_loss,
    class_scores,
    classification_loss,
    empty_target_pairs,
    external_supervision_loss,
    gain_loss,
)
from gainet.core.masking import boxes_to_masks, erase, soft_mask

__all__ = [
    "GUIDANCE_MODES",
    "GUIDES",
    "KINDS",
    "ContextOnly",
    "ContextSwap",
    "CounterfactualCollate",
    "CounterfactualRows",
    "CounterfactualTransforms",
    "Counterfactuals",
    "Guide",
    "GuidanceBatch",
    "GuideTerm",
    "MaskedCounterpart",
    "batch_transforms",
    "build_guides",
    "context_only",
    "context_swap",
    "fill_from_context",
    "masked_counterpart",
    "masks_within_boxes",
    "parse_guidance",
    "term_mean",
    "GAIN",
    "AdversarialGAIN",
    "GAINOutput",
    "AttentionBackbone",
    "attention_maps",
    "attention_mining_loss",
    "batchnorm_in_eval_mode",
    "batchnorm_with_batch_stats_only",
    "boxes_to_masks",
    "class_scores",
    "classification_loss",
    "empty_target_pairs",
    "erase",
    "external_supervision_loss",
    "find_attention_layer",
    "gain_loss",
    "gradcam_weights",
    "label_pairs",
    "linear_head_weights",
    "normalise_maps",
    "preserved_batchnorm_stats",
    "soft_mask",
]
