"""Backbone adapter: one forward pass yields class scores and the attention layer's activations.

Any image classifier (torchvision, timm, EfficientNet-Lite, a user's own ``nn.Module``) is wrapped
without modification: a forward hook on the attention layer ``l`` captures ``f_l`` while the model
computes its scores, so no second pass and no re-implementation of the model's forward is needed.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

logger = logging.getLogger(__name__)

# Modules whose spatial output is never the attention layer: they pool, drop or pass through.
_NON_FEATURE_TYPES = (nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten)


def _is_pooling(module: nn.Module) -> bool:
    return "pool" in type(module).__name__.lower()


@contextmanager
def preserved_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Run a block in which BatchNorm layers may normalise with batch statistics but
    leave ``running_mean``, ``running_var`` and ``num_batches_tracked`` exactly as they were."""
    saved = []
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.track_running_stats:
            saved.append(
                (module, [b.detach().clone() if b is not None else None
                          for b in (module.running_mean, module.running_var, module.num_batches_tracked)])
            )
    try:
        yield
    finally:
        with torch.no_grad():
            for module, (mean, var, count) in saved:
                for buffer, value in zip(
                    (module.running_mean, module.running_var, module.num_batches_tracked), (mean, var, count)
                ):
                    if buffer is not None and value is not None:
                        buffer.copy_(value)


@contextmanager
def batchnorm_with_batch_stats_only(model: nn.Module) -> Iterator[None]:
    """Run a block in which train-mode BatchNorm layers normalise with the batch's own statistics
    and neither read nor write their running buffers.

    Unlike saving and restoring the buffers, this never modifies them in place, so a graph built
    earlier (whose BatchNorm backward may hold the buffers) stays valid for ``backward``.
    """
    switched = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    for module in switched:
        module.track_running_stats = False
    try:
        yield
    finally:
        for module in switched:
            module.track_running_stats = True


@contextmanager
def batchnorm_in_eval_mode(model: nn.Module) -> Iterator[None]:
    """Run a block with every BatchNorm layer in eval mode (normalise with, and never update,
    the running statistics); the other modules keep their mode."""
    switched = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training]
    for module in switched:
        module.train(False)
    try:
        yield
    finally:
        for module in switched:
            module.train(True)


def own_batch_statistics(model: nn.Module, rows: int, *, synchronising: bool = False) -> AbstractContextManager[None]:
    """The BatchNorm context for ``rows`` extra images run as a batch of their own: their own batch
    statistics, running buffers untouched; a lone row (one process) has no batch statistics (at a
    1 x 1 map BatchNorm refuses it) and is normalised with the running ones. Under a synchronising
    BatchNorm the statistics pool every rank's rows, and the mode may not depend on this rank's count."""
    if rows == 1 and not synchronising:
        return batchnorm_in_eval_mode(model)
    return batchnorm_with_batch_stats_only(model)


@contextmanager
def _probe_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Temporarily set the whole model's mode for a shape/linearity probe; restore every flag,
    BatchNorm statistics and the RNG afterwards so probing has no side effect."""
    flags = {m: m.training for m in model.modules()}
    model.train(training)
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    try:
        with torch.random.fork_rng(devices=devices), preserved_batchnorm_stats(model):
            yield
    finally:
        for module, flag in flags.items():
            module.training = flag


def call_with_constant_parameters(module: nn.Module, *inputs: Tensor) -> object:
    """``module(*inputs)`` with every parameter detached: gradients reach the inputs only, never
    the module's weights (the S_am stream routed "only through the attention map")."""
    constants = {name: p.detach() for name, p in module.named_parameters()}
    return functional_call(module, constants, inputs)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def find_attention_layer(model: nn.Module, probe_size: int = 224) -> str:
    """Name of the last layer with spatial output before global pooling.

    Runs the model once (eval mode, no gradient, on zeros of ``(1, 3, probe_size, probe_size)``)
    and takes the last leaf module whose output is ``(B, K, h, w)`` with ``h * w > 1`` and that is
    not a pooling, dropout or identity layer; then climbs to the outermost ancestor that returns
    that very tensor (``layer4`` rather than ``layer4.1.relu`` in a ResNet; ``features.29`` in a
    VGG16, whose container ends with a max-pool).

    A module that runs more than once per forward pass (one activation object shared by several
    places, as EfficientNet's ``_swish`` is by its stem and its head) is never chosen: a hook on
    it would fire at every use, so its "output" would be whichever use came last.
    """
    records: list[tuple[str, nn.Module, Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod: nn.Module, _inputs: object, output: object, name: str = name) -> None:
            if isinstance(output, Tensor) and output.dim() == 4:
                records.append((name, mod, output))

        handles.append(module.register_forward_hook(hook))
    try:
        with _probe_mode(model, training=False), torch.no_grad():
            model(torch.zeros(1, 3, probe_size, probe_size, device=_model_device(model)))
    finally:
        for handle in handles:
            handle.remove()

    calls: dict[str, int] = {}
    for name, _module, _output in records:
        calls[name] = calls.get(name, 0) + 1
    leaf_index = None
    for index, (name, module, output) in enumerate(records):
        if calls[name] > 1:  # shared module: its hook fires at several places
            continue
        is_leaf = next(module.children(), None) is None
        spatial = output.shape[-1] * output.shape[-2] > 1
        if is_leaf and spatial and not _is_pooling(module) and not isinstance(module, _NON_FEATURE_TYPES):
            leaf_index = index
    if leaf_index is None:
        raise ValueError(
            f"no layer with spatial output (B, K, h, w), h*w > 1, found in {type(model).__name__} "
            f"at probe size {probe_size}; pass attention_layer explicitly"
        )
    chosen, _, tensor = records[leaf_index]
    for name, _module, output in records[leaf_index + 1:]:
        if output is tensor and chosen.startswith(name + "."):
            chosen = name
    return chosen


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Return ``(dotted_name, module)`` for a layer given by name or as a module of ``model``."""
    if isinstance(layer, str):
        try:
            return layer, model.get_submodule(layer)
        except AttributeError as error:
            raise ValueError(
                f"attention layer {layer!r} not found in {type(model).__name__}: {error}"
            ) from None
    for name, module in model.named_modules():
        if module is layer:
            return name, module
    raise ValueError(f"attention layer {type(layer).__name__} is not a submodule of {type(model).__name__}")


class AttentionBackbone(nn.Module):
    """Wrap a classifier so that ``forward(images)`` returns ``(scores, features)``.

    Args:
        model: an image classifier mapping ``(B, 3, H, W)`` to logits ``(B, C)``.
        attention_layer: the layer ``l`` whose activations ``f_l`` feed Grad-CAM, as a dotted
            name (``"layer4"``, ``"features.29"``) or a module of ``model``; ``None`` finds it
            automatically (:func:`find_attention_layer`) and logs the choice.
        probe_size: input side used by the automatic probes (layer search, head linearity).
        fast_path: use the exact closed form of Grad-CAM weights for heads that are global
            average pooling followed by one linear layer. ``None`` (default) probes the model and
            uses it when it applies; ``False`` never; ``True`` requires it (error if it does not apply).
        log_level: level of the two lines describing the choices (layer found, Grad-CAM weights):
            ``logging.DEBUG`` where a caller rebuilds a model it has described already (the demo's
            report rebuilds each trained model), so a log says it once per model.

    The hook keeps the layer's *last* output of a forward pass (a module called several times,
    such as a shared activation, contributes its final call).
    """

    def __init__(
        self,
        model: nn.Module,
        attention_layer: str | nn.Module | None = None,
        *,
        probe_size: int = 224,
        fast_path: bool | None = None,
        log_level: int = logging.INFO,
    ) -> None:
        super().__init__()
        self.model = model
        if attention_layer is None:
            name = find_attention_layer(model, probe_size)
            logger.log(log_level, "attention layer: %s (found automatically in %s)", name, type(model).__name__)
            attention_layer = name
        self.layer_name, layer = resolve_layer(model, attention_layer)
        self._features: Tensor | None = None
        self._features_need_grad = False
        self._hook = layer.register_forward_hook(self._capture)
        self.linear_head: nn.Linear | None = None
        if fast_path is not False:
            self.linear_head = find_linear_head(self, probe_size)
            if fast_path and self.linear_head is None:
                raise ValueError(
                    f"fast_path=True but the head after {self.layer_name!r} is not global-average-pool + linear"
                )
        logger.log(
            log_level, "Grad-CAM weights for %s: %s", self.layer_name,
            "closed form W_c / (h*w) (GAP + linear head)" if self.linear_head is not None else "autograd",
        )

    def _capture(self, _module: nn.Module, _inputs: object, output: object) -> Tensor | None:
        if not isinstance(output, Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"attention layer {self.layer_name!r} must output (B, K, h, w), got {shape}")
        if self._features_need_grad and not output.requires_grad:
            # Inference with frozen weights and plain inputs: make f_l a leaf so Grad-CAM can
            # still differentiate the scores with respect to it.
            output = output.detach().requires_grad_(True)
            self._features = output
            return output
        self._features = output
        return None

    def remove_hook(self) -> None:
        """Detach from the model (the wrapped model no longer records ``f_l``)."""
        self._hook.remove()

    @contextmanager
    def features_require_grad(self) -> Iterator[None]:
        """Within this block, ``f_l`` requires grad even when nothing upstream does."""
        previous, self._features_need_grad = self._features_need_grad, True
        try:
            yield
        finally:
            self._features_need_grad = previous

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images`` ``(B, 3, H, W)`` -> ``(scores (B, C), features (B, K, h, w))``."""
        self._features = None
        scores = self.model(images)
        features, self._features = self._features, None
        if features is None:
            raise RuntimeError(f"attention layer {self.layer_name!r} did not run during the forward pass")
        if not isinstance(scores, Tensor) or scores.dim() != 2:
            raise ValueError(f"model must return scores (B, C), got {getattr(scores, 'shape', type(scores))}")
        return scores, features


def find_linear_head(backbone: AttentionBackbone, probe_size: int = 224) -> nn.Linear | None:
    """The model's final ``nn.Linear`` if ``scores = W @ mean_hw(f_l) + b`` holds exactly.

    Checked numerically on random inputs in eval *and* train mode (BatchNorm statistics and RNG
    restored afterwards): a head with active dropout, extra layers or a non-average pooling fails
    the check, so the closed-form Grad-CAM weights ``W_c / (h*w)`` are used only where they equal
    the autograd ones.
    """
    candidates = [m for m in backbone.model.modules() if isinstance(m, nn.Linear)]
    if not candidates:
        return None
    head = candidates[-1]
    device = _model_device(backbone.model)
    for training in (False, True):
        with _probe_mode(backbone.model, training=training), torch.no_grad():
            images = torch.randn(2, 3, probe_size, probe_size, device=device)
            scores, features = backbone(images)
            if features.shape[1] != head.in_features or scores.shape[1] != head.out_features:
                return None
            predicted = nn.functional.linear(features.mean(dim=(2, 3)), head.weight, head.bias)
            scale = scores.abs().max().clamp_min(1.0)
            if not torch.allclose(predicted, scores, rtol=1e-4, atol=1e-5 * float(scale)):
                return None
    return head
