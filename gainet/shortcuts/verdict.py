"""The verdict of the background test: one rule, fixed from plain models whose answer is known.

The rule reads the numbers of :func:`gainet.shortcuts.diagnose.measure` in this order:

1. **No verdict** when the test cannot tell: too few objects for both mixed splits; the model is
   at chance on the originals, the objects alone *and* the objects on their own class's context
   (each 95% interval reaches down to the chance score of those answers: a constant model, or images
   it does not recognise at all; a model at chance on a clean split's originals only because it reads
   the now random context still scores on mixed-same and gets its verdict); or the
   contexts carry no class for any reader (the model-free probe of
   :func:`gainet.shortcuts.evidence.context_probe` is at chance: e.g. the contexts of a clean
   test split with random backgrounds), so no context can pull an answer either way.
2. **Reads the context** when the gap's interval lies at or above :data:`GAP_READS` (or at or below
   ``-GAP_READS``: a model that answers *against* the context's class is steered by it too).
3. **The object decides** when the gap's interval lies strictly between ``-GAP_READS`` and
   :data:`GAP_READS`.
4. Otherwise **uncertain**: the interval straddles a threshold; more annotated images narrow it.

:data:`GAP_READS` was set from the plain models of ``benchmarks/verdict_calibration.py`` before any
fixed model was diagnosed (docs/shortcuts.md, "How the verdict is decided"): every unbiased
reference's gap interval lies below it and every biased model's above it, on both built-in worlds,
3 seeds, held-out biased and decorrelated splits.
"""

from __future__ import annotations

import math
from typing import Any

GAP_READS = 0.15


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def decide(result: dict[str, Any]) -> tuple[str, str]:
    """``(code, line)``: code is ``reads_context``, ``object_decides``, ``uncertain`` or ``no_verdict``."""
    metric = result["metric"]
    same, rand, gap = result["mixed_same"], result["mixed_rand"], result["gap"]
    intervals = result.get("intervals", {})
    low, high = intervals.get("gap", (gap, gap))
    if not _finite(gap, low, high):
        return "no_verdict", "no verdict: too few images of distinct classes to build both mixed splits"
    chances = result.get("chances") or {"original": result.get("chance", math.nan)}
    above = [name for name, chance in chances.items()
             if not _finite(chance, intervals.get(name, (result.get(name),))[0])
             or intervals.get(name, (result.get(name),))[0] > chance]
    if not above:
        original, chance = result["original"], chances["original"]
        return "no_verdict", (f"no verdict: the model is at chance on this split ({metric} {original:.2f}, chance "
                              f"{chance:.2f} for its answers), also with each object on a context of its own class: "
                              "it recognises neither, so the test cannot tell what it reads")
    probe = (result.get("contexts") or {}).get("probe") or {}
    if _finite(probe.get("low"), probe.get("chance")) and probe["low"] <= probe["chance"]:
        where = result["contexts"].get("split", "?")
        return "no_verdict", (f"no verdict: the contexts (from {where}) do not go with their labels (a colour probe "
                              f"names their class at {probe['score']:.2f}, chance {probe['chance']:.2f}), so no "
                              "context can pull an answer; take contexts from the images the model was trained on "
                              "(--context-split)")
    span = f"gap {gap:.2f}, 95% interval [{low:.2f}, {high:.2f}]"
    if low >= GAP_READS:
        return "reads_context", (f"{metric} falls from {same:.2f} to {rand:.2f} when the object stands on another "
                                 f"class's context ({span}, all >= {GAP_READS:.2f}): the model reads the context")
    if high <= -GAP_READS:  # the context steers too, away from the class it goes with
        return "reads_context", (f"{metric} rises from {same:.2f} to {rand:.2f} when the object stands on another "
                                 f"class's context ({span}, all <= -{GAP_READS:.2f}): the model reads the context, "
                                 "against the class it goes with")
    if -GAP_READS < low and high < GAP_READS:
        lean = " (a small lean on the context)" if low > 0 else (" (a small lean away from it)" if high < 0 else "")
        return "object_decides", (f"{metric} {same:.2f} on a context of the object's class and {rand:.2f} on "
                                  f"another's ({span}, all < {GAP_READS:.2f}): the object decides, not the "
                                  f"context{lean}")
    edge = GAP_READS if high >= GAP_READS else -GAP_READS
    return "uncertain", (f"uncertain: {metric} {same:.2f} on the object's own class's context, {rand:.2f} on another's "
                         f"({span} straddles {edge:.2f}): annotate more images to narrow it")
