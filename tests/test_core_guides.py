"""The guidance terms (one unit per mode) and the one forward pass over originals + counterfactual
rows (issue 18), against independent computations: numpy formulas in float64, finite differences
for the gradients, a plain model on the concatenated batch for GAIN's single forward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from gainet.core import GAIN
from gainet.core.batch_transforms import (
    KINDS,
    ContextOnly,
    ContextSwap,
    CounterfactualCollate,
    CounterfactualRows,
    CounterfactualTransforms,
    MaskedCounterpart,
)
from gainet.core.guidance import (
    GUIDES,
    GuidanceBatch,
    GuideTerm,
    batch_transforms,
    build_guides,
    parse_guidance,
    soft_target_loss,
    term_mean,
)
from gainet.core.guidance.context_only import ContextOnlyGuide
from gainet.core.guidance.rrr import RRRGuide
from gainet.models import build_classifier


def _rows(scores_rows: int, kind: str, targets: torch.Tensor, labels: torch.Tensor | None = None,
          source: list[int] | None = None, weights: list[float] | None = None) -> CounterfactualRows:
    size = targets.shape[0]
    return CounterfactualRows(
        images=torch.zeros(size, 3, 4, 4, dtype=targets.dtype), targets=targets,
        labels=targets if labels is None else labels,
        weights=torch.tensor(weights or [1.0] * size, dtype=targets.dtype),
        source=torch.tensor(source or [0] * size), kind=torch.full((size,), KINDS.index(kind)))


def _batch(scores: torch.Tensor, rows: CounterfactualRows, originals: int, *, multi_label: bool,
           features: torch.Tensor | None = None, labels: torch.Tensor | None = None,
           supervised: torch.Tensor | None = None) -> GuidanceBatch:
    classes = scores.shape[1]
    return GuidanceBatch(
        inputs=torch.zeros(originals, 3, 4, 4, dtype=scores.dtype),
        scores=scores, features=scores[:, :, None, None] if features is None else features,
        labels=torch.zeros(originals, classes, dtype=scores.dtype) if labels is None else labels,
        masks=None, supervised=torch.ones(originals, dtype=torch.bool) if supervised is None else supervised,
        rows=rows, multi_label=multi_label)


# ---------------------------------------------------------------------- per-row losses
def test_soft_target_loss_against_explicit_formulas() -> None:
    scores = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [-1.0, 3.0, 0.0]], dtype=torch.float64)
    s = scores.numpy()
    p = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    uniform = torch.full((3, 3), 1 / 3, dtype=torch.float64)
    kl = [np.sum((1 / 3) * np.log((1 / 3) / p[i])) for i in range(3)]
    torch.testing.assert_close(soft_target_loss(scores, uniform, False), torch.tensor(kl, dtype=torch.float64))
    one_hot = torch.eye(3, dtype=torch.float64)[[0, 2, 1]]
    ce = [-np.log(p[0, 0]), -np.log(p[1, 2]), -np.log(p[2, 1])]
    torch.testing.assert_close(soft_target_loss(scores, one_hot, False), torch.tensor(ce, dtype=torch.float64))
    zeros = torch.zeros(3, 3, dtype=torch.float64)
    bce = np.log1p(np.exp(s)).mean(1)  # -log(1 - sigmoid(s)) = log(1 + e^s)
    torch.testing.assert_close(soft_target_loss(scores, zeros, True), torch.tensor(bce, dtype=torch.float64))


def test_each_guide_against_its_formula_with_row_weights() -> None:
    scores = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, -1.0], [0.3, 0.3], [-2.0, 2.0]], dtype=torch.float64)
    s, originals = scores.numpy(), 2
    p = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    # Rows 2, 3: swaps (targets class 0, class 1), weights 1 and 0.5; row 4: context-only.
    swaps = _rows(2, "context-swap", torch.eye(2, dtype=torch.float64), weights=[1.0, 0.5])
    context = _rows(1, "context-only", torch.full((1, 2), 0.5, dtype=torch.float64),
                    labels=torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    batch = _batch(scores, CounterfactualRows.cat([swaps, context]), originals, multi_label=False)
    term = GUIDES["context-swap"]()(batch)
    expected = (1.0 * -np.log(p[2, 0]) + 0.5 * -np.log(p[3, 1])) / 1.5
    assert term.count == 1.5 and term.mean().item() == pytest.approx(expected, abs=1e-12)
    uniform = ContextOnlyGuide("uniform")(batch)
    assert uniform.mean().item() == pytest.approx(np.sum(0.5 * np.log(0.5 / p[4])), abs=1e-12)
    erased = ContextOnlyGuide("erased")(batch)
    assert erased.mean().item() == pytest.approx(p[4, 1], abs=1e-12)
    # upweight: the supervised originals' L_cl (row 1 supervised, class 0).
    labels = torch.eye(2, dtype=torch.float64)[[1, 0]]
    up = GUIDES["upweight"]()(_batch(scores, swaps, originals, multi_label=False, labels=labels,
                                     supervised=torch.tensor([False, True])))
    assert up.count == 1 and up.mean().item() == pytest.approx(-np.log(p[1, 0]), abs=1e-12)


def test_actdiff_is_the_mean_l2_norm_of_the_activation_difference() -> None:
    generator = torch.Generator().manual_seed(0)
    rows = _rows(2, "counterpart", torch.zeros(2, 2, dtype=torch.float64), source=[1, 0])
    rows = CounterfactualRows.cat([_rows(1, "context-swap", torch.zeros(1, 2, dtype=torch.float64)), rows])
    # Rows of the forward: 0..2 originals, 3 a swap, 4 and 5 the counterparts of originals 1 and 0.
    features = torch.randn(6, 4, 3, 3, generator=generator, dtype=torch.float64)
    batch = _batch(torch.zeros(6, 2, dtype=torch.float64), rows, 3, multi_label=True, features=features)
    f = features.numpy()
    expected = np.mean([np.linalg.norm(f[4] - f[1]), np.linalg.norm(f[5] - f[0])])  # not squared
    term = GUIDES["actdiff"]()(batch)
    assert term.count == 2 and term.mean().item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("multi_label", [False, True])
def test_rrr_against_the_analytic_gradient_of_a_linear_model(multi_label: bool) -> None:
    torch.manual_seed(0)
    classes, size = 3, 4
    weight = torch.randn(classes, 3 * size * size, dtype=torch.float64)
    images = torch.randn(3, 3, size, size, dtype=torch.float64, requires_grad=True)
    scores = images.flatten(1) @ weight.T
    masks = torch.zeros(3, classes, size, size, dtype=torch.float64)
    masks[0, 0, 1:3, 1:3] = 1.0
    masks[1, 1, :, :2] = 1.0
    masks[2, 2, :2, :2] = 1.0  # not supervised: no penalty
    batch = GuidanceBatch(images, scores, scores[:, :, None, None], torch.eye(classes, dtype=torch.float64), masks,
                          torch.tensor([True, True, False]), CounterfactualRows.empty(images.detach(), classes),
                          multi_label)
    term = RRRGuide()(batch)
    w, x = weight.numpy(), images.detach().flatten(1).numpy()
    total = 0.0
    for i in range(2):
        s = w @ x[i]
        if multi_label:  # d/dx sum_k log sigmoid(s_k) = sum_k (1 - sigmoid(s_k)) w_k
            grad = ((1 - 1 / (1 + np.exp(-s)))[:, None] * w).sum(0)
        else:  # d/dx sum_k log softmax_k = sum_k w_k - C sum_j p_j w_j
            q = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            grad = w.sum(0) - classes * (q[:, None] * w).sum(0)
        allowed = masks[i].amax(0).numpy() > 0.5
        dilated = np.zeros_like(allowed)
        for r, c in zip(*np.nonzero(allowed)):  # 3x3 dilation, by hand
            dilated[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = True
        outside = np.tile(1 - dilated.reshape(-1), 3)
        total += np.sum((outside * grad) ** 2)
    assert term.count == 2 and term.mean().item() == pytest.approx(total / 2, rel=1e-10)
    term.mean().backward()  # part of the graph (double backward)
    assert images.grad is not None and torch.isfinite(images.grad).all()
    with pytest.raises(ValueError, match="requires_grad"):
        RRRGuide()(GuidanceBatch(images.detach(), scores.detach(), scores[:, :, None, None].detach(),
                                 torch.eye(classes), masks, torch.tensor([True, True, False]),
                                 CounterfactualRows.empty(images.detach(), classes), multi_label))


def test_parse_guidance_vocabulary_and_the_transforms_each_mode_needs() -> None:
    assert parse_guidance("context-swap,l_e") == ("context-swap", "l_e")
    assert parse_guidance("rrr+actdiff") == ("rrr", "actdiff")
    assert parse_guidance("") == () and parse_guidance(None) == ()
    with pytest.raises(ValueError, match="unknown guidance mode 'swap'"):
        parse_guidance("swap")
    assert [g.name for g in build_guides("l_e,rrr,context-swap")] == ["rrr", "context-swap"]
    kinds = lambda modes: [type(t).__name__ for t in batch_transforms(build_guides(modes), multi_label=True).transforms]
    assert kinds("rrr,upweight,l_e") == []
    assert kinds("context-swap") == ["ContextSwap"]
    assert kinds("actdiff,context-only,context-swap") == ["ContextOnly", "ContextSwap", "MaskedCounterpart"]


# ---------------------------------------------------------------------- the one forward pass
def _gain(multi_label: bool = False, counterfactual_batchnorm: str = "own") -> GAIN:
    torch.manual_seed(0)
    return GAIN(build_classifier("small-cnn", 3, width=8), multi_label=multi_label, probe_size=32,
                counterfactual_batchnorm=counterfactual_batchnorm).double()


def _scene(batch: int = 6):
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(batch, 3, 32, 32, generator=generator, dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)[[b % 3 for b in range(batch)]]
    masks = torch.zeros(batch, 3, 32, 32, dtype=torch.float64)
    for b in range(batch):
        masks[b, b % 3, 8:20, 10:22] = 1.0
        images[b, :, 8:20, 10:22] += 2.0 * (b % 3)
    supervised = torch.tensor([True, True, True, False, True, False][:batch])
    return images, labels, masks, supervised


def test_gain_forward_shared_runs_originals_and_counterfactual_rows_as_one_batch() -> None:
    gain = _gain(counterfactual_batchnorm="shared").train()
    images, labels, masks, supervised = _scene()
    rows = CounterfactualTransforms([ContextOnly(multi_label=False), ContextSwap()])(
        images, labels, masks, supervised, generator=torch.Generator().manual_seed(0))
    assert len(rows) > 0
    reference = _gain(counterfactual_batchnorm="shared").train()  # same weights: the plain model on images + rows
    expected = reference.model(torch.cat([images, rows.images]))
    out = gain(images, labels, masks, supervised, mine=False, counterfactuals=rows.images)
    torch.testing.assert_close(out.all_scores, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(out.scores, expected[: images.shape[0]], atol=1e-10, rtol=0)
    assert out.features.shape[0] == images.shape[0] + len(rows)
    # L_cl is the originals' only; BatchNorm's running statistics saw all B + S rows, as the plain model's did.
    ce = torch.nn.functional.cross_entropy(expected[:6], labels.argmax(1))
    assert out.loss_cl.item() == pytest.approx(ce.item(), abs=1e-10)
    for a, b in zip(gain.model.buffers(), reference.model.buffers()):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="counterfactuals"):
        gain(images, labels, counterfactuals=rows.images[:, :, :16])


def test_gain_forward_own_normalises_the_rows_as_a_batch_of_their_own() -> None:
    """Issue 34's default: the originals see exactly a plain forward (scores and running statistics),
    the rows are normalised with their own batch statistics and move no running statistic."""
    import copy

    gain = _gain().train()
    images, labels, masks, supervised = _scene()
    rows = CounterfactualTransforms([ContextOnly(multi_label=False), ContextSwap()])(
        images, labels, masks, supervised, generator=torch.Generator().manual_seed(0))
    assert len(rows) > 1
    reference = _gain().model.train()
    throwaway = copy.deepcopy(reference)  # its running buffers are discarded after the rows' pass
    expected_rows = throwaway(rows.images)
    expected = reference(images)  # the only pass that moves the running statistics
    out = gain(images, labels, masks, supervised, mine=False, counterfactuals=rows.images)
    torch.testing.assert_close(out.all_scores, torch.cat([expected, expected_rows]), atol=1e-10, rtol=0)
    assert out.features.shape[0] == images.shape[0] + len(rows)
    for a, b in zip(gain.model.buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # The rows' statistics differ from the originals': normalised with the originals (shared) they score otherwise.
    shared = _gain(counterfactual_batchnorm="shared").train()
    assert not torch.allclose(shared(images, labels, counterfactuals=rows.images).all_scores[6:], expected_rows,
                              atol=1e-6)
    # The rows' gradient reaches the weights through the second call.
    out.all_scores[6:].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gain.model.parameters())
    # One row: normalised with the running statistics (a batch of one has none of its own).
    lone = gain(images, labels, counterfactuals=rows.images[:1]).all_scores[-1]
    torch.testing.assert_close(lone, copy.deepcopy(gain.model).eval()(rows.images[:1])[0], atol=1e-10, rtol=0)
    # Zero rows in one process: the plain forward alone.
    empty = gain(images, labels, counterfactuals=rows.images[:0])
    assert empty.all_scores.shape[0] == images.shape[0]
    with pytest.raises(ValueError, match="counterfactual_batchnorm"):
        GAIN(build_classifier("small-cnn", 3, width=8), counterfactual_batchnorm="joint")


@pytest.mark.parametrize("counterfactual_batchnorm", ["own", "shared"])
def test_gain_maps_with_rows_at_an_autograd_layer(counterfactual_batchnorm: str) -> None:
    """Grad-CAM differentiates the images' scores by the activations of the same backbone call:
    with the rows in a call of their own, the concatenated activations are not in that graph."""
    torch.manual_seed(0)
    gain = GAIN(build_classifier("small-cnn", 3, width=8), "features.11", multi_label=False, probe_size=32,
                counterfactual_batchnorm=counterfactual_batchnorm).double().train()
    images, labels, masks, supervised = _scene()
    rows = CounterfactualTransforms([ContextSwap()])(images, labels, masks, supervised,
                                                      generator=torch.Generator().manual_seed(0))
    out = gain(images, labels, masks, supervised, counterfactuals=rows.images)
    plain = GAIN(build_classifier("small-cnn", 3, width=8), "features.11", multi_label=False, probe_size=32).double()
    plain.load_state_dict(gain.state_dict())
    expected = plain.train()(images, labels, masks, supervised)
    if counterfactual_batchnorm == "own":  # the originals' maps are those of a plain forward
        torch.testing.assert_close(out.attention, expected.attention, atol=1e-10, rtol=0)
    assert torch.isfinite(out.loss) and out.loss_e > 0
    out.loss.backward()


def _guided_loss(gain: GAIN, images, labels, masks, supervised, rows, guide) -> torch.Tensor:
    inputs = images.clone().requires_grad_(guide.input_gradient)
    out = gain(inputs, labels, masks, supervised, mine=False, counterfactuals=rows.images)
    batch = GuidanceBatch(inputs, out.all_scores, out.features, labels, masks, supervised, rows, gain.multi_label)
    return guide(batch).mean()


@pytest.mark.parametrize("mode", list(GUIDES))
@pytest.mark.parametrize("multi_label", [False, True])
def test_every_guide_gradient_matches_finite_differences(mode: str, multi_label: bool) -> None:
    """A guide whose scores or activations were detached (or whose term were cut from the graph)
    would have a zero or wrong gradient here; the central difference says what it must be."""
    gain = _gain(multi_label).eval()  # running BatchNorm statistics: a deterministic function
    # ReLU kinks make rrr's input gradient jump under any parameter step (its value on an
    # untrained net is ~1e-10): smooth activations make the central difference exact to O(eps^2).
    features = gain.model.features
    for index, module in enumerate(features):
        if isinstance(module, torch.nn.ReLU):
            features[index] = torch.nn.Softplus(beta=4.0)
    images, labels, masks, supervised = _scene()
    transforms = batch_transforms(build_guides(mode), multi_label=multi_label, partners=2)
    rows = transforms(images, labels, masks, supervised, generator=torch.Generator().manual_seed(0)) if transforms \
        else CounterfactualRows.empty(images, 3)
    guide = build_guides(mode)[0]
    parameters = [p for p in gain.parameters() if p.requires_grad]
    loss = _guided_loss(gain, images, labels, masks, supervised, rows, guide)
    assert loss.item() > 0
    # actdiff reads the attention layer's activations: the head after it gets no gradient.
    gradients = [torch.zeros_like(p) if g is None else g
                 for p, g in zip(parameters, torch.autograd.grad(loss, parameters, allow_unused=True))]
    direction = [torch.randn_like(p, generator=None) for p in parameters]
    analytic = sum(float((g * d).sum()) for g, d in zip(gradients, direction))
    epsilon = 1e-6
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, d in zip(parameters, direction):
                p.add_(sign * epsilon * d)
        values.append(_guided_loss(gain, images, labels, masks, supervised, rows, guide).item())
        with torch.no_grad():
            for p, d in zip(parameters, direction):
                p.sub_(sign * epsilon * d)
    numeric = (values[0] - values[1]) / (2 * epsilon)
    scale = abs(loss.item())  # rrr's penalty on an untrained net is ~1e-5: compare relative to it
    assert abs(numeric) > 1e-3 * scale
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-7 * scale)


# ---------------------------------------------------------------------- global-batch means
def test_term_mean_makes_the_average_over_ranks_the_global_batch_mean() -> None:
    """DDP averages the per-rank losses' gradients; with scale W n_r / N each rank's term is its
    share of the global mean, whatever the ranks hold, a rank with no item included."""
    totals = [torch.tensor(3.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64),
              torch.tensor(5.0, dtype=torch.float64)]
    counts = [2.0, 0.0, 6.0]
    world, everything = len(totals), sum(counts)
    shares = [term_mean(GuideTerm(t, n), world * n / everything) for t, n in zip(totals, counts)]
    assert float(sum(shares)) / world == pytest.approx(8.0 / 8.0, abs=1e-12)  # sum of totals / N
    # The plain average of per-rank means would weight rank 0's 2 items like rank 2's 6.
    plain = np.mean([3.0 / 2.0, 0.0, 5.0 / 6.0])
    assert not math.isclose(plain, 1.0)
    assert float(GuideTerm(torch.tensor(0.0), 0.0).mean()) == 0.0


# ---------------------------------------------------------------------- in the data pipeline
class _Tiny(Dataset):
    def __init__(self, size: int = 12) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(index)
        image = torch.randn(3, 16, 16, generator=generator)
        masks = torch.zeros(2, 16, 16)
        masks[index % 2, 4:10, 4:10] = 1.0
        return {"image": image, "labels": torch.eye(2)[index % 2], "target_masks": masks,
                "supervised": torch.tensor(index % 3 != 2), "index": index}


@pytest.mark.parametrize("workers", [0, 2])
def test_the_collate_builds_rows_in_the_workers_and_a_seeded_loader_repeats_them(workers: int) -> None:
    collate = CounterfactualCollate(CounterfactualTransforms([ContextOnly(), ContextSwap(partners=2),
                                                              MaskedCounterpart()]))

    def epoch():
        loader = DataLoader(_Tiny(), batch_size=6, shuffle=True, num_workers=workers, collate_fn=collate,
                            generator=torch.Generator().manual_seed(7))
        torch.manual_seed(11)  # the main process's draws when workers == 0
        return list(loader)

    first, second = epoch(), epoch()
    for a, b in zip(first, second):
        assert torch.equal(a["counterfactual"].images, b["counterfactual"].images)
    batch = first[0]
    rows = batch["counterfactual"]
    supervised = int(batch["supervised"].sum())
    assert rows.counts["rows/context-only"] == supervised and rows.counts["rows/counterpart"] == supervised
    assert rows.counts["rows/context-swap"] == 2 * supervised  # 2 partners each (both classes present)
    assert rows.images.shape[1:] == batch["image"].shape[1:]
    assert set(rows.source.tolist()) <= set(batch["supervised"].nonzero().flatten().tolist())
