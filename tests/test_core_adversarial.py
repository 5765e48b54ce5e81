"""Adversarial attention mining: gradient routing between the attention network and the adversary."""

from __future__ import annotations

import pytest
import torch

import gainet.core.gain as gain_module
from gainet.core import AdversarialGAIN, attention_mining_loss
from gainet.models import build_classifier

IMAGES = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
LABELS = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 1]])


def _adversarial(**options) -> AdversarialGAIN:
    torch.manual_seed(0)
    return AdversarialGAIN(build_classifier("small-cnn", 4, width=8), probe_size=32, **options)


def _grad_norms(parameters, loss) -> list[float]:
    parameters = list(parameters)
    grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    return [0.0 if g is None else float(g.abs().sum()) for g in grads]


def test_default_adversary_is_an_independent_copy() -> None:
    model = _adversarial()
    assert type(model.adversary) is type(model.model) and model.adversary is not model.model
    assert not model.adversary.features._forward_hooks  # GAIN's hook stays on the attention network
    ids = {id(p) for p in model.adversary.parameters()}
    assert not ids & {id(p) for p in model.attention_parameters()}
    assert len(model.attention_parameters()) + len(ids) == len(list(model.parameters()))


@pytest.mark.parametrize("erased_batchnorm", ["batch", "running"])
def test_am_pass_leaves_adversary_parameters_and_batchnorm_buffers_unchanged(erased_batchnorm: str) -> None:
    model = _adversarial(erased_batchnorm=erased_batchnorm).train()
    output = model(IMAGES, LABELS)
    assert all(g == 0.0 for g in _grad_norms(model.adversary.parameters(), output.loss_am))
    assert sum(_grad_norms(model.attention_parameters(), output.loss_am)) > 0
    torch.testing.assert_close(output.loss_am, attention_mining_loss(output.erased_scores, output.pairs[:, 0], 3))

    buffers = {n: b.clone() for n, b in model.adversary.named_buffers()}
    parameters = {n: p.clone() for n, p in model.adversary.named_parameters()}
    scores = model._erased_scores(output.erased, output.pairs[:, 1])  # the L_am pass alone, train mode
    assert scores.requires_grad and all(g == 0.0 for g in _grad_norms(model.adversary.parameters(), scores.sum()))
    for name, buffer in model.adversary.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    for name, parameter in model.adversary.named_parameters():
        assert torch.equal(parameter, parameters[name]), name
    assert model.adversary.training and all(m.training for m in model.adversary.modules())


def test_attention_network_gets_no_am_gradient_when_the_mask_path_is_cut(monkeypatch) -> None:
    original = gain_module.soft_mask
    monkeypatch.setattr(gain_module, "soft_mask", lambda a, s, o: original(a, s, o).detach())
    model = _adversarial()
    output = model(IMAGES, LABELS)
    assert not output.loss_am.requires_grad  # no route left: adversary constant, mask cut


def test_adversary_step_uses_detached_masks() -> None:
    model = _adversarial(area_weight=0.5)
    output = model(IMAGES, LABELS)
    assert all(g == 0.0 for g in _grad_norms(model.attention_parameters(), output.loss_adversary))
    assert sum(_grad_norms(model.adversary.parameters(), output.loss_adversary)) > 0
    torch.testing.assert_close(output.loss_area, output.attention.mean())
    torch.testing.assert_close(output.loss, output.loss_cl + output.loss_am + 0.5 * output.loss_area)


def test_warm_up_trains_the_adversary_on_clean_images_only() -> None:
    model = _adversarial()
    seen: list[int] = []
    model.adversary.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[0]))
    output = model(IMAGES, LABELS, mine=False)
    assert seen == [3] and output.erased is None and output.loss_adversary.requires_grad
    output = model(IMAGES, LABELS)
    # the L_am pass over the 5 erased images, then the adversary's own pass over clean + erased
    assert seen[1:] == [5, 3 + 5] and output.erased.shape[0] == 5
