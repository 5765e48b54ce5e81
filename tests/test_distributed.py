"""DDP on the CPU: 2 gloo processes under torchrun against 1 process with the same global batch.

The 2-process jobs are real ``torchrun --nproc_per_node 2`` launches of ``gainet train`` on
127.0.0.1, with this file as the worker script (see ``__main__`` below: it records which rank
writes checkpoints, then runs the CLI).

What makes 1 and 2 processes agree (docs/distributed.md): one global permutation per
(seed, epoch) split over the ranks (``epoch_loader``), BatchNorm statistics of the global batch
(``DistributedBatchNorm``; torch's SyncBatchNorm refuses CPU tensors), gradients averaged by DDP,
and per-rank loss means rescaled to global-batch means (L_e over the few supervised images).
The tiny world draws no random numbers during training (no augmentation, no dropout), so the
per-rank RNG seeds do not enter.

Tolerance: the two runs add the same numbers in a different order (per-rank partial sums,
all_reduce, float64 BatchNorm statistics vs. torch's float32 kernel), so weights differ by float32
rounding amplified over 6 AdamW steps; measured max |difference| 3.7e-6, asserted <= 1e-4 absolute
(lr 3e-3: one AdamW step moves a weight by up to ~3e-3, so a real mismatch shows up as >= 1e-3;
measured: per-rank BatchNorm statistics 2.2e-2, plain DDP average of per-rank L_e means 6.0e-3).
Resuming under DDP is exact: the resumed 2-process run must equal the uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TINY = dict(
    dataset="parts", image_size=32, train_images=48, val_images=16, model="small-cnn", model_width=8,
    epochs=2, warmup_epochs=1, batch_size=16, lr=3e-3, progress=False, tensorboard=False, threads=1,
)
ATOL = 1e-4
RUN_FILES = {"last.pt", "best.pt", "epoch-1.pt", "epoch-2.pt", "metrics.csv", "config.yaml", "final.json",
             ".gainet.lock"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli_args(values: dict) -> list[str]:
    args = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


def _torchrun(values: dict, saves: Path) -> None:
    """``gainet train`` with ``values`` on 2 gloo processes on 127.0.0.1."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "GAINET_TEST_SAVES": str(saves)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, *_cli_args(values)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_two_gloo_processes_match_one_process_and_resume_exactly(tmp_path: Path) -> None:
    from gainet.training.config import TrainConfig
    from gainet.training.trainer import train

    # gain-ext: mining (the erased stream meets BatchNorm too) and L_e on 8 of 48 images, so the
    # two ranks' shares of a batch often hold different numbers of supervised images.
    values = {**TINY, "method": "gain-ext", "supervision": "boxes", "supervised_count": 8,
              "keep_epoch_checkpoints": True}
    train(TrainConfig(**{**values, "output_dir": str(tmp_path / "one")}))
    _torchrun({**values, "output_dir": tmp_path / "two"}, tmp_path / "saves")

    one, two = _load(tmp_path / "one" / "last.pt"), _load(tmp_path / "two" / "last.pt")
    assert one["model"].keys() == two["model"].keys()
    worst = max(float((one["model"][k].double() - two["model"][k].double()).abs().max()) for k in one["model"])
    assert worst <= ATOL, f"2 processes differ from 1 by {worst:.3g} > {ATOL}"
    # BatchNorm running statistics are global too (num_batches_tracked exactly)
    assert all(torch.equal(one["model"][k], two["model"][k]) for k in one["model"] if k.endswith("num_batches_tracked"))
    # training metrics reduced over the ranks are the global-batch means
    for row_one, row_two in zip(one["history"], two["history"]):
        for key in ("train/loss", "train/loss_cl", "train/loss_am", "train/loss_e"):
            assert row_two[key] == pytest.approx(row_one[key], rel=1e-4, abs=1e-6), key
    assert two["history"][-1]["val/mAP"] == pytest.approx(one["history"][-1]["val/mAP"], abs=1e-3)

    # one set of files, written by rank 0 only
    assert {p.name for p in (tmp_path / "two").iterdir()} == RUN_FILES
    writes = (tmp_path / "saves" / "rank0.txt").read_text().split()
    # last.pt is written last each epoch (11.10): once it holds epoch N, the other files do too
    assert writes[:3] == ["best.pt", "epoch-1.pt", "last.pt"]
    assert writes[3:] in (["epoch-2.pt", "last.pt"], ["best.pt", "epoch-2.pt", "last.pt"])
    assert not (tmp_path / "saves" / "rank1.txt").exists()
    assert len((tmp_path / "two" / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
    assert json.loads((tmp_path / "two" / "final.json").read_text())["val"]["images"] == 16

    # --resume under DDP from the 2-process epoch-1 checkpoint: bit-identical to the uninterrupted run
    _torchrun({**values, "keep_epoch_checkpoints": False, "output_dir": tmp_path / "resumed",
               "resume": tmp_path / "two" / "epoch-1.pt"}, tmp_path / "saves-resumed")
    resumed = _load(tmp_path / "resumed" / "last.pt")
    assert resumed["epoch"] == 2
    for key, value in two["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert [r["train/loss"] for r in resumed["history"]] == [r["train/loss"] for r in two["history"]]
    assert not (tmp_path / "saves-resumed" / "rank1.txt").exists()


def test_guidance_under_two_processes_is_the_global_batch_and_survives_ranks_without_supervision(tmp_path: Path) -> None:
    """Issue 18: the guidance terms are global-batch means (upweight and rrr draw no random
    numbers, so 2 processes must match 1), and counterfactual rows built in each rank's loader
    go through the one forward pass with identical collectives on every rank, including a rank
    whose share of the batch holds no supervised image (2 of 48 images: most steps)."""
    from gainet.training.config import TrainConfig
    from gainet.training.trainer import train

    values = {**TINY, "method": "cam", "supervision": "boxes", "supervised_count": 8, "guidance": "rrr,upweight,l_e"}
    train(TrainConfig(**{**values, "output_dir": str(tmp_path / "one")}))
    _torchrun({**values, "output_dir": tmp_path / "two"}, tmp_path / "saves")
    one, two = _load(tmp_path / "one" / "last.pt"), _load(tmp_path / "two" / "last.pt")
    worst = max(float((one["model"][k].double() - two["model"][k].double()).abs().max()) for k in one["model"])
    assert worst <= ATOL, f"2 processes differ from 1 by {worst:.3g} > {ATOL}"
    for row_one, row_two in zip(one["history"], two["history"]):
        for key in ("train/loss", "train/guide_upweight", "train/guide_rrr", "train/loss_e"):
            assert row_two[key] == pytest.approx(row_one[key], rel=1e-4, abs=1e-7), key

    rows = {**TINY, "method": "cam", "supervision": "boxes", "supervised_count": 2, "epochs": 1,
            "guidance": "context-swap,context-only,actdiff,rrr", "swap_mask": "grabcut",
            "grabcut_cache": tmp_path / "grabcut"}
    _torchrun({**rows, "output_dir": tmp_path / "sparse"}, tmp_path / "saves-sparse")
    # GrabCut ran on rank 0 while rank 1 waited (one barrier each), then rank 1 read its cache.
    assert json.loads((tmp_path / "sparse" / "final.json").read_text())["grabcut"]["estimated"] == 2
    assert len(list((tmp_path / "grabcut").rglob("*.png"))) == 2
    history = _load(tmp_path / "sparse" / "last.pt")["history"]
    assert history[0]["guidance/no_supervised"] > 0  # some rank-steps had no supervised image
    assert all(math.isfinite(history[0][f"train/guide_{m}"]) for m in ("context_swap", "context_only", "actdiff", "rrr"))


def test_convert_batchnorm_shares_parameters_and_keeps_hooks() -> None:
    from torch import nn

    from gainet.training.distributed import DistributedBatchNorm, convert_batchnorm

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    model[1].running_mean.fill_(0.5)
    seen = []
    model[1].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    weight = model[1].weight
    model.eval()
    images = torch.randn(2, 3, 8, 8)
    expected = model(images)
    converted = convert_batchnorm(model, DistributedBatchNorm)
    assert isinstance(converted[1], DistributedBatchNorm) and converted[1].weight is weight
    assert not converted[1].training and float(converted[1].running_mean[0]) == 0.5
    assert torch.equal(converted(images), expected)  # no process group: plain BatchNorm
    assert len(seen) == 2


if __name__ == "__main__":  # torchrun worker: record checkpoint writes per rank, then `gainet train`
    import gainet.training.trainer as trainer_module
    from gainet.cli import main

    rank = os.environ.get("RANK", "0")
    record = Path(os.environ["GAINET_TEST_SAVES"])
    original = trainer_module.save_atomic

    def recording_save(state, path):
        record.mkdir(parents=True, exist_ok=True)
        with open(record / f"rank{rank}.txt", "a") as file:
            file.write(Path(path).name + "\n")
        return original(state, path)

    trainer_module.save_atomic = recording_save
    sys.exit(main(["train", *sys.argv[1:]]))
