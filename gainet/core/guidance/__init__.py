"""Guidance terms: what a few masks or boxes train besides GAIN's own streams (docs/bias_study.md).

- ``l_e``: GAIN_ext's attention loss (computed by :class:`~gainet.core.gain.GAIN` itself).
- ``context-swap``: the object pasted on other images' contexts must still be its class.
- ``context-only``: the context with the object removed must be no class.
- ``actdiff``: the activations must not change when the context is shuffled (Viviano et al.).
- ``rrr``: the input gradient must vanish outside the object (Ross et al.).
- ``upweight``: the supervised images' L_cl once more (the baseline).

Each mode is one :class:`Guide` in a file of its own; :func:`build_guides` makes them from
names, :func:`batch_transforms` the counterfactual transforms they need (to run in the data
pipeline). Every term is zero, never NaN, when no item qualifies.
"""

from __future__ import annotations

from typing import Sequence

from gainet.core.batch_transforms import ContextOnly, ContextSwap, CounterfactualTransforms, MaskedCounterpart
from gainet.core.guidance.actdiff import ActDiffGuide
from gainet.core.guidance.base import Guide, GuidanceBatch, GuideTerm, soft_target_loss, term_mean
from gainet.core.guidance.context_only import ContextOnlyGuide, ContextTarget
from gainet.core.guidance.context_swap import ContextSwapGuide
from gainet.core.guidance.rrr import RRRGuide, summed_log_probabilities
from gainet.core.guidance.upweight import UpweightGuide

GUIDES: dict[str, type[Guide]] = {g.name: g for g in (ContextSwapGuide, ContextOnlyGuide, ActDiffGuide, RRRGuide,
                                                         UpweightGuide)}
GUIDANCE_MODES = ("l_e", *GUIDES)


def parse_guidance(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"context-swap,l_e"`` (or a sequence of names) -> ``("context-swap", "l_e")``; ``""`` or
    ``None`` -> ``()``. Unknown names raise a one-line ``ValueError`` listing the valid ones."""
    if value is None:
        return ()
    parts = value.replace("+", ",").split(",") if isinstance(value, str) else list(value)
    modes: list[str] = []
    for part in (p.strip() for p in parts):
        if not part or part == "none":
            continue
        if part not in GUIDANCE_MODES:
            raise ValueError(f"unknown guidance mode {part!r}; choose from {', '.join(GUIDANCE_MODES)} (comma-separated)")
        if part not in modes:
            modes.append(part)
    return tuple(modes)


def build_guides(modes: str | Sequence[str], *, context_target: ContextTarget = "uniform") -> list[Guide]:
    """The :class:`Guide` of each mode (``l_e`` is GAIN's, not a guide: skipped)."""
    guides: list[Guide] = []
    for mode in parse_guidance(modes):
        if mode == "l_e":
            continue
        guides.append(ContextOnlyGuide(context_target) if mode == "context-only" else GUIDES[mode]())
    return guides


def batch_transforms(guides: Sequence[Guide], *, multi_label: bool, partners: int = 1) -> CounterfactualTransforms:
    """The counterfactual transforms ``guides`` read, for the data pipeline (empty if none)."""
    needs = {kind for guide in guides for kind in guide.needs}
    transforms = []
    if "context-only" in needs:
        transforms.append(ContextOnly(multi_label=multi_label))
    if "context-swap" in needs:
        transforms.append(ContextSwap(partners=partners))
    if "counterpart" in needs:
        transforms.append(MaskedCounterpart())
    return CounterfactualTransforms(transforms)


__all__ = [
    "GUIDANCE_MODES", "GUIDES", "ActDiffGuide", "ContextOnlyGuide", "ContextSwapGuide", "Guide", "GuidanceBatch",
    "GuideTerm", "RRRGuide", "UpweightGuide", "batch_transforms", "build_guides", "parse_guidance",
    "soft_target_loss", "summed_log_probabilities", "term_mean",
]
