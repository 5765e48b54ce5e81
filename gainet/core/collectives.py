"""Modules that talk to other processes, and agreeing on a count with those processes.

Under DDP a synchronised BatchNorm runs a ``torch.distributed`` collective in its forward (the
batch statistics) and in its backward (their gradients). Every rank must then run the same
forward and backward passes, in the same order, whatever its data; these helpers let the core
find out whether that applies to a model and make a data-dependent count the same on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def synchronising_modules(model: nn.Module) -> list[nn.Module]:
    """The train-mode modules of ``model`` whose forward or backward run a collective:
    :class:`torch.nn.SyncBatchNorm` and any module whose class sets ``synchronises_ranks = True``
    (gainet's ``DistributedBatchNorm``). Eval-mode BatchNorm reads its running statistics and
    makes none, so a model in eval mode returns ``[]``."""
    return [m for m in model.modules()
            if m.training and (isinstance(m, nn.SyncBatchNorm) or getattr(m, "synchronises_ranks", False))]


def agreed_maximum(value: int, modules: list[nn.Module], device: torch.device) -> int:
    """The maximum of ``value`` over the processes of ``modules``' process group (their
    ``process_group`` attribute; the default group when it is ``None``): one small ``all_reduce``.
    ``value`` itself when ``modules`` is empty or ``torch.distributed`` is not initialised."""
    if not modules or not dist.is_available() or not dist.is_initialized():
        return value
    group = getattr(modules[0], "process_group", None) or dist.group.WORLD
    if dist.get_world_size(group) == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
    return int(tensor.item())
