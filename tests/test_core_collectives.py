"""Issue 30, in one process: GAIN runs the passes its arguments ask for, never fewer because of the
data, and never vmaps the Grad-CAM backward over a module that makes collectives.

The multi-process side (2 gloo ranks, every method and guidance mode) is tests/test_ddp_matrix.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gainet.core import GAIN, gradcam_weights, label_pairs
from gainet.core.collectives import synchronising_modules
from gainet.models import build_classifier
from gainet.training.distributed import DistributedBatchNorm, DistributedContext, convert_batchnorm

LAYER = "features.11"  # small-cnn: a ReLU followed by conv + BatchNorm, so Grad-CAM needs autograd
LABELS = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]])  # slots 0-2: 3 backwards


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_classifier("small-cnn", 4, width=4)


def _images(dtype=torch.float32) -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _count_backwards(features: torch.Tensor) -> list[int]:
    calls: list[int] = []
    features.register_hook(lambda grad: calls.append(1))
    return calls


@pytest.mark.parametrize("batched", [True, False])
def test_gradcam_weights_of_both_paths_equal_independent_float64_gradients(batched: bool) -> None:
    gain = GAIN(_model().eval(), LAYER, probe_size=32).double()
    assert gain.backbone.linear_head is None
    scores, features = gain.backbone(_images(torch.float64))
    pairs = label_pairs(LABELS)
    calls = _count_backwards(features)
    weights = gradcam_weights(scores, features, pairs, batched=batched, slots=5)  # 2 slots more than needed
    assert len(calls) == (1 if batched else 5)  # the loop: one backward per slot, empty ones included
    for row, (b, c) in enumerate(pairs.tolist()):
        (gradient,) = torch.autograd.grad(scores[b, c], features, retain_graph=True)
        torch.testing.assert_close(weights[row], gradient[b].mean(dim=(1, 2)), rtol=1e-10, atol=1e-12)


def test_extra_slots_run_their_backward_without_pairs_and_too_few_are_refused() -> None:
    gain = GAIN(_model().eval(), LAYER, probe_size=32)
    scores, features = gain.backbone(_images())
    calls = _count_backwards(features)
    none = gradcam_weights(scores, features, label_pairs(torch.zeros(3, 4)), batched=False, slots=2)
    assert none.shape == (0, features.shape[1]) and len(calls) == 2
    with pytest.raises(ValueError, match="slots=2 is fewer than the 3 label slots"):
        gradcam_weights(scores, features, label_pairs(LABELS), slots=2)


def test_gain_never_vmaps_over_a_synchronising_module(monkeypatch) -> None:
    model = _model()
    gain = GAIN(model, LAYER, probe_size=32).train()
    images = _images()
    batched = gain.pair_attention(*gain.backbone(images), label_pairs(LABELS), (32, 32))
    model.features[13].synchronises_ranks = True  # a BatchNorm after the layer, as DistributedBatchNorm marks itself
    assert synchronising_modules(model) == [model.features[13]]
    seen: list[bool] = []
    grad = torch.autograd.grad

    def recording_grad(*args, **kwargs):
        seen.append(bool(kwargs.get("is_grads_batched", False)))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", recording_grad)
    looped = gain.pair_attention(*gain.backbone(images), label_pairs(LABELS), (32, 32))
    assert seen == [False, False, False]  # one plain backward per label slot
    torch.testing.assert_close(looped, batched, rtol=1e-5, atol=1e-6)
    gain.eval()  # eval-mode BatchNorm makes no collective: back to the one vmapped call
    seen.clear()
    gain.pair_attention(*gain.backbone(images), label_pairs(LABELS), (32, 32))
    assert seen == [True]


def _backward_calls(gain: GAIN, supervised: torch.Tensor) -> tuple[int, object]:
    masks = torch.rand(3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    calls: list[int] = []
    handle = gain.backbone.model.features[12].register_full_backward_hook(lambda *a: calls.append(1))
    output = gain(_images(), LABELS, masks, supervised)
    output.loss.backward()
    handle.remove()
    return len(calls), output


def test_gain_runs_the_gradcam_backward_when_no_image_is_supervised() -> None:
    """Masks given and a synchronising BatchNorm in the model: the maps and L_e's backward run
    whatever ``supervised`` holds (L_e = 0 in the graph when nothing is supervised), so a DDP rank
    without a supervised image makes the same collectives as one with."""
    gain = GAIN(_model(), LAYER, probe_size=32, alpha=0.0).train()  # cam: no mining, only L_e
    gain.backbone.model.features[13].synchronises_ranks = True  # as DistributedBatchNorm marks itself
    counts = []
    for supervised in (torch.tensor([False, True, False]), torch.zeros(3, dtype=torch.bool)):
        count, output = _backward_calls(gain, supervised)
        assert output.attention is not None and output.loss_e.requires_grad
        counts.append(count)
    assert counts[0] == counts[1] == 4  # one plain Grad-CAM backward per label slot (3) + the loss's
    assert output.loss_e.item() == 0.0 and torch.equal(output.loss, output.loss_cl + 10.0 * output.loss_e)


def test_one_process_skips_the_gradcam_backward_with_nothing_to_supervise() -> None:
    """Without a synchronising module nothing in these passes is collective, so a step whose
    images carry no supervision skips the maps and their backward (25-30% of a small-cnn step)."""
    gain = GAIN(_model(), LAYER, probe_size=32, alpha=0.0).train()
    count, output = _backward_calls(gain, torch.zeros(3, dtype=torch.bool))
    assert count == 1 and output.attention is None and output.loss_e.item() == 0.0
    count, output = _backward_calls(gain, torch.tensor([False, True, False]))
    assert count == 2 and output.attention is not None  # the vmapped Grad-CAM backward + the loss's


def test_synchronising_modules_are_train_mode_synchronised_batchnorms() -> None:
    assert synchronising_modules(_model().train()) == []
    converted = convert_batchnorm(_model(), DistributedBatchNorm).train()
    assert len(synchronising_modules(converted)) == 6
    assert synchronising_modules(converted.eval()) == []
    assert len(synchronising_modules(convert_batchnorm(_model(), nn.SyncBatchNorm).train())) == 6


def test_second_order_losses_get_the_distributed_batchnorm_on_gpus_too(monkeypatch) -> None:
    """torch's SyncBatchNorm has no derivative of its backward, which rrr and weights_grad need."""
    import torch.distributed as dist

    backends, timeouts = [], []
    monkeypatch.setattr(dist, "new_group", lambda backend=None, timeout=None: (backends.append(backend),
                                                                               timeouts.append(timeout))[0])
    context = DistributedContext(rank=0, local_rank=0, world_size=2)
    first_order = context.sync_batchnorm(_model(), torch.device("cuda"))
    second_order = context.sync_batchnorm(_model(), torch.device("cuda"), second_order=True)
    cpu = context.sync_batchnorm(_model(), torch.device("cpu"), timeout=42.0)
    assert isinstance(first_order.features[1], nn.SyncBatchNorm)
    assert isinstance(second_order.features[1], DistributedBatchNorm)
    assert isinstance(cpu.features[1], DistributedBatchNorm)
    assert backends == ["nccl", "gloo"]
    # the group of its own waits --dist-timeout, not new_group's own default (30 min for gloo)
    assert [t.total_seconds() for t in timeouts] == [600.0, 42.0]


@pytest.mark.parametrize("adversarial", [False, True])
def test_a_batch_without_labels_still_runs_mining_with_finite_zero_terms(adversarial: bool) -> None:
    """No (image, label) pair: the maps and the erased forward still run (on 0 rows), as on a DDP
    rank whose share has no label while the others mine; L_am and L_area are zeros in the graph."""
    from gainet.core import AdversarialGAIN

    model = _model()
    model.features[13].synchronises_ranks = True  # a DDP rank: the passes follow the configuration
    gain = (AdversarialGAIN(model, LAYER, probe_size=32, area_weight=0.3) if adversarial
            else GAIN(model, LAYER, probe_size=32)).train()
    output = gain(_images(), torch.zeros(3, 4), torch.ones(3, 4, 32, 32), torch.ones(3, dtype=torch.bool))
    assert output.attention.shape == (0, 32, 32) and output.erased.shape == (0, 3, 32, 32)
    total = output.loss + (output.loss_adversary if adversarial else 0.0)
    assert torch.isfinite(total) and output.loss_am.item() == 0.0 and output.loss_e.item() == 0.0
    if adversarial:
        assert output.loss_area.item() == 0.0 and output.loss_area.requires_grad
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
