"""Reliability of training runs and checkpoint files (issue 11): safe loading, finite checkpoints,
resume rules, consistent outputs after a kill, locked output directories, config validation."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gainet.cli import main
from gainet.training.checkpoint import load_checkpoint, save_atomic
from gainet.training.config import TrainConfig
from gainet.training.trainer import train

TINY = dict(
    dataset="parts", image_size=32, train_images=48, val_images=16, model="small-cnn", model_width=8,
    epochs=2, warmup_epochs=1, batch_size=16, lr=3e-3, progress=False, tensorboard=False, threads=1,
)


def tiny(tmp_path: Path, **changes) -> TrainConfig:
    return TrainConfig(**{**TINY, "output_dir": str(tmp_path / "run"), **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Output directory of a finished one-epoch cam run (copy it before changing anything)."""
    config = tiny(tmp_path_factory.mktemp("trained"), method="cam", epochs=1, warmup_epochs=0)
    train(config)
    return Path(config.output_dir)


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


def _one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


# ---------------------------------------------------------------- 11.17 weights_only loading
class _RunsCode:
    """Unpickling this creates a directory: the proof that loading ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_checkpoints_hold_only_tensors_and_plain_values(trained: Path) -> None:
    for name in ("last.pt", "best.pt"):
        state = torch.load(trained / name, map_location="cpu", weights_only=True)
        assert state["epoch"] == 1


def test_loading_never_runs_code_from_a_checkpoint(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(ValueError, match="evil.pt: refusing to load.*--unsafe-load"):
        load_checkpoint(path)
    assert not marker.exists()
    assert main(["evaluate", "--checkpoint", str(path), "--device", "cpu"]) == 2
    assert "--unsafe-load" in _one_line_error(capsys)
    assert not marker.exists()


def test_old_checkpoint_loads_only_with_the_explicit_opt_out(trained: Path, tmp_path: Path, monkeypatch,
                                                             caplog, capsys) -> None:
    state = load_checkpoint(trained / "last.pt")
    state["rng"]["numpy"] = np.random.get_state()  # what gainet wrote before: a pickled numpy array
    old = tmp_path / "old.pt"
    torch.save(state, old)
    with pytest.raises(ValueError, match="numpy"):
        load_checkpoint(old)
    monkeypatch.setenv("GAINET_UNSAFE_LOAD", "1")
    assert load_checkpoint(old)["epoch"] == 1
    assert "UNSAFE LOAD" in caplog.text
    monkeypatch.delenv("GAINET_UNSAFE_LOAD")
    out = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(old), "--device", "cpu", "--output", str(out)]) == 2
    assert "--unsafe-load" in _one_line_error(capsys)
    assert main(["evaluate", "--checkpoint", str(old), "--device", "cpu", "--output", str(out),
                 "--unsafe-load"]) == 0
    assert (out / "metrics.json").is_file()
    assert "GAINET_UNSAFE_LOAD" not in os.environ  # the flag does not outlive its command


# ---------------------------------------------------------------- 11.4 non-finite checkpoints
def test_diverged_model_is_never_saved_or_selected(tmp_path: Path, monkeypatch) -> None:
    from gainet.training.trainer import Trainer

    original = Trainer.train_epoch

    def diverge_in_epoch_two(self, epoch):
        metrics = original(self, epoch)
        if epoch == 1:  # a finite loss, but BatchNorm's running variance overflowed
            bn = next(m for m in self.gain.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var[0] = float("inf")
        return metrics

    monkeypatch.setattr(Trainer, "train_epoch", diverge_in_epoch_two)
    config = tiny(tmp_path, method="cam", keep_epoch_checkpoints=True)
    with pytest.raises(FloatingPointError, match="non-finite values .* after epoch 2, first '.*running_var'"):
        train(config)
    run = Path(config.output_dir)
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(run / name)["epoch"] == 1
    assert not (run / "epoch-2.pt").exists()


def test_evaluate_refuses_a_checkpoint_with_non_finite_buffers(trained: Path, tmp_path: Path, capsys) -> None:
    state = load_checkpoint(trained / "last.pt")
    key = next(k for k in state["model"] if k.endswith("running_var"))
    state["model"][key][0] = float("inf")
    path = tmp_path / "diverged.pt"
    save_atomic(state, path)
    assert main(["evaluate", "--checkpoint", str(path), "--device", "cpu", "--output", str(tmp_path / "ev")]) == 2
    error = _one_line_error(capsys)
    assert "diverged.pt" in error and "non-finite" in error and key in error
    assert not (tmp_path / "ev").exists()


# ---------------------------------------------------------------- 11.8 config validation
@pytest.mark.parametrize("option, value, message", [
    ("--batch-size", "0", "batch_size must be >= 1, got 0"),
    ("--epochs", "0", "epochs must be >= 1, got 0"),
    ("--epochs", "-3", "epochs must be >= 1, got -3"),
    ("--lr", "0", "lr must be > 0.0, got 0.0"),
    ("--image-size", "-1", "image_size must be >= 1"),
    ("--eval-every", "0", "eval_every must be >= 1"),
    ("--warmup-epochs", "-1", "warmup_epochs must be >= 0"),
])
def test_out_of_range_options_end_with_one_line_error(tmp_path: Path, capsys, option, value, message) -> None:
    output = tmp_path / "run"
    assert main(["train", "--method", "gain", "--epochs", "2", "--warmup-epochs", "1", "--train-images", "8",
                 "--val-images", "4", "--image-size", "16", "--model-width", "4", "--threads", "1", option, value,
                 "--output-dir", str(output), "--no-progress", "--no-tensorboard"]) == 2
    assert message in _one_line_error(capsys)
    assert not output.exists()


def test_warmup_is_ignored_by_cam_and_must_leave_gain_an_epoch(tmp_path: Path) -> None:
    assert TrainConfig(method="cam", epochs=1).warmup_epochs == 2  # default warm-up, no error: cam has none
    with pytest.raises(ValueError, match=r"warmup_epochs \(2\) must be < epochs \(2\) for gain: attention mining "
                                         "would never start"):
        TrainConfig(method="gain", epochs=2)
    config = tiny(tmp_path, method="cam", epochs=1)
    config = TrainConfig(**{k: v for k, v in config.to_dict().items() if k != "warmup_epochs"})
    assert train(config)["epoch"] == 1
