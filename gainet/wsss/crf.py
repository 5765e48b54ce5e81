"""Dense CRF refinement (Krähenbühl & Koltun 2011) through the optional ``pydensecrf2`` package.

``pydensecrf2`` (a maintained fork of ``pydensecrf``) installs the ``pydensecrf`` module. PyPI has
no wheel for every Python/platform; ``pip`` then builds it from source, which needs a C++
compiler. Everything here raises a one-line ``ImportError`` when it is missing, and the stages
run without CRF.

Defaults are those of IRN / PSA's ``imutils.crf_inference_label`` (labels) and DeepLab-style
softmax refinement: Gaussian kernel ``sxy=3, compat=3``; bilateral ``sxy=50, srgb=5, compat=10``;
10 mean-field iterations; label confidence ``gt_prob=0.7``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

INSTALL_HINT = "dense CRF needs the optional package pydensecrf2: pip install 'pydensecrf2==1.1' (builds from source; needs a C++ compiler)"


@dataclass(frozen=True)
class CRFParams:
    """Kernel settings of the dense CRF (see the module docstring)."""

    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0
    iterations: int = 10
    gt_prob: float = 0.7

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def crf_available() -> bool:
    """Whether ``pydensecrf`` imports."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf import utils
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return dcrf, utils


def _inference(image: np.ndarray, unary: np.ndarray, num_labels: int, params: CRFParams) -> np.ndarray:
    dcrf, _ = _densecrf()
    height, width = image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.ascontiguousarray(image, dtype=np.uint8), compat=params.bilateral_compat)
    q = np.asarray(crf.inference(int(params.iterations)), dtype=np.float32)
    return q.reshape(num_labels, height, width)


def _check_image(image: np.ndarray, hw: tuple[int, ...]) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if image.shape[:2] != tuple(hw):
        raise ValueError(f"image {image.shape[:2]} and labels/probabilities {tuple(hw)} differ in size")


def crf_labels(image: np.ndarray, labels: np.ndarray, num_labels: int, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine a hard label map ``(H, W)`` with values in ``[0, num_labels)`` on ``image``.

    Each pixel's given label gets probability ``gt_prob`` (the rest shared by the other labels),
    the CRF smooths along colour edges, and the argmax comes back as int64 ``(H, W)`` in
    ``[0, num_labels)``. With ``num_labels == 1`` the map is returned unchanged.
    """
    labels = np.asarray(labels)
    _check_image(image, labels.shape)
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= num_labels:
        raise ValueError(f"labels must be in [0, {num_labels}), found {labels.min()}..{labels.max()}")
    if num_labels == 1:
        return labels.astype(np.int64)
    _, utils = _densecrf()
    unary = utils.unary_from_labels(labels.astype(np.int32), num_labels, gt_prob=params.gt_prob, zero_unsure=False)
    return _inference(image, unary, num_labels, params).argmax(0).astype(np.int64)


def crf_probabilities(image: np.ndarray, probabilities: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine class probabilities ``(L, H, W)`` (summing to 1 over ``L``) on ``image``; returns the
    CRF's marginals ``(L, H, W)`` float32."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    _check_image(image, probabilities.shape[1:])
    if probabilities.shape[0] == 1:
        return probabilities
    _, utils = _densecrf()
    unary = utils.unary_from_softmax(np.clip(probabilities, 1e-8, 1.0))
    return _inference(image, unary, probabilities.shape[0], params)
