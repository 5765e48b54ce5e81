"""Does the model use what a map shows? Perturbation metrics, batched on tensors.

- :func:`perturbation_curve` (deletion / insertion, Petsiuk et al., RISE 2018): the pixels are
  removed (deletion) or revealed (insertion) in the map's order, most relevant first, and the
  target class's score is read after every step; the area under that curve (AUC over the removed
  fraction in [0, 1]) is low for a faithful map under deletion (the score collapses when the
  first pixels go) and high under insertion.
- :func:`road` (Rong et al., ICML 2022, "remove and debias"): the top (MoRF) or bottom (LeRF)
  share of the pixels is replaced by a *noisy linear imputation* from its neighbours
  (:func:`noisy_linear_impute`), which leaks far less of the removed shape than a constant fill;
  the score change is averaged over removal percentiles. Faithful: a large drop under MoRF, a
  small one under LeRF (``combined = (lerf - morf) / 2``, high is good).
- The pointing game and the energy in the box are in :mod:`gainet.evaluation.localization`
  (:func:`pointing_hits`, :func:`energy_in_boxes`): they ask where the map is, not whether the
  model uses it.

All images of a batch are perturbed and scored together: one forward pass per (step, chunk of
images), no Python loop over images or pixels. Images are in the network's (normalised) input
space, maps ``(B, H, W)`` at the image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gainet.core.counterfactual import fill_from_context
from gainet.io.progress import progress_bar

Score = Literal["softmax", "sigmoid", "logit"]
Baseline = Literal["blur", "mean", "zero", "context"]
BASELINES = ("blur", "mean", "zero", "context")
SCORES = ("softmax", "sigmoid", "logit")
# RISE's insertion baseline: a Gaussian blur, 11 px kernel, sigma 5 px.
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0
DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_NOISE = 0.01  # the ROAD paper's (absolute, in input space)
IMPUTE_BATCH = 4  # images per imputation solve in :func:`road`
# ROAD's linear imputation weighs a pixel's eight neighbours 1/6 (edge) and 1/12 (diagonal), so
# the in-image neighbours weigh at most 1 in total (Rong et al.): see _neighbour_sum.


def _check_inputs(images: Tensor, maps: Tensor, classes: Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"maps must be (B, H, W) = {(images.shape[0], *images.shape[-2:])}, got {tuple(maps.shape)}")
    if classes.shape != (images.shape[0],):
        raise ValueError(f"classes must be (B,) = ({images.shape[0]},), got {tuple(classes.shape)}")
    if torch.isnan(maps).any():
        raise ValueError("maps contain NaN")


def target_scores(logits: Tensor, classes: Tensor, score: Score = "softmax") -> Tensor:
    """``(B,)`` score of ``classes[b]`` in ``logits`` ``(B, C)``: softmax probability (single-label
    models), sigmoid probability (multi-label) or the raw logit; in float64."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    logits = logits.double()
    if score == "softmax":
        logits = logits.softmax(dim=1)
    elif score == "sigmoid":
        logits = logits.sigmoid()
    return logits.gather(1, classes.view(-1, 1).to(logits.device)).squeeze(1)


def relevance_rank(maps: Tensor) -> Tensor:
    """``(B, H, W)`` long: each pixel's place in its map's order, 0 = most relevant. Ties keep
    row-major order (a stable sort), so the order is defined for maps with flat regions."""
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=maps.device).expand_as(order))
    return rank.view_as(maps)


def baseline_images(images: Tensor, baseline: Baseline) -> Tensor:
    """What a removed pixel becomes (``blur``, ``mean``, ``zero``), ``(B, C, H, W)``.

    ``blur``: Gaussian blur (11 px, sigma 5, RISE's); ``mean``: each image's own per-channel mean;
    ``zero``: 0 in input space, i.e. the dataset's mean colour for normalised inputs (what GAIN's
    erasing writes). ``context`` depends on the removed region: :func:`perturbation_curve` fills
    it with :func:`gainet.core.counterfactual.fill_from_context` at every step.
    """
    if baseline == "blur":
        from torchvision.transforms.functional import gaussian_blur

        return gaussian_blur(images, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])
    if baseline == "mean":
        return images.mean(dim=(-2, -1), keepdim=True).expand_as(images)
    if baseline == "zero":
        return torch.zeros_like(images)
    raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")


@dataclass
class PerturbationCurve:
    """Scores along a deletion or insertion run.

    Attributes:
        fractions: ``(S + 1,)`` share of the pixels removed / revealed at each step, 0 to 1.
        scores: ``(B, S + 1)`` float64 target score after each step.
        auc: ``(B,)`` trapezoidal area under ``scores`` over ``fractions``.
    """

    fractions: Tensor
    scores: Tensor
    auc: Tensor


def curve_auc(fractions: Tensor, scores: Tensor) -> Tensor:
    """Trapezoidal area under ``scores`` ``(B, S + 1)`` over ``fractions`` ``(S + 1,)``: ``(B,)``."""
    return torch.trapezoid(scores.double(), fractions.double().to(scores.device), dim=1)


@torch.no_grad()
def perturbation_curve(
    model: nn.Module | Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    classes: Tensor,
    *,
    mode: Literal["deletion", "insertion"] = "deletion",
    steps: int = 20,
    baseline: Baseline = "zero",
    score: Score = "softmax",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> PerturbationCurve:
    """Deletion or insertion curve of every image, in the map's order.

    At step ``k`` (``0..steps``) the ``floor(k * N / steps)`` most relevant pixels (``N = H * W``;
    order by :func:`relevance_rank`) are replaced by the baseline (deletion) or are the only ones
    taken from the image, the rest being baseline (insertion). Step 0 scores the intact image
    (deletion) or the baseline (insertion); step ``steps`` the reverse.

    Args:
        model: ``(n, C, H, W) -> (n, K)`` logits, called in its current mode without gradients.
        images: ``(B, C, H, W)`` in the model's input space.
        maps: ``(B, H, W)`` relevance (any range; only the order counts).
        classes: ``(B,)`` long, the class whose score is read.
        mode: ``deletion`` or ``insertion``.
        steps: number of steps ``S`` (``S + 1`` forward passes per image).
        baseline: ``blur``, ``mean``, ``zero`` (:func:`baseline_images`) or, for deletion only,
            ``context``: the removed pixels filled from the remaining ones at each step
            (:func:`~gainet.core.counterfactual.fill_from_context`; the last step, with nothing
            left, is all 0).
        score: ``softmax``, ``sigmoid`` or ``logit`` (:func:`target_scores`).
        batch_size: images per forward pass.
        generator: for the ``context`` fill's grain.
        progress: progress bar over the steps.
    """
    _check_inputs(images, maps, classes)
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if baseline == "context" and mode == "insertion":
        raise ValueError("baseline 'context' fills removed pixels from the rest: use it for deletion only")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    rank = relevance_rank(maps.to(images.device))[:, None]  # (B, 1, H, W)
    total = rank.shape[-1] * rank.shape[-2]
    fixed = None if baseline == "context" else baseline_images(images, baseline)
    classes = classes.to(images.device)
    scores = torch.empty(images.shape[0], steps + 1, dtype=torch.float64)
    for step in progress_bar(range(steps + 1), enabled=progress, desc=mode, leave=False):
        count = step * total // steps
        first = rank < count  # the `count` most relevant pixels
        for start in range(0, images.shape[0], batch_size):
            part = slice(start, start + batch_size)
            image, chosen = images[part], first[part]
            if mode == "deletion":
                if fixed is None:
                    perturbed, ok = fill_from_context(image, chosen[:, 0].to(image.dtype), generator=generator)
                    # Everything removed: no context left to fill from, so the image becomes 0.
                    perturbed = torch.where(ok[:, None, None, None], perturbed, torch.zeros_like(perturbed))
                else:
                    perturbed = torch.where(chosen, fixed[part], image)
            else:
                perturbed = torch.where(chosen, image, fixed[part])
            scores[part, step] = target_scores(model(perturbed), classes[part], score).cpu()
    fractions = torch.tensor([step * total // steps / total for step in range(steps + 1)], dtype=torch.float64)
    return PerturbationCurve(fractions, scores, curve_auc(fractions, scores))


def _neighbour_sum(values: Tensor) -> Tensor:
    """Weighted sum of each pixel's in-image neighbours (zero outside), ``(N, 1, H, W)``.

    The kernel is ``(outer([1, 2, 1], [1, 2, 1]) - 4 * centre) / 12``, so it runs as two passes of
    shifted-slice sums: several times faster on the CPU than a 3x3 ``conv2d``.
    """
    padded = F.pad(values, (1, 1, 1, 1))
    rows = padded[..., :, :-2] + 2.0 * padded[..., :, 1:-1] + padded[..., :, 2:]
    both = rows[..., :-2, :] + 2.0 * rows[..., 1:-1, :] + rows[..., 2:, :]
    return (both - 4.0 * values) / 12.0


COARSEST_SIDE = 8  # multigrid levels halve the image down to this side


class _Level:
    """One level of the multigrid preconditioner of ROAD's imputation system.

    ``hole`` ``(N, 1, H, W)`` in {0, 1} marks the unknowns; the operator is
    ``A v = hole * (S * v - neighbour_sum(v))`` with ``S`` the in-image neighbours' weight sum.
    The next level's unknowns are the 2x2 blocks holding any unknown; prolongation is bilinear
    upsampling (masked), restriction its exact adjoint, so that the V-cycle is a symmetric
    positive-definite preconditioner, as conjugate gradients needs.
    """

    def __init__(self, hole: Tensor) -> None:
        self.hole = hole
        height, width = hole.shape[-2:]
        self.weight_sum = _neighbour_sum(torch.ones(1, 1, height, width, dtype=hole.dtype, device=hole.device))
        self.coarse = _Level(F.max_pool2d(hole, 2, ceil_mode=True)) if min(height, width) >= 2 * COARSEST_SIDE else None

    def operator(self, v: Tensor) -> Tensor:
        return self.hole * (self.weight_sum * v - _neighbour_sum(v))

    def _upsample(self, coarse: Tensor) -> Tensor:
        return F.interpolate(coarse, size=tuple(self.hole.shape[-2:]), mode="bilinear", align_corners=False)

    def _restrict(self, residual: Tensor) -> Tensor:
        """The adjoint of (masked) bilinear upsampling, applied to ``residual``."""
        assert self.coarse is not None
        probe = torch.zeros(self.coarse.hole.shape, dtype=residual.dtype, device=residual.device, requires_grad=True)
        with torch.enable_grad():
            (adjoint,) = torch.autograd.grad(self._upsample(probe), probe, self.hole * residual)
        return self.coarse.hole * adjoint

    def _smooth(self, x: Tensor, rhs: Tensor, steps: int) -> Tensor:
        for _ in range(steps):  # damped Jacobi (omega 0.8): symmetric, so the V-cycle is too
            x = x + 0.8 * (rhs - self.operator(x)) / self.weight_sum
        return x

    def v_cycle(self, rhs: Tensor) -> Tensor:
        """Approximate ``A^-1 rhs``: 2 Jacobi steps, the coarse correction, 2 Jacobi steps (30
        Jacobi steps alone on the coarsest level)."""
        steps = 2 if self.coarse is not None else 30
        x = self._smooth(torch.zeros_like(rhs), rhs, steps)
        if self.coarse is None:
            return x
        x = x + self.hole * self._upsample(self.coarse.v_cycle(self._restrict(rhs - self.operator(x))))
        return self._smooth(x, rhs, steps)


def _harmonic_fill(values: Tensor, hole: Tensor, tolerance: float, max_iterations: int) -> tuple[Tensor, int]:
    """Solve the imputation system of :func:`noisy_linear_impute` by conjugate gradients
    preconditioned with a multigrid V-cycle (:class:`_Level`), started from the push-pull fill.

    ``values`` ``(B, C, H, W)`` (the kept pixels are the boundary condition), ``hole``
    ``(B, 1, H, W)`` in {0, 1}. Returns the filled images (kept pixels from ``values``) and the
    number of iterations (about 10 on 224 px images, whatever the hole's size).
    """
    batch, channels, height, width = values.shape
    start, ok = fill_from_context(values, hole[:, 0], smoothing_steps=0, noise=False)
    # No kept pixel at all: nothing to impute from; 0 (A is singular there, and b = 0 keeps it).
    start = torch.where(ok[:, None, None, None], start, torch.zeros_like(start))
    # One system per (image, channel): channels folded into the batch.
    hole_bc = hole.expand(-1, channels, -1, -1).reshape(batch * channels, 1, height, width)
    level = _Level(hole_bc)
    known_part = (values * (1.0 - hole)).reshape(batch * channels, 1, height, width)
    rhs = hole_bc * _neighbour_sum(known_part)
    x = start.reshape(batch * channels, 1, height, width) * hole_bc

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).flatten(1).sum(1).view(-1, 1, 1, 1)

    residual = rhs - level.operator(x)
    bound = tolerance * rhs.flatten(1).norm(dim=1)
    z = level.v_cycle(residual)
    direction = z
    rz = dot(residual, z)
    iterations = 0
    while iterations < max_iterations and not bool((residual.flatten(1).norm(dim=1) <= bound).all()):
        a_direction = level.operator(direction)
        curvature = dot(direction, a_direction)
        alpha = torch.where(curvature > 0, rz / curvature.clamp_min(1e-300), torch.zeros_like(rz))
        x = x + alpha * direction
        residual = residual - alpha * a_direction
        z = level.v_cycle(residual)
        rz_next = dot(residual, z)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(1e-300), torch.zeros_like(rz))
        direction = z + beta * direction
        rz = rz_next
        iterations += 1
    filled = x.view(batch, channels, height, width)
    return torch.where(hole > 0, filled, values), iterations


def noisy_linear_impute(
    images: Tensor,
    keep: Tensor,
    *,
    noise: float = ROAD_NOISE,
    generator: torch.Generator | None = None,
    tolerance: float = 1e-4,
    max_iterations: int = 200,
) -> tuple[Tensor, int]:
    """ROAD's noisy linear imputation of the pixels outside ``keep``, all images at once.

    Every removed pixel ``i`` gets the weighted mean of its in-image neighbours (weights 1/6 edge,
    1/12 diagonal, renormalised at the border): ``S_i x_i = sum_n w_n x_n`` over removed and kept
    neighbours alike, a sparse symmetric positive-definite system per image and channel. It is
    solved by Jacobi-preconditioned conjugate gradients on the whole batch (a 3x3 convolution per
    iteration), started from the push-pull fill of
    :func:`~gainet.core.counterfactual.fill_from_context`, until every system's residual is below
    ``tolerance`` times its right-hand side (relative 2-norm). Then Gaussian noise of standard
    deviation ``noise`` is added to the imputed pixels.

    Accuracy: with the default ``tolerance`` (1e-4) the imputed pixels of a 224 px image with a
    10-90 % hole were within 5e-5 of a float64 sparse direct solve (ROAD's noise is 0.01), after
    9-13 iterations.

    Args:
        images: ``(B, C, H, W)``.
        keep: ``(B, H, W)`` bool, True for the pixels kept as they are.
        noise: absolute noise level (ROAD: 0.01).
        generator: for the noise (drawn on the CPU).
        tolerance, max_iterations: the solver's stopping rule.

    Returns:
        ``(imputed, iterations)``: ``(B, C, H, W)`` images (kept pixels unchanged; an image with
        no kept pixel becomes 0 plus noise: nothing to impute from) and the iterations run.
    """
    if keep.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"keep must be (B, H, W) = {(images.shape[0], *images.shape[-2:])}, got {tuple(keep.shape)}")
    batch, channels, height, width = images.shape
    dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    values = images.to(dtype)
    hole = (~keep.bool())[:, None].to(dtype)  # (B, 1, H, W)
    x, iterations = _harmonic_fill(values, hole, tolerance, max_iterations)
    imputed = x
    if noise:
        grain = torch.randn(imputed.shape, generator=generator, dtype=dtype, device="cpu").to(images.device)
        imputed = imputed + noise * grain
    return torch.where(hole > 0, imputed, values).to(images.dtype), iterations


def road_keep(maps: Tensor, percentile: float, order: Literal["morf", "lerf"]) -> Tensor:
    """``(B, H, W)`` bool, the pixels ROAD keeps at ``percentile`` (0-100).

    MoRF removes the pixels at or above the map's ``percentile``-th percentile (linear
    interpolation, as ``numpy.percentile``): ``100 - percentile`` % of them for a map without
    ties. LeRF removes, in ``1 - map``, the same share from the other end. Ties at the threshold
    go together (both removed), so a flat map can lose more than the share.
    """
    flat = maps.flatten(1).double()
    if order == "lerf":
        flat = 1.0 - flat
    threshold = torch.quantile(flat, percentile / 100.0, dim=1, keepdim=True)
    return (flat < threshold).view(maps.shape)


@dataclass
class RoadResult:
    """ROAD score changes per image.

    Attributes:
        percentiles: the removal percentiles (``p``: MoRF keeps the pixels under the map's
            ``p``-th percentile, removing the top ``100 - p`` %; LeRF removes the bottom ``p`` %).
        morf, lerf: ``(B, P)`` float64 score after imputation minus the intact image's score.
        morf_mean, lerf_mean: ``(B,)`` their means over the percentiles.
        combined: ``(B,)`` ``(lerf_mean - morf_mean) / 2``: high when removing the relevant
            pixels hurts and removing the irrelevant ones does not.
    """

    percentiles: tuple[float, ...]
    morf: Tensor
    lerf: Tensor

    @property
    def morf_mean(self) -> Tensor:
        return self.morf.mean(dim=1)

    @property
    def lerf_mean(self) -> Tensor:
        return self.lerf.mean(dim=1)

    @property
    def combined(self) -> Tensor:
        return (self.lerf_mean - self.morf_mean) / 2


@torch.no_grad()
def road(
    model: nn.Module | Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    classes: Tensor,
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    noise: float = ROAD_NOISE,
    score: Score = "softmax",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    tolerance: float = 1e-4,
    progress: bool = False,
) -> RoadResult:
    """ROAD, most- and least-relevant first (:func:`road_keep`, :func:`noisy_linear_impute`).

    Args:
        model: ``(n, C, H, W) -> (n, K)`` logits, called in its current mode without gradients.
        images: ``(B, C, H, W)``; maps: ``(B, H, W)``; classes: ``(B,)`` long.
        percentiles: removal percentiles in (0, 100).
        noise: the imputation's noise level.
        score: ``softmax``, ``sigmoid`` or ``logit``.
        batch_size: images per forward pass (and per imputation).
        generator: for the imputation noise.
        tolerance: the imputation solver's (:func:`noisy_linear_impute`).
        progress: progress bar over the 2 x P imputations.
    """
    _check_inputs(images, maps, classes)
    percentiles = tuple(float(p) for p in percentiles)
    if not percentiles or any(not 0 < p < 100 for p in percentiles):
        raise ValueError(f"ROAD percentiles must lie in (0, 100), got {list(percentiles)}")
    classes = classes.to(images.device)
    maps = maps.to(images.device)

    def scores_of(batch: Tensor, part: slice) -> Tensor:
        return target_scores(model(batch), classes[part], score).cpu()

    intact = torch.cat([scores_of(images[s], s) for s in _chunks(images.shape[0], batch_size)])
    results = {"morf": torch.empty(images.shape[0], len(percentiles), dtype=torch.float64),
               "lerf": torch.empty(images.shape[0], len(percentiles), dtype=torch.float64)}
    jobs = [(order, i, p) for order in ("morf", "lerf") for i, p in enumerate(percentiles)]
    for order, index, percentile in progress_bar(jobs, enabled=progress, desc="ROAD", leave=False):
        for part in _chunks(images.shape[0], batch_size):
            keep = road_keep(maps[part], percentile, order)
            # Imputed a few images at a time: the solver's iterations are the batch's slowest
            # image's, and small arrays stay in cache (4: 2x faster per image than 64, measured).
            imputed = torch.cat([
                noisy_linear_impute(images[part][sub], keep[sub], noise=noise, generator=generator,
                                    tolerance=tolerance)[0]
                for sub in _chunks(keep.shape[0], IMPUTE_BATCH)])
            results[order][part, index] = scores_of(imputed, part) - intact[part]
    return RoadResult(percentiles, results["morf"], results["lerf"])


def _chunks(total: int, size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, total, size)]


# Names of the means that :func:`faithfulness_summary` returns, in report order.
FAITHFULNESS_METRICS = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf", "road")


def faithfulness_summary(
    model: nn.Module | Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    classes: Tensor,
    *,
    score: Score = "softmax",
    steps: int = 20,
    deletion_baseline: Baseline = "zero",
    insertion_baseline: Baseline = "blur",
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Mean deletion AUC (low is faithful), insertion AUC (high), ROAD MoRF and LeRF score changes
    and ROAD's combined ``(lerf - morf) / 2`` (high) over the images: the numbers the evaluation
    report shows. Arguments as :func:`perturbation_curve` and :func:`road` (default percentiles);
    ``seed`` seeds the imputation noise."""
    generator = torch.Generator().manual_seed(seed)
    deletion = perturbation_curve(model, images, maps, classes, mode="deletion", steps=steps, baseline=deletion_baseline,
                                  score=score, batch_size=batch_size, generator=generator, progress=progress)
    insertion = perturbation_curve(model, images, maps, classes, mode="insertion", steps=steps,
                                   baseline=insertion_baseline, score=score, batch_size=batch_size, progress=progress)
    removed = road(model, images, maps, classes, score=score, batch_size=batch_size, generator=generator,
                   progress=progress)
    values = (deletion.auc.mean(), insertion.auc.mean(), removed.morf_mean.mean(), removed.lerf_mean.mean(),
              removed.combined.mean())
    return {name: float(value) for name, value in zip(FAITHFULNESS_METRICS, values)}
