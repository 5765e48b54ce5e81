"""Shortcut diagnosis and repair ("my model reads the background", issue 19).

- :mod:`gainet.shortcuts.diagnose`: the counterfactual test of "Noise or Signal" (Xiao et al.
  2020) on a user's annotated images: original, mixed-same, mixed-rand and context-only splits,
  the background gap and a one-line verdict.
- :mod:`gainet.shortcuts.fix`: last-layer retraining on counterfactual images (DFR, Kirichenko
  et al. 2023) and the helpers that turn a classifier into a gainet checkpoint.
- :mod:`gainet.shortcuts.report`: ``diagnosis.json``, ``diagnosis.md`` and ``index.html``.
- :mod:`gainet.shortcuts.api`: the same on a model in memory, images as tensors (a notebook).

Plain PyTorch (tensors in, numbers out); the CLI sits above.
"""

from gainet.shortcuts.api import Diagnosis, Fix, annotated_images, diagnose_model, finetune, fix_model

__all__ = ["Diagnosis", "Fix", "annotated_images", "diagnose_model", "finetune", "fix_model"]
