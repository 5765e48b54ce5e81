"""Counterfactual images (issues 13, 18), against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gainet.core.counterfactual import context_only, context_swap, fill_from_context, masks_within_boxes


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


# ---------------------------------------------------------------------- issue 18: what a row claims
def test_ignore_pixels_are_never_object_and_join_the_hole_next_to_an_object() -> None:
    images = torch.zeros(2, 3, 20, 20)
    images[:, 2] = torch.tensor([1.0, 2.0])[:, None, None]  # flat contexts
    images[:, :, 5:11, 5:11] = 9.0  # objects
    images[:, :, 4, 5:11] = 7.0  # VOC's 255 band above each object
    images[:, :, 18:20, :] = 5.0  # a padding strip, also 255, far from the object
    labels = torch.eye(2)
    masks = _square_masks(2, 2, [0, 1], size=20)
    masks[:, :, 4, 5:11] = 255.0
    masks[:, :, 18:20, :] = 255.0
    result = context_only(images, masks, labels, noise=False)
    assert result.source.tolist() == [0, 1]
    # The object and the 255 band next to it are filled from the context; the far strip stays.
    for row in range(2):
        assert float((result.images[row, :, 3:12, 4:12] - images[row, :, 0:1, 0:1]).abs().max()) < 1e-5
        torch.testing.assert_close(result.images[row, :, 18:20], images[row, :, 18:20])
    # A mask of nothing but 255 has no object: skipped, counted, never pasted.
    only_ignore = torch.full((1, 2, 20, 20), 255.0)
    none = context_only(images[:1], only_ignore, labels[:1])
    assert none.images.shape[0] == 0 and none.counts["empty_mask"] == 1
    swaps = context_swap(images, masks, labels, noise=False, generator=torch.Generator().manual_seed(0))
    for row in range(swaps.images.shape[0]):  # the band and the strip are not pasted
        partner = int(swaps.partner[row])
        torch.testing.assert_close(swaps.images[row, :, 18:20], images[partner, :, 18:20])
        assert float((swaps.images[row, :, 4, 5:11] - images[partner, :, 0, 0, None]).abs().max()) < 1e-5


def test_a_swap_carries_exactly_the_classes_whose_pixels_it_pastes() -> None:
    images = torch.randn(3, 3, 16, 16)
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # image 0: classes 0 and 1
    masks = torch.zeros(3, 3, 16, 16)
    masks[0, 0, 2:6, 2:6] = 1.0
    masks[0, 1, 10:14, 10:14] = 1.0
    masks[1, 2, 5:9, 5:9] = 1.0
    masks[2, 2, 5:9, 5:9] = 1.0
    paste = torch.zeros(3, 16, 16)
    paste[0, 2:6, 2:6] = 1.0  # the paste mask (e.g. GrabCut) keeps class 0's object only
    paste[1:, 5:9, 5:9] = 1.0
    out = context_swap(images, masks, labels, paste_masks=paste, noise=False, generator=torch.Generator().manual_seed(1))
    row = out.source.tolist().index(0)
    assert out.labels[row].tolist() == [1.0, 0.0, 0.0]
    # A class the crop removed (empty mask) is not claimed either, though the image label keeps it.
    cropped = masks.clone()
    cropped[0, 1] = 0.0
    out = context_swap(images, cropped, labels, noise=False, generator=torch.Generator().manual_seed(1))
    assert out.labels[out.source.tolist().index(0)].tolist() == [1.0, 0.0, 0.0]
    full = context_swap(images, masks, labels, noise=False, generator=torch.Generator().manual_seed(1))
    assert full.labels[full.source.tolist().index(0)].tolist() == [1.0, 1.0, 0.0]


def test_masked_counterpart_shuffles_the_outside_and_keeps_the_object() -> None:
    from gainet.core.counterfactual import masked_counterpart

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 12, 12, generator=generator, dtype=torch.float64)
    labels = torch.eye(3)
    masks = _square_masks(3, 3, [0, 1, 2], size=12)
    masks[2] = 1.0  # the object covers everything: nothing to shuffle
    out = masked_counterpart(images, masks, labels, margin=1, generator=generator)
    assert out.source.tolist() == [0, 1] and out.counts == {"empty_mask": 0, "no_context": 1}
    inside = torch.zeros(12, 12, dtype=torch.bool)
    inside[4:12, 4:12] = True  # rows/cols 5..10 dilated by 1
    for row in range(2):
        original, shuffled = images[row], out.images[row]
        torch.testing.assert_close(shuffled[:, inside], original[:, inside])
        # Outside: the same pixels (colour triples) in another order.
        a = original[:, ~inside].T.numpy()
        b = shuffled[:, ~inside].T.numpy()
        assert sorted(map(tuple, a)) == sorted(map(tuple, b))
        assert not np.allclose(a, b)
    torch.testing.assert_close(out.labels, labels[:2].double())


def test_every_bad_input_is_a_counted_skip() -> None:
    from gainet.core.batch_transforms import ContextOnly, ContextSwap, CounterfactualTransforms, MaskedCounterpart

    transforms = CounterfactualTransforms([ContextOnly(multi_label=False), ContextSwap(), MaskedCounterpart()])
    images = torch.randn(4, 3, 16, 16)
    labels = torch.tensor([0, 1, 0, 1])  # a 2-class single-label set, labels as indices
    masks = _square_masks(4, 2, [0, 1, 0, 1])
    # No supervised image in the batch (or on this rank).
    rows = transforms(images, labels, masks, torch.zeros(4, dtype=torch.bool))
    assert len(rows) == 0 and rows.counts == {"no_supervised": 1} and rows.images.shape == (0, 3, 16, 16)
    # One supervised image: no partner, but its context-only image and counterpart are built.
    rows = transforms(images, labels, masks, torch.tensor([True, False, False, False]))
    assert rows.counts["no_partner"] == 1 and rows.counts["rows/context-swap"] == 0
    assert rows.counts["rows/context-only"] == 1 and rows.counts["rows/counterpart"] == 1
    # Single-label context-only target: the uniform distribution over the 2 classes.
    _, context = rows.of_kind("context-only")
    torch.testing.assert_close(context.targets, torch.full((1, 2), 0.5))
    # An empty mask after augmentation, a box outside the image (empty box mask), a mask that is all 255.
    bad = masks.clone()
    bad[1] = 0.0
    bad[2] = 255.0
    rows = transforms(images, labels, bad, torch.ones(4, dtype=torch.bool))
    assert rows.counts["empty_mask"] == 2 + 2  # by the contexts, and by the counterpart
    assert set(rows.source.tolist()) <= {0, 3}
    assert torch.isfinite(rows.images).all()
    # A class with no supervised image: the other class's objects swap among themselves, counted.
    same = transforms(images, labels, masks, torch.tensor([True, False, True, False]))
    assert same.counts["same_class_partner"] == 2 and same.counts["rows/context-swap"] == 2
    _, swap_rows = same.of_kind("context-swap")
    torch.testing.assert_close(swap_rows.targets, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
