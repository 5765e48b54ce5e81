"""torch.distributed plumbing: read torchrun's environment, pick NCCL or gloo, reduce metrics,
synchronise BatchNorm and rebalance per-rank loss means so that a W-process job computes the
gradient of the same global batch as one process."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


DEFAULT_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a (possibly single-process) job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistributedContext":
        """Read ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` as set by torchrun; single process otherwise."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)

    def init(self, device: torch.device, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        """Join the process group: NCCL on GPUs, gloo on CPUs. ``timeout`` (seconds): how long a
        collective waits for the other ranks before failing (torch's default, 30 min, would let a
        stopped rank hang the job that long)."""
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world_size,
                                    timeout=datetime.timedelta(seconds=timeout))

    def barrier(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.barrier()

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """Average scalar metrics over the ranks (identity in a single process)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.tolist())}

    def global_mean_scales(self, counts: Sequence[float], device: torch.device) -> list[float]:
        """``W n_r / N`` for each count ``n_r`` of this rank (``N``: the sum over ranks; 1 where N = 0).

        DDP averages gradients over ranks. A loss term that is a mean over a number of items that
        varies between ranks (L_e over the few supervised images of each rank's share of the batch)
        then gets the wrong weight: multiplying rank r's term by ``W n_r / N`` makes the average over
        ranks the mean over all N items of the global batch, as in one process. One process: all 1.
        """
        if not self.enabled or not counts:
            return [1.0] * len(counts)
        local = torch.tensor([float(c) for c in counts], dtype=torch.float64, device=device)
        total = local.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return [self.world_size * n / t if t > 0 else 1.0 for n, t in zip(local.tolist(), total.tolist())]

    def sync_batchnorm(self, module: nn.Module, device: torch.device, *, second_order: bool = False,
                       timeout: float = DEFAULT_TIMEOUT_SECONDS) -> nn.Module:
        """Replace every BatchNorm layer of ``module`` (in place) by one that normalises training
        batches with the statistics of the global batch: :class:`torch.nn.SyncBatchNorm` on GPUs,
        :class:`DistributedBatchNorm` elsewhere (torch's SyncBatchNorm refuses CPU tensors).
        Identity in a single process. Call on every rank before wrapping in DDP.

        ``second_order``: the loss differentiates through BatchNorm's backward (``rrr``'s input
        gradients, ``weights_grad``'s Grad-CAM weights, ``create_graph=True``). torch's
        SyncBatchNorm has no derivative of its backward (``batch_norm_backward_elemt``), so on
        GPUs too :class:`DistributedBatchNorm` is used then, on an NCCL group of its own.
        """
        if not self.enabled:
            return module
        if device.type == "cuda" and not second_order:
            return convert_batchnorm(module, nn.SyncBatchNorm)
        # A group of its own keeps these collectives apart from DDP's gradient buckets.
        # ``timeout``: the job's --dist-timeout; without it new_group takes torch's own default
        # (30 min for gloo), and a collective mismatch inside BatchNorm would hang that long.
        group = dist.new_group(backend="nccl" if device.type == "cuda" else "gloo",
                               timeout=datetime.timedelta(seconds=timeout))
        return convert_batchnorm(module, DistributedBatchNorm, process_group=group)

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


class _SumOverRanks(torch.autograd.Function):
    """``all_reduce(SUM)`` with its gradient: the backward sums the incoming gradients over ranks
    (every rank's loss depends on the sum)."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group: dist.ProcessGroup) -> Tensor:  # type: ignore[override]
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        # The backward is itself a differentiable sum over ranks: a loss that differentiates a
        # gradient (rrr's input-gradient penalty, create_graph) then gets the other ranks' terms
        # in its second-order pass too, with the same collectives on every rank.
        return _SumOverRanks.apply(grad, ctx.group), None


class DistributedBatchNorm(_BatchNorm):
    """BatchNorm whose training-mode statistics are those of the whole batch across all ranks,
    on any device and backend (gloo on CPU), through a differentiable ``all_reduce``.

    Per channel, the sums of ``x`` and ``x^2`` (float64) and the element count are summed over the
    ranks; mean and biased variance normalise, the unbiased variance updates the running
    statistics, exactly as :class:`torch.nn.BatchNorm2d` does on the concatenated batch. The
    backward pass sums the statistics' gradients over the ranks (the all_reduce's own backward), so
    the DDP-averaged gradient equals that of one process on the global batch. Eval mode (running
    statistics) and single-process use are plain BatchNorm. Every rank must call it equally often
    (GAIN's streams do). ``track_running_stats = False`` in training mode (GAIN's erased stream)
    normalises with global batch statistics and leaves the buffers alone.

    ``synchronises_ranks`` tells the core (:func:`gainet.core.collectives.synchronising_modules`)
    that this module's forward and backward make collectives in training mode.
    """

    synchronises_ranks = True

    def __init__(self, *args, process_group: dist.ProcessGroup | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        group = self.process_group or dist.group.WORLD
        if not self.training or not dist.is_initialized() or dist.get_world_size(group) == 1:
            return super().forward(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        x = input.double()
        local = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([input.numel() / channels])])
        total = _SumOverRanks.apply(local, group)
        count = total[-1]
        # A batch empty on every rank (an erased stream with no label anywhere) gives an empty
        # output; the clamp keeps 0/0 out of its statistics and their gradients.
        mean = total[:channels] / count.clamp_min(1.0)
        var = (total[channels:2 * channels] / count.clamp_min(1.0) - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        shape = [1, channels] + [1] * (input.dim() - 2)
        invstd = torch.rsqrt(var + self.eps)
        output = (input - mean.to(input.dtype).view(shape)) * invstd.to(input.dtype).view(shape)
        if self.weight is not None:
            output = output * self.weight.view(shape)
        if self.bias is not None:
            output = output + self.bias.view(shape)
        return output


def convert_batchnorm(module: nn.Module, cls: type[_BatchNorm], **options) -> nn.Module:
    """``module`` with every ``BatchNorm1d/2d/3d`` replaced by ``cls`` sharing its parameters and
    buffers and keeping its mode and hooks (a hook on an attention layer that is a BatchNorm, for
    instance, survives). Returns the converted module (a new one only if ``module`` is a BatchNorm)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, cls):
        converted = cls(module.num_features, module.eps, module.momentum, module.affine,
                        module.track_running_stats, bias=module.bias is not None, **options)
        converted.weight = module.weight
        converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.training = module.training
        for name in ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                     "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            if hasattr(module, name):
                getattr(converted, name).update(getattr(module, name))
        if hasattr(module, "qconfig"):
            converted.qconfig = module.qconfig
        return converted
    for name, child in module.named_children():
        new = convert_batchnorm(child, cls, **options)
        if new is not child:
            module.add_module(name, new)
    return module
