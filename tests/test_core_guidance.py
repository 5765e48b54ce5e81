"""Counterfactual images and the guidance losses (issue 13), against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gainet.core import GAIN
from gainet.core.counterfactual import context_only, context_swap, fill_from_context, masks_within_boxes
from gainet.core.guidance import (
    activation_difference,
    context_only_loss,
    guidance_losses,
    input_gradient_penalty,
    parse_guidance,
    supervised_classification_loss,
)
from gainet.models import build_classifier


def _square_masks(batch: int, classes: int, labels: list[int], size: int = 16) -> torch.Tensor:
    """(B, C, H, W) with a 6x6 object of each image's class at rows/columns 5..10."""
    masks = torch.zeros(batch, classes, size, size)
    for b, c in enumerate(labels):
        masks[b, c, 5:11, 5:11] = 1.0
    return masks


# ---------------------------------------------------------------------- fill
def test_fill_of_a_linear_ramp_is_the_ramp_and_known_pixels_stay() -> None:
    # A linear function is harmonic (its 3x3 mean is its centre value): the diffusion fill of a
    # hole in a linear ramp must converge to the ramp itself.
    rows, cols = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    image = torch.stack([0.1 * cols, -0.05 * rows + 1.0, 0.02 * (rows + cols)])[None].double()
    hole = torch.zeros(1, 20, 20, dtype=torch.float64)
    hole[0, 6:13, 4:15] = 1.0
    filled, ok = fill_from_context(image, hole, smoothing_steps=2000, noise=False)
    assert bool(ok.all())
    torch.testing.assert_close(filled, image, atol=1e-6, rtol=0)
    corrupted = image.clone()
    corrupted[0, :, 6:13, 4:15] = 99.0  # the hole's content must not leak into the fill
    filled, _ = fill_from_context(corrupted, hole, smoothing_steps=2000, noise=False)
    torch.testing.assert_close(filled, image, atol=1e-6, rtol=0)


def test_fill_grain_matches_the_context_noise_and_full_holes_are_reported() -> None:
    generator = torch.Generator().manual_seed(0)
    image = 0.5 * torch.randn(1, 3, 64, 64, generator=generator, dtype=torch.float64)
    hole = torch.zeros(1, 64, 64, dtype=torch.float64)
    hole[0, 16:48, 16:48] = 1.0
    filled, _ = fill_from_context(image, hole, generator=generator)
    inside = filled[0, :, 16:48, 16:48]
    # The smooth fill of zero-mean noise is ~0; the added grain must restore std ~0.5.
    assert 0.4 < float(inside.std()) < 0.6
    assert float(inside.mean()).__abs__() < 0.1
    full = torch.ones(2, 8, 8)
    full[1, 0, 0] = 0.0
    images = torch.randn(2, 3, 8, 8)
    filled, ok = fill_from_context(images, full, noise=False)
    assert ok.tolist() == [False, True]
    torch.testing.assert_close(filled[0], images[0])  # nothing to fill from: unchanged
    torch.testing.assert_close(filled[1], images[1, :, :1, :1].expand(3, 8, 8))  # one known pixel


# ---------------------------------------------------------------------- counterfactuals
def test_context_only_removes_objects_and_counts_what_it_skips() -> None:
    images = torch.zeros(4, 3, 16, 16)
    images[:, 0] = torch.arange(4.0)[:, None, None]  # each image one context colour
    images[:, :, 5:11, 5:11] = 9.0  # the objects
    labels = torch.eye(3)[[0, 1, 2, 0]]
    masks = _square_masks(4, 3, [0, 1, 2, 0])
    masks[2] = 0.0  # empty after augmentation
    masks[3, 0] = 1.0  # covers the whole image: no context
    supervised = torch.tensor([True, True, True, True])
    result = context_only(images, masks, labels, supervised, noise=False)
    assert result.source.tolist() == [0, 1]
    assert result.counts == {"empty_mask": 1, "no_context": 1}
    torch.testing.assert_close(result.labels, labels[[0, 1]])
    for row, b in enumerate([0, 1]):
        expected = torch.zeros(3, 16, 16)
        expected[0] = float(b)
        torch.testing.assert_close(result.images[row], expected)  # flat context: the fill is exact
    none = context_only(images, masks, labels, torch.zeros(4, dtype=torch.bool))
    assert none.images.shape == (0, 3, 16, 16) and none.labels.shape == (0, 3)


def test_context_swap_pastes_the_object_on_another_class_context() -> None:
    images = torch.zeros(3, 3, 16, 16)
    images[:, 1] = torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    images[:, :, 5:11, 5:11] = torch.tensor([10.0, 20.0, 30.0])[:, None, None, None]
    labels = torch.eye(2)[[0, 0, 1]]
    masks = _square_masks(3, 2, [0, 0, 1])
    generator = torch.Generator().manual_seed(0)
    result = context_swap(images, masks, labels, noise=False, generator=generator)
    assert result.source.tolist() == [0, 1, 2]
    # Images 0 and 1 (class 0) must take image 2's context (class 1); image 2 either of the others.
    assert result.partner.tolist()[:2] == [2, 2] and result.partner.tolist()[2] in (0, 1)
    assert result.counts["same_class_partner"] == 0 and result.counts["no_partner"] == 0
    torch.testing.assert_close(result.labels, labels)
    for row in range(3):
        src, partner = int(result.source[row]), int(result.partner[row])
        expected = torch.zeros(3, 16, 16)
        expected[1] = images[partner, 1, 0, 0]
        expected[:, 5:11, 5:11] = images[src, :, 5:11, 5:11]
        torch.testing.assert_close(result.images[row], expected)


def test_context_swap_skips_a_batch_without_a_second_image_and_empty_masks() -> None:
    images = torch.randn(3, 3, 16, 16)
    labels = torch.eye(2)[[0, 0, 1]]
    masks = _square_masks(3, 2, [0, 0, 1])
    masks[1] = 0.0
    one = context_swap(images, masks, labels, torch.tensor([True, True, False]))
    assert one.images.shape[0] == 0
    assert one.counts["no_partner"] == 1 and one.counts["empty_mask"] == 1
    same = context_swap(images, _square_masks(3, 2, [0, 0, 1]), labels, torch.tensor([True, True, False]))
    assert same.images.shape[0] == 2 and same.counts["same_class_partner"] == 2  # no class-1 context


def test_masks_within_boxes_thresholds_the_map_inside_each_box() -> None:
    boxes = torch.zeros(1, 2, 4, 4)
    boxes[0, 0, 0:2, 0:3] = 1.0
    boxes[0, 1, 2:4, 2:4] = 1.0
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0] = torch.tensor([[0.2, 0.4, 1.0, 9.0], [0.6, 0.2, 0.5, 9.0], [9.0] * 4, [9.0] * 4])
    maps[0, 1] = 0.3  # flat inside the box: keep the whole box
    out = masks_within_boxes(boxes, maps)
    # In-box range 0.2..1.0: normalised >= 0.5 means value >= 0.6.
    expected0 = torch.tensor([[0, 0, 1, 0], [1, 0, 0, 0], [0] * 4, [0] * 4], dtype=torch.float32)
    torch.testing.assert_close(out[0, 0], expected0)
    torch.testing.assert_close(out[0, 1], boxes[0, 1])


# ---------------------------------------------------------------------- losses
def test_context_only_loss_against_explicit_formulas() -> None:
    scores = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]], dtype=torch.float64)
    erased = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    s = scores.numpy()
    p = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    kl = np.mean([np.sum(np.full(3, 1 / 3) * np.log((1 / 3) / p[i])) for i in range(2)])
    assert context_only_loss(scores, erased, False, "uniform").item() == pytest.approx(kl, abs=1e-12)
    assert context_only_loss(scores, erased, False, "erased").item() == pytest.approx(
        np.mean([p[0, 0], p[1, 1] + p[1, 2]]), abs=1e-12)
    bce = np.mean(np.log1p(np.exp(s)))  # -log(1 - sigmoid(s)) = log(1 + e^s)
    assert context_only_loss(scores, erased, True).item() == pytest.approx(bce, abs=1e-12)
    assert context_only_loss(scores[:0], erased[:0], False).item() == 0.0


def test_activation_difference_and_upweight_by_hand() -> None:
    a, b = torch.randn(3, 4, 2, 2, dtype=torch.float64), torch.randn(3, 4, 2, 2, dtype=torch.float64)
    expected = np.mean([np.mean((a[i].numpy() - b[i].numpy()) ** 2) for i in range(3)])
    assert activation_difference(a, b).item() == pytest.approx(expected, abs=1e-12)
    scores = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]], dtype=torch.float64)
    labels = torch.eye(2, dtype=torch.float64)[[0, 0, 1]]
    loss = supervised_classification_loss(scores, labels, torch.tensor([False, True, True]), False)
    expected = np.mean([-(0.0 - np.log(1 + math.exp(3.0))), math.log(2.0)])
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert supervised_classification_loss(scores, labels, torch.zeros(3, dtype=torch.bool), False).item() == 0.0


@pytest.mark.parametrize("multi_label", [False, True])
def test_input_gradient_penalty_against_the_analytic_gradient_of_a_linear_model(multi_label: bool) -> None:
    torch.manual_seed(0)
    classes, size = 3, 4
    weight = torch.randn(classes, 3 * size * size, dtype=torch.float64)
    images = torch.randn(2, 3, size, size, dtype=torch.float64, requires_grad=True)
    scores = images.flatten(1) @ weight.T
    allowed = torch.zeros(2, size, size, dtype=torch.float64)
    allowed[0, 1:3, 1:3] = 1.0
    allowed[1, :, :2] = 1.0
    penalty = input_gradient_penalty(images, scores, allowed, multi_label)
    w, x = weight.numpy(), images.detach().flatten(1).numpy()
    total = 0.0
    for i in range(2):
        s = w @ x[i]
        if multi_label:  # d/dx sum_k log sigmoid(s_k) = sum_k (1 - sigmoid(s_k)) w_k
            grad = ((1 - 1 / (1 + np.exp(-s)))[:, None] * w).sum(0)
        else:  # d/dx sum_k log softmax_k = sum_k w_k - C sum_j p_j w_j
            p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            grad = w.sum(0) - classes * (p[:, None] * w).sum(0)
        outside = np.tile(1 - allowed[i].numpy().reshape(-1), 3)
        total += np.sum((outside * grad) ** 2)
    assert penalty.item() == pytest.approx(total / 2, rel=1e-10)
    penalty.backward()  # part of the graph (double backward)
    assert images.grad is not None and torch.isfinite(images.grad).all()


def test_parse_guidance_vocabulary() -> None:
    assert parse_guidance("context-swap,l_e") == ("context-swap", "l_e")
    assert parse_guidance("rrr+actdiff") == ("rrr", "actdiff")
    assert parse_guidance("") == () and parse_guidance(None) == ()
    with pytest.raises(ValueError, match="unknown guidance mode 'swap'"):
        parse_guidance("swap")


# ---------------------------------------------------------------------- orchestration
def _gain() -> GAIN:
    torch.manual_seed(0)
    return GAIN(build_classifier("small-cnn", 3, width=8), multi_label=False, probe_size=32)


@pytest.mark.parametrize("swap_mask", ["mask", "attention"])
def test_guidance_losses_finite_with_gradients_and_bad_input_counted(swap_mask: str) -> None:
    gain = _gain().train()
    images = torch.randn(6, 3, 32, 32)
    labels = torch.eye(3)[[0, 1, 2, 0, 1, 2]]
    masks = torch.zeros(6, 3, 32, 32)
    for b in range(6):
        masks[b, b % 3, 8:20, 10:22] = 1.0
    masks[4] = 0.0  # empty after augmentation
    supervised = torch.tensor([True, True, True, False, True, False])
    scores = gain(images)
    modes = ["context-swap", "context-only", "actdiff", "rrr", "upweight", "l_e"]
    out = guidance_losses(gain, images, labels, masks, supervised, modes, scores=scores, swap_mask=swap_mask,
                          generator=torch.Generator().manual_seed(0))
    assert set(out.terms) == set(modes) - {"l_e"}
    assert all(torch.isfinite(t) for t in out.terms.values())
    assert all(out.terms[m].item() > 0 for m in ("context-swap", "context-only", "actdiff", "rrr", "upweight"))
    assert out.counts["empty_mask"] >= 1 and out.counts["swaps"] == 3 and out.counts["context_images"] == 3
    torch.testing.assert_close(out.loss, sum(out.terms.values()))
    out.loss.backward()
    grads = [p.grad for p in gain.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # The guidance pass itself never moves a running BatchNorm statistic.
    gain.zero_grad()
    before = [b.clone() for b in gain.buffers()]
    guidance_losses(gain, images, labels, masks, supervised, modes, scores=scores.detach(), swap_mask=swap_mask)
    assert all(torch.equal(a, b) for a, b in zip(before, gain.buffers()))

def test_guidance_losses_without_supervised_images_is_zero() -> None:
    gain = _gain().train()
    images, labels = torch.randn(4, 3, 32, 32), torch.eye(3)[[0, 1, 2, 0]]
    masks = torch.zeros(4, 3, 32, 32)
    out = guidance_losses(gain, images, labels, masks, torch.zeros(4, dtype=torch.bool),
                          ["context-swap", "rrr", "upweight"], scores=gain(images))
    assert float(out.loss) == 0.0 and out.counts["no_supervised"] == 1


def test_context_swap_with_several_partners_pastes_each_object_on_distinct_contexts() -> None:
    images = torch.zeros(4, 3, 16, 16)
    images[:, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None, None]
    images[:, :, 5:11, 5:11] = torch.tensor([10.0, 20.0, 30.0, 40.0])[:, None, None, None]
    labels = torch.eye(3)[[0, 1, 2, 2]]
    masks = _square_masks(4, 3, [0, 1, 2, 2])
    result = context_swap(images, masks, labels, noise=False, partners=3, generator=torch.Generator().manual_seed(0))
    # Image 0 (class 0) has three other-class contexts; images 2 and 3 (class 2) have two each.
    assert result.source.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    for src in range(4):
        chosen = result.partner[result.source == src].tolist()
        assert len(set(chosen)) == len(chosen) and src not in chosen
        assert all(int(labels[p].argmax()) != int(labels[src].argmax()) for p in chosen)
    for row in range(result.images.shape[0]):
        src, partner = int(result.source[row]), int(result.partner[row])
        expected = torch.zeros(3, 16, 16)
        expected[1] = images[partner, 1, 0, 0]
        expected[:, 5:11, 5:11] = images[src, :, 5:11, 5:11]
        torch.testing.assert_close(result.images[row], expected)
    torch.testing.assert_close(result.labels, labels[result.source])
    with pytest.raises(ValueError, match="partners"):
        context_swap(images, masks, labels, partners=0)


def test_guidance_losses_paste_masks_choose_the_pasted_pixels() -> None:
    gain = _gain().train()
    images = torch.randn(4, 3, 32, 32)
    labels = torch.eye(3)[[0, 1, 2, 0]]
    boxes = torch.zeros(4, 3, 32, 32)
    for b in range(4):
        boxes[b, b % 3, 8:20, 10:22] = 1.0
    paste = torch.zeros(4, 32, 32)
    paste[:, 12:16, 14:18] = 1.0  # a smaller object inside each box
    kwargs = dict(scores=gain(images).detach(), generator=torch.Generator().manual_seed(0))
    out = guidance_losses(gain, images, labels, boxes, None, ["context-swap"], paste_masks=paste, **kwargs)
    # Inside the box but outside the pasted pixels the swap shows the partner's filled context,
    # not the source's pixels.
    swap = out.swaps[0]
    assert torch.equal(swap[:, 12:16, 14:18], images[0, :, 12:16, 14:18])
    assert not torch.equal(swap[:, 8:12, 10:14], images[0, :, 8:12, 10:14])
    with pytest.raises(ValueError, match="paste_masks"):
        guidance_losses(gain, images, labels, boxes, None, ["context-swap"], paste_masks=paste[:, :16], **kwargs)
