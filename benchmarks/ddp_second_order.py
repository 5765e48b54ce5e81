#!/usr/bin/env python
"""rrr's second-order loss through synchronised BatchNorm on 2 processes, against one process.

``rrr`` penalises the input gradient of the summed log-probabilities, so its loss
differentiates through BatchNorm's backward (``create_graph=True``). Run under torchrun with 2
processes (``torchrun --standalone --nproc_per_node 2 benchmarks/ddp_second_order.py --device
cuda``); each rank takes half of a fixed global batch, and for each BatchNorm kind the rank-summed
parameter gradients of the rrr penalty are compared with one process on the whole batch in float64:

- ``DistributedBatchNorm`` (gainet's; the trainer's choice on GPUs when a loss is second order),
- ``nn.SyncBatchNorm`` (torch's; GPU only), which issue 30 expected to fail: PyTorch has no
  derivative of its backward (``batch_norm_backward_elemt``).

The process group is gloo, so both ranks may share one GPU (NCCL refuses two ranks on one device);
``--backend nccl`` where each rank has its own GPU. Prints one line per kind: ``ok`` with the
largest relative gradient difference, or the error; exit status 1 if DistributedBatchNorm fails.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from gainet.models import build_classifier
from gainet.training.distributed import DistributedBatchNorm, convert_batchnorm


def rrr_penalty(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``sum ((d/dx sum_k log sigmoid(s_k))^2)`` over the images (the mask is left out: it only
    selects pixels)."""
    images = images.clone().requires_grad_(True)
    log_p = F.logsigmoid(model(images)).sum()
    (gradient,) = torch.autograd.grad(log_p, images, create_graph=True)
    return gradient.pow(2).sum()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--backend", default="gloo", help="process-group backend (gloo or nccl)")
    args = parser.parse_args()
    dist.init_process_group(args.backend, timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    base = build_classifier("small-cnn", 5, width=8).train()
    images = torch.randn(4 * world, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    reference = copy.deepcopy(base).double()
    rrr_penalty(reference, images.double()).backward()
    expected = [p.grad for p in reference.parameters()]

    kinds = [("DistributedBatchNorm", DistributedBatchNorm, {"process_group": dist.new_group(backend=args.backend)})]
    if device.type == "cuda":
        kinds.append(("nn.SyncBatchNorm", nn.SyncBatchNorm, {}))
    failed = 0
    for name, cls, options in kinds:
        model = convert_batchnorm(copy.deepcopy(base), cls, **options).to(device)
        try:
            rrr_penalty(model, images[rank::world].to(device)).backward()
            worst = 0.0
            for parameter, reference_grad in zip(model.parameters(), expected):
                grad = parameter.grad.double()
                dist.all_reduce(grad)  # the rank sum: DDP's average times W
                scale = float(reference_grad.abs().max()) or 1.0
                worst = max(worst, float((grad.cpu() - reference_grad).abs().max()) / scale)
            line = f"ok, largest gradient difference {worst:.2g} of the largest gradient"
            failed += name == "DistributedBatchNorm" and worst > 1e-4
        except Exception as error:  # noqa: BLE001 - reported, that is the measurement
            line = f"FAILED: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
            failed += name == "DistributedBatchNorm"
        if rank == 0:
            print(f"{name} on {device.type} ({world} processes, {args.backend}): {line}", flush=True)
        dist.barrier()
    dist.destroy_process_group()
    return int(bool(failed))


if __name__ == "__main__":
    sys.exit(main())
