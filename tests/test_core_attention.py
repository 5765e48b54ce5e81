"""Trainable attention against an independent Grad-CAM (hooks + one backward pass per map)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from gainet.core import GAIN, AttentionBackbone, find_attention_layer, gradcam_weights, label_pairs, normalise_maps
from gainet.core.attention import attention_maps
from gainet.models import build_classifier


def reference_gradcam(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor, pairs) -> torch.Tensor:
    """Textbook Grad-CAM, computed separately: forward hook for f, a fresh forward and a separate
    ``backward`` of each (image, class) score, w = spatial mean of the gradient, ReLU of the
    weighted sum, bilinear resize, min-max normalisation."""
    maps = []
    for image_index, class_index in pairs:
        store = {}

        def hook(_m, _i, output):
            output.retain_grad()
            store["f"] = output

        handle = layer.register_forward_hook(hook)
        model.zero_grad()
        with torch.enable_grad():  # input requires grad, so frozen weights still give f a gradient
            scores = model(images[image_index: image_index + 1].clone().requires_grad_(True))
            handle.remove()
            scores[0, class_index].backward()
        features, gradient = store["f"][0].detach(), store["f"].grad[0]
        weights = gradient.mean(dim=(1, 2))
        cam = torch.relu((weights[:, None, None] * features).sum(0))
        cam = F.interpolate(cam[None, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        cam = cam - cam.min()
        maps.append(cam / (cam.max() + 1e-12))
    return torch.stack(maps)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=6).eval()


PAIRS = [(0, 1), (0, 4), (1, 2), (2, 0), (2, 3), (2, 5)]


@pytest.mark.parametrize(
    ("name", "layer", "fast_path"),
    [("resnet18", "layer4", False), ("resnet18", "layer4", True), ("vgg11", "features.19", False)],
)
def test_attention_equals_independent_gradcam(name: str, layer: str, fast_path: bool) -> None:
    # In float64: float32 summation order differs between the batched and the per-map computation
    # and between machines (a 1e-5 tolerance failed at 1.0028e-5 on one), float64 leaves ~1e-12.
    model = _model(name)
    gain = GAIN(model, layer, fast_path=fast_path, probe_size=64)  # probes run in float32
    model.double()
    torch.manual_seed(1)
    images = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    expected = reference_gradcam(model, model.get_submodule(layer), images, PAIRS)
    with torch.enable_grad():
        scores, features = gain.backbone(images)
        maps = gain.pair_attention(scores, features, torch.tensor(PAIRS), (64, 64))
    assert maps.shape == (len(PAIRS), 64, 64) and maps.dtype == expected.dtype == torch.float64
    torch.testing.assert_close(maps, expected, atol=1e-10, rtol=0)


def test_fast_path_equals_general_path_in_train_and_eval_mode() -> None:
    model = build_classifier("resnet18", 5)
    fast = GAIN(model, probe_size=64)
    assert fast.backbone.linear_head is not None
    images = torch.randn(4, 3, 48, 48)
    pairs = torch.tensor([[0, 0], [0, 3], [1, 1], [2, 4], [3, 2], [3, 0]])
    for training in (True, False):
        model.train(training)
        scores, features = fast.backbone(images)
        closed_form = fast.pair_attention(scores, features, pairs, (48, 48))
        autograd = attention_maps(features, gradcam_weights(scores, features, pairs), pairs[:, 0], (48, 48))
        torch.testing.assert_close(closed_form, autograd, atol=1e-5, rtol=1e-4)


def test_fast_path_is_rejected_where_the_head_is_not_gap_linear() -> None:
    assert GAIN(_model("vgg11"), probe_size=64).backbone.linear_head is None  # 3-layer MLP head
    assert GAIN(_model("efficientnet_b0").train(), probe_size=64).backbone.linear_head is None  # dropout
    with pytest.raises(ValueError, match="not global-average-pool"):
        GAIN(_model("vgg11"), fast_path=True, probe_size=64)


def test_gradcam_weights_use_one_batched_call_per_image_label_slot() -> None:
    model = _model("vgg11")
    backbone = AttentionBackbone(model, "features.19", fast_path=False)
    images = torch.randn(3, 3, 32, 32)
    scores, features = backbone(images)
    pairs = torch.tensor(PAIRS)
    weights = gradcam_weights(scores, features, pairs)
    for row, (b, c) in enumerate(PAIRS):
        (gradient,) = torch.autograd.grad(scores[b, c], features, retain_graph=True)
        torch.testing.assert_close(weights[row], gradient[b].mean(dim=(1, 2)), atol=1e-7, rtol=1e-5)


def test_label_pairs_and_normalisation() -> None:
    labels = torch.tensor([[0.0, 1, 1], [0, 0, 0], [1, 0, 0]])
    assert label_pairs(labels).tolist() == [[0, 1], [0, 2], [2, 0]]
    assert label_pairs(torch.tensor([2, 0])).tolist() == [[0, 2], [1, 0]]
    maps = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[1.0, 3.0], [5.0, 2.0]]])
    normalised = normalise_maps(maps)
    assert torch.equal(normalised[0], torch.zeros(2, 2))  # all-zero map: zeros, no NaN
    torch.testing.assert_close(normalised[1], torch.tensor([[0.0, 0.5], [1.0, 0.25]]))


def test_all_zero_attention_gives_finite_losses() -> None:
    model = build_classifier("small-cnn", 4, width=8)
    torch.nn.init.zeros_(model.fc.weight)
    gain = GAIN(model, probe_size=32)
    output = gain(torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]]), torch.ones(2, 4, 32, 32))
    assert output.attention is not None and torch.equal(output.attention, torch.zeros_like(output.attention))
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet18", "layer4"),
        ("vgg16", "features.29"),
        ("mobilenet_v3_small", "features"),
        ("efficientnet_b0", "features"),
        ("convnext_tiny", "features"),
    ],
)
def test_attention_layer_is_found_automatically(name: str, expected: str) -> None:
    model = torchvision.models.get_model(name, weights=None, num_classes=3)
    flags = [m.training for m in model.modules()]
    assert find_attention_layer(model, probe_size=64) == expected
    assert flags == [m.training for m in model.modules()]  # probing leaves every mode as it was


def test_layer_given_by_name_or_module_and_bad_names() -> None:
    model = build_classifier("resnet18", 3).eval()
    by_module = AttentionBackbone(model, model.layer3)
    assert by_module.layer_name == "layer3"
    by_module.remove_hook()
    assert AttentionBackbone(model, "layer3.1").layer_name == "layer3.1"
    with pytest.raises(ValueError, match="'layer9' not found"):
        AttentionBackbone(model, "layer9")
    with pytest.raises(ValueError, match="must output"):
        AttentionBackbone(model, "fc", fast_path=False)(torch.randn(2, 3, 32, 32))


def test_explain_targets_modes_and_range() -> None:
    torch.manual_seed(0)
    model = _model("vgg11")
    for p in model.parameters():
        p.requires_grad_(False)  # frozen weights must still give maps
    gain = GAIN(model, "features.19", probe_size=32)
    model.double()  # float64 so the comparison with the reference cannot hinge on summation order
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        scores, top_maps = gain.explain(images)
    assert top_maps.shape == (3, 32, 32) and top_maps.min() >= 0 and top_maps.max() <= 1
    _, per_sample = gain.explain(images, classes=scores.argmax(1).tolist())
    torch.testing.assert_close(per_sample, top_maps)
    _, fixed = gain.explain(images, classes=2)
    expected = reference_gradcam(model, model.features[19], images, [(0, 2), (1, 2), (2, 2)])
    torch.testing.assert_close(fixed, expected, atol=1e-10, rtol=0)
    assert not model.training
    with pytest.raises(ValueError, match="out of range"):
        gain.explain(images, classes=9)


@pytest.mark.parametrize("name", ["timm:resnet18", "efficientnet-lite0"])
def test_optional_backbones(name: str) -> None:
    pytest.importorskip("timm" if name.startswith("timm") else "efficientnet_lite_pytorch")
    gain = GAIN(build_classifier(name, 4), probe_size=64)
    output = gain(torch.randn(2, 3, 64, 64), torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 1]]))
    assert output.attention.shape == (3, 64, 64)
    output.loss.backward()


def test_a_shared_activation_module_is_never_the_attention_layer() -> None:
    class Shared(torch.nn.Module):
        """One ReLU object used after both convolutions: its hook would fire twice."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
            self.act = torch.nn.ReLU()
            self.fc = torch.nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.act(self.conv2(self.act(self.conv1(x))))
            return self.fc(x.mean(dim=(2, 3)))

    assert find_attention_layer(Shared(), probe_size=16) == "conv2"


def test_efficientnet_lite0_layers_relu6_and_stride16_maps() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    from gainet.models import attention_layer_name

    model = build_classifier("efficientnet-lite0", 3).eval()
    # Lite models use ReLU6 (what their ImageNet weights were trained with), never Swish
    activations = {type(m).__name__ for m in model.modules() if "swish" in type(m).__name__.lower() or isinstance(m, torch.nn.ReLU6)}
    assert activations == {"ReLU6"}
    assert find_attention_layer(model, probe_size=64) == "_head_activation"
    calls = []
    handle = model.get_submodule("_head_activation").register_forward_hook(lambda *a: calls.append(a[2].shape))
    model(torch.randn(1, 3, 64, 64))
    handle.remove()
    assert calls == [torch.Size([1, 1280, 2, 2])]  # runs once, at stride 32
    layer = attention_layer_name("efficientnet-lite0", "stride16")
    assert layer == "_blocks.10"
    gain = GAIN(model, layer, probe_size=128).double()  # float64: no float32 summation-order tolerance
    images = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    _, maps = gain.explain(images, classes=1)
    expected = reference_gradcam(model, model.get_submodule(layer), images, [(0, 1), (1, 1)])
    torch.testing.assert_close(maps, expected, atol=1e-10, rtol=0)
    _, features = gain.backbone(torch.randn(1, 3, 128, 128, dtype=torch.float64))
    assert features.shape[-2:] == (8, 8) and maps.shape == (2, 128, 128)  # stride 16: 8x8 at 128 px
    assert attention_layer_name("efficientnet-lite0", None) is None
    assert attention_layer_name("resnet50", "stride16") == "layer3"
    with pytest.raises(ValueError, match="not named for model 'vgg16'"):
        attention_layer_name("vgg16", "stride16")


def _float64_gradcam(features: torch.Tensor, weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Eq. 2 + resize + min-max normalisation in float64, from ``features`` ``(P, K, h, w)`` and
    ``weights`` ``(P, K)``: the reference for the maps computed under mixed precision."""
    cam = torch.relu((weights.double()[:, :, None, None] * features.double()).sum(dim=1))
    cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    low = cam.flatten(1).min(dim=1).values[:, None, None]
    high = cam.flatten(1).max(dim=1).values[:, None, None]
    return (cam - low) / (high - low + 1e-12)


@pytest.mark.parametrize(("name", "layer"), [("resnet18", "layer4"), ("vgg11", "features.19")])
def test_explain_under_bf16_autocast_computes_the_maps_in_fp32(name: str, layer: str) -> None:
    model = _model(name)
    gain = GAIN(model, layer, probe_size=64)
    torch.manual_seed(2)
    images = torch.randn(3, 3, 64, 64)
    store: dict[str, torch.Tensor] = {}

    def keep(_m, _i, output: torch.Tensor) -> None:  # the bf16 features and their gradient
        store["f"] = output.detach()
        if output.requires_grad:
            output.register_hook(lambda grad: store.__setitem__("g", grad.detach()))

    handle = model.get_submodule(layer).register_forward_hook(keep)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores, maps = gain.explain(images, classes=[1, 4, 0])
    handle.remove()
    assert store["f"].dtype == torch.bfloat16 and maps.dtype == torch.float32  # autocast was on
    if gain.backbone.linear_head is not None:  # closed form W_c / (h*w)
        weights = gain.backbone.linear_head.weight.detach().double()[[1, 4, 0]] / (store["f"].shape[-2] * store["f"].shape[-1])
    else:  # one class per image: one backward, whose gradient the tensor hook saw
        weights = store["g"].double().mean(dim=(2, 3))
    expected = _float64_gradcam(store["f"], weights, (64, 64))
    torch.testing.assert_close(maps.double(), expected, atol=5e-5, rtol=0)  # bf16 matmul: ~1e-2 off


def test_training_forward_under_bf16_autocast_computes_the_maps_in_fp32() -> None:
    torch.manual_seed(0)
    model = build_classifier("resnet18", 4).train()
    gain = GAIN(model, "layer4", probe_size=64)
    assert gain.backbone.linear_head is not None
    images = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    features: list[torch.Tensor] = []
    handle = model.layer4.register_forward_hook(lambda _m, _i, output: features.append(output.detach()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = gain(images, labels)
    handle.remove()
    clean = features[0]  # the S_cl pass (then the erased pass)
    assert clean.dtype == torch.bfloat16 and output.attention.dtype == torch.float32
    pairs = output.pairs
    weights = model.fc.weight.detach().double()[pairs[:, 1]] / (clean.shape[-2] * clean.shape[-1])
    expected = _float64_gradcam(clean[pairs[:, 0]], weights, (64, 64))
    torch.testing.assert_close(output.attention.detach().double(), expected, atol=5e-5, rtol=0)
    output.loss.backward()  # the fp32 maps stay part of the mixed-precision graph
    assert model.layer4[0].conv1.weight.grad is not None


def test_all_zero_map_stays_zero_under_bf16_autocast() -> None:
    # Features exact in bf16, (1.5, 1.4921875, 1.5) times 2^k per pixel, and float32 weights
    # (1, 1, -1.996): the exact sum is -0.0018 * 2^k < 0 at every pixel, so the fp32 map is all
    # zero. A bf16 weighted sum rounds -1.996 to -1.9921875 and gets +0.0039 * 2^k: a full-range map.
    scale = 2.0 ** torch.arange(4.0).repeat(2)[:, None].expand(8, 8)  # 1, 2, 4, 8 by row
    features = (torch.tensor([1.5, 1.4921875, 1.5])[:, None, None] * scale)[None].bfloat16()  # (1, 3, 8, 8)
    weights = torch.tensor([[1.0, 1.0, -1.996]])
    exact = (weights.double()[:, :, None, None] * features.double()).sum(dim=1)
    assert (exact < 0).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = attention_maps(features, weights, torch.tensor([0]), (16, 16))
    assert maps.dtype == torch.float32 and torch.equal(maps, torch.zeros(1, 16, 16))
