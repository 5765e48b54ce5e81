"""Soft mask, erasing, losses, boxes and the GAIN module's streams, against hand computations."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import gainet.core.gain as gain_module
from gainet.core import (
    GAIN,
    attention_mining_loss,
    boxes_to_masks,
    class_scores,
    classification_loss,
    empty_target_pairs,
    erase,
    external_supervision_loss,
    soft_mask,
)
from gainet.models import build_classifier


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_soft_mask_at_known_points() -> None:
    attention = torch.tensor([0.0, 0.5, 1.0, 0.6])
    expected = torch.tensor([sigmoid(-5.0), 0.5, sigmoid(5.0), sigmoid(1.0)])
    torch.testing.assert_close(soft_mask(attention, sigma=0.5, omega=10.0), expected)
    torch.testing.assert_close(soft_mask(torch.tensor([0.2]), sigma=0.2, omega=3.0), torch.tensor([0.5]))


def test_erase_keeps_unattended_pixels_and_zeroes_attended_ones() -> None:
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    mask = torch.tensor([[[1.0, 0.0], [0.5, 0.0]], [[0.0, 0.0], [0.0, 1.0]], [[0.25, 0.25], [0.25, 0.25]]])
    image_index = torch.tensor([0, 0, 1])
    erased = erase(images, mask, image_index)
    assert erased.shape == (3, 3, 2, 2)  # one erased image per pair
    for p, b in enumerate(image_index.tolist()):
        torch.testing.assert_close(erased[p], images[b] - mask[p] * images[b])
    assert erased[0, :, 0, 0].abs().sum() == 0 and torch.equal(erased[0, :, 0, 1], images[0, :, 0, 1])


def test_attention_mining_loss_is_mean_over_labels_then_images() -> None:
    scores = torch.tensor([0.2, 0.4, 0.9, 0.1, 0.3, 0.5])
    image_index = torch.tensor([0, 0, 1, 3, 3, 3])  # image 2 has no label and does not count
    expected = ((0.2 + 0.4) / 2 + 0.9 + (0.1 + 0.3 + 0.5) / 3) / 3
    torch.testing.assert_close(attention_mining_loss(scores, image_index, 4), torch.tensor(expected))


def test_external_supervision_loss_by_hand() -> None:
    attention = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]], [[0.0, 1.0]]])  # (P=3, 1, 2)
    masks = torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]], [[1.0, 0.0]]])
    image_index = torch.tensor([0, 0, 1])
    per_pair = [(0 + 1) / 2, (0.25 + 0.25) / 2, (1 + 1) / 2]
    both = torch.tensor([True, True])
    expected = ((per_pair[0] + per_pair[1]) / 2 + per_pair[2]) / 2
    torch.testing.assert_close(external_supervision_loss(attention, masks, image_index, both), torch.tensor(expected))
    only_first = torch.tensor([True, False])
    expected_first = (per_pair[0] + per_pair[1]) / 2
    torch.testing.assert_close(
        external_supervision_loss(attention, masks, image_index, only_first), torch.tensor(expected_first)
    )
    none = external_supervision_loss(attention, masks, image_index, torch.tensor([False, False]))
    assert none.item() == 0.0


def test_external_supervision_loss_ignores_255_pixels_and_skips_empty_targets() -> None:
    attention = torch.tensor(
        [[[1.0, 0.2, 0.6]], [[0.5, 0.5, 0.5]], [[0.0, 1.0, 0.3]], [[0.4, 0.1, 0.9]], [[0.7, 0.7, 0.7]]],
        dtype=torch.float64,
    )  # (P=5, 1, 3)
    masks = torch.tensor(
        [[[1.0, 255, 0]], [[0.0, 0, 0]], [[255, 1.0, 1]], [[255, 255, 0.0]], [[255, 255, 255]]], dtype=torch.float64
    )
    image_index = torch.tensor([0, 0, 1, 1, 2])
    # pair 0: valid pixels 0 and 2 -> (0^2 + 0.6^2) / 2; pair 2: valid pixels 1 and 2 -> (0^2 + 0.7^2) / 2;
    # pairs 1, 3 and 4 have no positive valid pixel: skipped, and image 2 is left with no pair.
    expected = ((0.0 + 0.36) / 2 + (0.0 + 0.49) / 2) / 2
    supervised = torch.tensor([True, True, True])
    loss = external_supervision_loss(attention, masks, image_index, supervised)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), atol=1e-15, rtol=0)
    assert empty_target_pairs(masks).tolist() == [False, True, False, True, True]
    # with ignore_index=None the 255 pixels are ordinary (positive) pixels: nothing is empty but pair 1
    assert empty_target_pairs(masks, ignore_index=None).tolist() == [False, True, False, False, False]
    # only image 1 supervised
    only_second = external_supervision_loss(attention, masks, image_index, torch.tensor([False, True, False]))
    torch.testing.assert_close(only_second, torch.tensor(0.49 / 2, dtype=torch.float64), atol=1e-15, rtol=0)
    # nothing left: zero, still differentiable
    attention.requires_grad_(True)
    none = external_supervision_loss(attention, masks, image_index, torch.tensor([False, False, True]))
    assert none.item() == 0.0
    none.backward()
    assert torch.equal(attention.grad, torch.zeros_like(attention))


def test_gain_counts_the_supervised_pairs_left_out_of_l_e() -> None:
    gain, _ = _gain(alpha=0.0)
    masks = (torch.rand(3, 4, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    masks[0, :, :4] = 255  # ignore band on image 0
    masks[0, 2] = 0  # image 0, class 2: cropped away -> skipped
    masks[2, 3, :, :] = 255  # image 2, class 3: ignore only -> skipped
    masks[1, 1] = 0  # image 1, class 1: empty but image 1 is not supervised -> not counted
    supervised = torch.tensor([True, False, True])
    output = gain(IMAGES, LABELS, masks.float(), supervised)
    assert output.skipped_e.item() == 2
    # L_e by hand in float64 from the maps: pairs (0,0), (0,3), (2,0) remain
    attention = output.attention.detach().double()
    pairs = output.pairs.tolist()

    def pair_error(b: int, c: int) -> float:
        a = attention[pairs.index([b, c])]
        valid = masks[b, c] != 255
        return float(((a - masks[b, c]) ** 2)[valid].sum() / valid.sum())

    expected = ((pair_error(0, 0) + pair_error(0, 3)) / 2 + pair_error(2, 0)) / 2
    torch.testing.assert_close(output.loss_e.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)
    assert gain(IMAGES, LABELS).skipped_e.item() == 0  # no masks: nothing skipped


def test_class_scores_sigmoid_for_multi_label_softmax_for_single_label() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]])
    classes = torch.tensor([2, 1])
    torch.testing.assert_close(class_scores(logits, classes, True), torch.tensor([sigmoid(0.5), sigmoid(1.0)]))
    expected = torch.tensor([math.exp(0.5) / sum(map(math.exp, (2.0, -1.0, 0.5))),
                             math.exp(1.0) / sum(map(math.exp, (0.0, 1.0, 3.0)))])
    torch.testing.assert_close(class_scores(logits, classes, False), expected)
    # a common logit offset changes sigmoid scores but not the softmax ones
    torch.testing.assert_close(class_scores(logits - 7, classes, False), expected)


def test_classification_losses() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    expected = -(
        math.log(sigmoid(2.0)) + math.log(1 - sigmoid(-1.0)) + math.log(sigmoid(0.0)) + math.log(sigmoid(1.0))
    ) / 4
    torch.testing.assert_close(classification_loss(logits, labels, True), torch.tensor(expected))
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(
        classification_loss(logits, one_hot, False), torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    )


def test_boxes_to_masks() -> None:
    boxes = torch.tensor([[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 1.0, 1.0], [4.5, 2.5, 6.0, 4.0]])
    masks = boxes_to_masks(boxes, torch.tensor([1, 0, 1]), num_classes=3, size=(4, 6))
    expected = torch.zeros(3, 4, 6)
    expected[1, 1:3, 2:5] = 1  # integer box: columns 2-4, rows 1-2
    expected[0, 0, 0] = 1
    expected[1, 2:4, 4:6] = 1  # centres on the box edge (4.5 or 2.5) count as inside
    assert torch.equal(masks, expected)
    assert torch.equal(boxes_to_masks(torch.zeros(0, 4), torch.zeros(0), 2, (3, 3)), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="degenerate box"):
        boxes_to_masks(torch.tensor([[3.0, 0, 3, 2]]), torch.tensor([0]), 2, (4, 4))
    with pytest.raises(ValueError, match="out of range"):
        boxes_to_masks(torch.tensor([[0.0, 0, 3, 2]]), torch.tensor([2]), 2, (4, 4))


def _gain(**options) -> tuple[GAIN, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_classifier("small-cnn", 4, width=8)
    return GAIN(model, probe_size=32, **options), model


IMAGES = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
LABELS = torch.tensor([[1.0, 0, 1, 1], [0, 1, 0, 0], [1, 0, 0, 1]])  # 3 + 1 + 2 = 6 pairs


def test_multi_label_image_with_n_labels_gives_n_erased_images() -> None:
    gain, _ = _gain()
    seen_batch_sizes: list[int] = []
    gain.backbone.model.features.register_forward_hook(lambda _m, i, _o: seen_batch_sizes.append(i[0].shape[0]))
    output = gain(IMAGES, LABELS)
    assert seen_batch_sizes == [3, 6]  # clean pass, then one batched erased pass with 6 images
    assert output.pairs.tolist() == [[0, 0], [0, 2], [0, 3], [1, 1], [2, 0], [2, 3]]
    assert output.attention.shape == (6, 32, 32) and output.erased_scores.shape == (6,)


def reference_gain_losses(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
    erased_batchnorm: str = "batch", weights_grad: bool = False, sigma: float = 0.5, omega: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_cl, L_am and the erased scores of METHOD.md written out for a small-cnn, one (image,
    class) pair at a time: its own autograd call for w^c, Eq. 2, resize, min-max, Eq. 4, Eq. 3,
    one forward over the erased batch (train-mode BatchNorm: that batch's statistics, or eval
    mode: the running ones), sigmoid scores, Eq. 5. Run it in float64 on a copy of the model
    taken before GAIN's forward (so that the running statistics match)."""
    store: dict[str, torch.Tensor] = {}
    handle = model.features.register_forward_hook(lambda _m, _i, output: store.__setitem__("f", output))
    scores = model(images)
    handle.remove()
    features = store["f"]
    y = labels.to(scores.dtype)
    log_sigmoid = lambda x: -torch.log1p(torch.exp(-x))  # noqa: E731
    loss_cl = -(y * log_sigmoid(scores) + (1 - y) * log_sigmoid(-scores)).mean()
    erased, classes, owners = [], [], []
    for b in range(images.shape[0]):
        for c in torch.nonzero(labels[b]).flatten().tolist():
            (gradient,) = torch.autograd.grad(scores[b, c], features, retain_graph=True, create_graph=weights_grad)
            weights = gradient[b].mean(dim=(1, 2))
            cam = torch.relu((weights[:, None, None] * features[b]).sum(dim=0))
            cam = torch.nn.functional.interpolate(cam[None, None], size=images.shape[-2:], mode="bilinear",
                                                  align_corners=False)[0, 0]
            cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-12)
            mask = 1 / (1 + torch.exp(-omega * (cam - sigma)))
            erased.append(images[b] - mask * images[b])
            classes.append(c)
            owners.append(b)
    was_training = model.training
    model.train(was_training and erased_batchnorm == "batch")
    erased_logits = model(torch.stack(erased))
    model.train(was_training)
    erased_scores = 1 / (1 + torch.exp(-erased_logits[torch.arange(len(classes)), classes]))
    per_image = []
    for b in sorted(set(owners)):
        mine = [p for p, owner in enumerate(owners) if owner == b]
        per_image.append(sum(erased_scores[p] for p in mine) / len(mine))
    return loss_cl, sum(per_image) / len(per_image), erased_scores


def _float64_pair(**options) -> tuple[GAIN, torch.nn.Module, torch.nn.Module]:
    """GAIN around a small-cnn, and an independent copy of the model, both in float64."""
    gain, model = _gain(**options)
    model.double()
    reference = copy.deepcopy(model)
    reference.features._forward_hooks.clear()  # GAIN's hook stays on GAIN's model
    return gain, model, reference


@pytest.mark.parametrize("erased_batchnorm", ["batch", "running"])
def test_losses_equal_an_independent_float64_computation(erased_batchnorm: str) -> None:
    gain, _, reference = _float64_pair(erased_batchnorm=erased_batchnorm)
    output = gain(IMAGES.double(), LABELS)
    loss_cl, loss_am, erased_scores = reference_gain_losses(
        reference, IMAGES.double(), LABELS, erased_batchnorm=erased_batchnorm)
    torch.testing.assert_close(output.erased_scores, erased_scores, atol=1e-10, rtol=0)
    torch.testing.assert_close(output.loss_cl, loss_cl, atol=1e-10, rtol=0)
    torch.testing.assert_close(output.loss_am, loss_am, atol=1e-10, rtol=0)
    torch.testing.assert_close(output.loss, loss_cl + loss_am, atol=1e-10, rtol=0)


def _grads(gain: GAIN, model: torch.nn.Module, loss_name: str = "loss_am") -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss = getattr(gain(IMAGES, LABELS), loss_name)
    if loss.requires_grad:  # with every route cut the loss is a constant
        loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def _cut_mask_path(monkeypatch: pytest.MonkeyPatch) -> None:
    original = gain_module.soft_mask
    monkeypatch.setattr(gain_module, "soft_mask", lambda a, s, o: original(a, s, o).detach())


@pytest.mark.parametrize("am_gradient", ["all", "attention"])
def test_am_gradient_reaches_backbone_through_attention_map(am_gradient: str, monkeypatch) -> None:
    gain, model = _gain(am_gradient=am_gradient)
    through_map = _grads(gain, model)
    assert through_map["features.0.weight"].abs().sum() > 0
    _cut_mask_path(monkeypatch)
    cut = _grads(gain, model)
    assert not torch.allclose(through_map["features.0.weight"], cut["features.0.weight"])
    if am_gradient == "attention":
        # no other route: the erased forward's parameters are constants
        assert all(g.abs().sum() == 0 for g in cut.values())
    else:
        assert cut["fc.weight"].abs().sum() > 0  # the paper's route through the erased forward


@pytest.mark.parametrize("erased_batchnorm", ["batch", "running"])
def test_erased_forward_moves_no_batchnorm_statistic(erased_batchnorm: str) -> None:
    gain, model = _gain(erased_batchnorm=erased_batchnorm)
    reference = build_classifier("small-cnn", 4, width=8)
    reference.load_state_dict(model.state_dict())
    gain.train()
    reference.train()
    output = gain(IMAGES, LABELS)
    output.loss.backward()  # the graph stays valid after the erased pass
    reference(IMAGES)  # only the clean images
    for (name, buffer), (_, expected) in zip(model.named_buffers(), reference.named_buffers()):
        assert torch.equal(buffer, expected), name
    assert all(m.training for m in model.modules())


def test_erased_batchnorm_modes_normalise_with_the_stated_statistics() -> None:
    # Erased scores by hand from GAIN's own erased images: batch statistics of the erased batch
    # (biased variance), or the running statistics after the clean pass moved them once.
    scores = {}
    for mode in ("batch", "running"):
        gain, model, reference = _float64_pair(erased_batchnorm=mode)
        output = gain(IMAGES.double(), LABELS)
        reference(IMAGES.double())  # the clean pass moves the reference's running statistics once
        reference.train(mode == "batch")
        with torch.no_grad():
            logits = reference(output.erased.detach())
        rows = torch.arange(output.pairs.shape[0])
        expected = 1 / (1 + torch.exp(-logits[rows, output.pairs[:, 1]]))
        torch.testing.assert_close(output.erased_scores.detach(), expected, atol=1e-10, rtol=0)
        scores[mode] = expected
    assert (scores["batch"] - scores["running"]).abs().max() > 1e-3  # the probe tells the modes apart


@pytest.mark.parametrize("weights_grad", [False, True])
def test_weights_grad_gradient_equals_an_independent_float64_computation(weights_grad: bool) -> None:
    gain, model, reference = _float64_pair(weights_grad=weights_grad, fast_path=False)
    gain(IMAGES.double(), LABELS).loss_am.backward()
    _, loss_am, _ = reference_gain_losses(reference, IMAGES.double(), LABELS, weights_grad=weights_grad)
    loss_am.backward()
    for (name, parameter), expected in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(parameter.grad, expected.grad, atol=1e-10, rtol=1e-8, msg=name)
    if weights_grad:  # the second-order term is there: without it the head's gradient differs
        gain0, model0, _ = _float64_pair(weights_grad=False, fast_path=False)
        gain0(IMAGES.double(), LABELS).loss_am.backward()
        assert (model.fc.weight.grad - model0.fc.weight.grad).abs().max() > 1e-6


def test_external_supervision_only_on_supervised_images() -> None:
    gain, _ = _gain(alpha=0.0)
    masks = torch.rand(3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    supervised = torch.tensor([True, False, True])
    output = gain(IMAGES, LABELS, masks, supervised)
    changed = masks.clone()
    changed[1] = 1 - changed[1]
    again = gain(IMAGES, LABELS, changed, supervised)
    torch.testing.assert_close(output.loss_e, again.loss_e)
    pairs, attention = output.pairs, output.attention
    targets = masks[pairs[:, 0], pairs[:, 1]]
    per_pair = ((attention - targets) ** 2).mean(dim=(1, 2))
    expected = (per_pair[:3].mean() + per_pair[4:].mean()) / 2  # images 0 and 2 only
    torch.testing.assert_close(output.loss_e, expected)
    torch.testing.assert_close(output.loss, output.loss_cl + 10.0 * expected)
    assert output.erased_scores is None and output.loss_am.item() == 0.0


def test_warm_up_and_cam_baseline_skip_attention() -> None:
    gain, _ = _gain()
    warm_up = gain(IMAGES, LABELS, mine=False)
    assert warm_up.attention is None and torch.equal(warm_up.loss, warm_up.loss_cl)
    assert gain(IMAGES).shape == (3, 4)


def test_single_label_uses_cross_entropy_and_softmax_scores() -> None:
    gain, _ = _gain(multi_label=False)
    targets = torch.tensor([0, 3, 1])
    output = gain(IMAGES, targets)
    assert output.pairs.tolist() == [[0, 0], [1, 3], [2, 1]]
    torch.testing.assert_close(output.loss_cl, torch.nn.functional.cross_entropy(output.scores, targets))
    assert ((output.erased_scores > 0) & (output.erased_scores < 1)).all()


def test_bad_shapes_raise_clear_errors() -> None:
    gain, _ = _gain()
    with pytest.raises(ValueError, match="labels shape"):
        gain(IMAGES, torch.ones(3, 5))
    with pytest.raises(ValueError, match="masks must be"):
        gain(IMAGES, LABELS, torch.ones(3, 4, 16, 16))
    with pytest.raises(ValueError, match="am_gradient"):
        GAIN(build_classifier("small-cnn", 2, width=8), am_gradient="some")
