"""Adversarial attention mining: gradient routing between the attention network and the adversary."""

from __future__ import annotations

import pytest
import torch

import gainet.core.gain as gain_module
from gainet.core import AdversarialGAIN
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


def test_am_pass_leaves_adversary_parameters_and_batchnorm_buffers_unchanged() -> None:
    model = _adversarial().train()
    output = model(IMAGES, LABELS)
    assert all(g == 0.0 for g in _grad_norms(model.adversary.parameters(), output.loss_am))
    assert sum(_grad_norms(model.attention_parameters(), output.loss_am)) > 0
    assert output.pairs[:, 0].tolist() == [0, 0, 1, 2, 2]
    # Eq. 5 by hand: image 0 has 2 labels (pairs 0, 1), image 1 one (pair 2), image 2 two (pairs 3, 4)
    s = output.erased_scores.detach().double().tolist()
    expected = ((s[0] + s[1]) / 2 + s[2] + (s[3] + s[4]) / 2) / 3
    torch.testing.assert_close(output.loss_am.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-7, rtol=0)

    buffers = {n: b.clone() for n, b in model.adversary.named_buffers()}
    parameters = {n: p.clone() for n, p in model.adversary.named_parameters()}
    scores = model._erased_scores(output.erased, output.pairs[:, 1], IMAGES)  # the L_am pass alone, train mode
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
    # the L_am pass and the adversary's own pass both over the same clean + erased batch
    assert seen[1:] == [3 + 5, 3 + 5] and output.erased.shape[0] == 5


class BatchNormProbe(torch.nn.Module):
    """A BN-sensitive adversary: ``BatchNorm2d -> spatial mean -> linear``. Its scores depend on
    which statistics normalise the batch, and are easy to compute by hand."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(3)
        self.fc = torch.nn.Linear(3, num_classes)
        generator = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for tensor in (self.norm.weight, self.norm.bias, self.fc.weight, self.fc.bias):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            self.norm.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
            self.norm.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(images).mean(dim=(2, 3)))


def _probe_logits(probe: BatchNormProbe, images: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """The probe's logits in float64 by hand, normalising with the given per-channel statistics."""
    gamma, beta = probe.norm.weight.detach().double(), probe.norm.bias.detach().double()
    x = images.detach().double()
    z = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + probe.norm.eps)
    pooled = (z * gamma[None, :, None, None] + beta[None, :, None, None]).mean(dim=(2, 3))
    return pooled @ probe.fc.weight.detach().double().T + probe.fc.bias.detach().double()


@pytest.mark.parametrize("training", [True, False])
def test_adversary_is_scored_under_the_normalisation_it_is_trained_under(training: bool) -> None:
    torch.manual_seed(0)
    probe = BatchNormProbe(4)
    model = AdversarialGAIN(build_classifier("small-cnn", 4, width=8), probe_size=32, adversary=probe).train(training)
    running = (probe.norm.running_mean.clone().double(), probe.norm.running_var.clone().double())
    trained_on: list[torch.Tensor] = []
    probe.register_forward_hook(lambda _m, _i, out: trained_on.append(out.detach()))
    output = model(IMAGES, LABELS)
    pairs = output.pairs
    batch = torch.cat([IMAGES, output.erased.detach()]).double()  # what the adversary trains on
    if training:  # batch statistics of the clean + erased batch (biased variance, as BatchNorm)
        statistics = (batch.mean(dim=(0, 2, 3)), batch.var(dim=(0, 2, 3), unbiased=False))
    else:
        statistics = running
    logits = _probe_logits(probe, batch, *statistics)
    expected = torch.sigmoid(logits[IMAGES.shape[0] + torch.arange(pairs.shape[0]), pairs[:, 1]])
    torch.testing.assert_close(output.erased_scores.double(), expected, atol=1e-6, rtol=0)
    # the training pass of the adversary saw the very same normalisation
    _am_pass, training_pass = trained_on  # the L_am pass, then the adversary's own (training) pass
    torch.testing.assert_close(training_pass.double(), logits, atol=1e-6, rtol=0)
    # L_am by hand: mean over each image's labels, then over the images
    per_image = [expected[pairs[:, 0] == b].mean() for b in range(IMAGES.shape[0])]
    torch.testing.assert_close(output.loss_am.double(), torch.stack(per_image).mean(), atol=1e-6, rtol=0)
    # the adversary's loss by hand: multi-label soft margin on every row, clean rows against their
    # labels, erased rows against their image's full label set
    targets = torch.cat([LABELS, LABELS[pairs[:, 0]]]).double()
    log_sigmoid = lambda x: -torch.log1p(torch.exp(-x))  # noqa: E731
    expected_adversary = -(targets * log_sigmoid(logits) + (1 - targets) * log_sigmoid(-logits)).mean()
    torch.testing.assert_close(output.loss_adversary.double(), expected_adversary, atol=1e-6, rtol=0)


def test_running_erased_batchnorm_is_refused_for_the_adversarial_variant() -> None:
    with pytest.raises(ValueError, match="erased_batchnorm must be 'batch'"):
        _adversarial(erased_batchnorm="running")
