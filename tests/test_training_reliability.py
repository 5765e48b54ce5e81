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


# ---------------------------------------------------------------- 11.6 resume rules
def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_resume_with_a_new_lr_applies_it_and_records_it(tmp_path: Path) -> None:
    import csv
    import math

    import yaml

    first = tiny(tmp_path, method="cam", keep_epoch_checkpoints=True, output_dir=str(tmp_path / "first"))
    train(first)
    resumed = first.replace(lr=1e-3, resume=str(tmp_path / "first" / "epoch-1.pt"),
                            output_dir=str(tmp_path / "resumed"), keep_epoch_checkpoints=False)
    train(resumed)
    with open(tmp_path / "resumed" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    # epoch 2 of a cosine schedule over 2 epochs starting at lr 1e-3 (not the checkpoint's 3e-3)
    assert float(rows[1]["lr"]) == pytest.approx(1e-3 * (1 + math.cos(math.pi * 1 / 2)) / 2, rel=1e-12)
    assert float(rows[0]["lr"]) == pytest.approx(3e-3)  # epoch 1 was trained before the change
    recorded = yaml.safe_load((tmp_path / "resumed" / "config.yaml").read_text())
    assert recorded["lr"] == load_checkpoint(tmp_path / "resumed" / "last.pt")["config"]["lr"] == 1e-3


@pytest.mark.parametrize("option, value", [("--model-width", "16"), ("--method", "gain"),
                                           ("--optimizer", "sgd"), ("--model", "resnet18")])
def test_incompatible_resume_ends_with_one_line_error_and_writes_nothing(trained: Path, tmp_path: Path, capsys,
                                                                          option, value) -> None:
    run = _copy(trained, tmp_path)
    before = _snapshot(run)
    options = {**TINY, "method": "cam", "epochs": 2, "warmup_epochs": 0}
    argv = ["train", "--output-dir", str(run), "--resume", "auto", "--no-progress", "--no-tensorboard"]
    for name, setting in options.items():
        if isinstance(setting, bool):
            continue
        argv += ["--" + name.replace("_", "-"), str(setting)]
    argv += [option, value]
    assert main(argv) == 2
    error = _one_line_error(capsys)
    assert "cannot resume" in error and option[2:].replace("-", "_") in error
    assert _snapshot(run) == before


def test_finished_run_refuses_an_override_that_applies_to_no_epoch(trained: Path, tmp_path: Path) -> None:
    run = _copy(trained, tmp_path)
    config = tiny(tmp_path, method="cam", epochs=1, warmup_epochs=0, output_dir=str(run), resume="auto")
    with pytest.raises(ValueError, match="run is finished .* lr would apply to no epoch"):
        train(config.replace(lr=1e-4))
    assert train(config)["val"]["images"] == 16  # unchanged settings: a finished run stays finished


# ---------------------------------------------------------------- 11.10 consistent outputs after a kill
class _Killed(BaseException):
    """Stands for SIGKILL: nothing of the run catches it."""


def _metrics_rows(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "metrics.csv") as file:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(file)]


@pytest.mark.parametrize("victim, call", [("best.pt", 2), ("metrics.csv", 2), ("last.pt", 2), ("config.yaml", 3),
                                          ("final.json", 1)])
def test_run_killed_between_its_writes_resumes_to_the_uninterrupted_outputs(tmp_path: Path, monkeypatch,
                                                                             victim, call) -> None:
    import json

    import gainet.training.trainer as trainer_module
    from gainet.training.trainer import Trainer

    # every epoch is a new best, so both epochs write best.pt
    monkeypatch.setattr(Trainer, "_score", lambda self, metrics: float(len(self.history)))
    reference = tiny(tmp_path, method="gain", output_dir=str(tmp_path / "reference"))
    train(reference)

    calls = {"n": 0}
    for name in ("save_atomic", "write_text_atomic"):
        original = getattr(trainer_module, name)

        def killing(*args, _original=original, _name=name):
            path = args[1] if _name == "save_atomic" else args[0]
            if Path(path).name == victim:
                calls["n"] += 1
                if calls["n"] == call:
                    raise _Killed(victim)
            return _original(*args)

        monkeypatch.setattr(trainer_module, name, killing, raising=False)
    config = tiny(tmp_path, method="gain", output_dir=str(tmp_path / "killed"))
    with pytest.raises(_Killed):
        train(config)
    monkeypatch.undo()
    monkeypatch.setattr(Trainer, "_score", lambda self, metrics: float(len(self.history)))
    run = Path(config.output_dir)
    (run / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # what a kill inside torch.save leaves
    train(config.replace(resume="auto"))

    expected, actual = Path(reference.output_dir), run
    for name in ("last.pt", "best.pt"):
        want, got = load_checkpoint(expected / name), load_checkpoint(actual / name)
        assert got["epoch"] == want["epoch"] == 2, name
        for key, value in want["model"].items():
            assert torch.equal(got["model"][key], value), (name, key)
    assert _metrics_rows(actual) == _metrics_rows(expected)
    want, got = json.loads((expected / "final.json").read_text()), json.loads((actual / "final.json").read_text())
    assert got["epoch"] == 2 and got["val"] == want["val"]
    import yaml

    def settings(path: Path) -> dict:
        return {k: v for k, v in yaml.safe_load(path.read_text()).items() if k not in ("output_dir", "resume")}

    assert settings(actual / "config.yaml") == settings(expected / "config.yaml")
    assert not list(actual.glob(".*.tmp"))


def test_atomic_save_flushes_the_directory_entry(tmp_path: Path, monkeypatch) -> None:
    import stat

    import gainet.training.checkpoint as checkpoint

    synced: list[bool] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", recording_fsync)
    save_atomic({"model": {}, "config": {}}, tmp_path / "last.pt")
    assert synced == [False, True]  # the file's data, then the directory holding the rename


# ---------------------------------------------------------------- 11.11 one run per output directory
def test_second_run_into_a_locked_output_directory_ends_with_one_line_error(tmp_path: Path, capsys) -> None:
    from gainet.training.trainer import Trainer

    config = tiny(tmp_path, method="cam", epochs=1, warmup_epochs=0)
    first = Trainer(config)  # holds the directory until fit() ends
    before = _snapshot(Path(config.output_dir))
    argv = ["train", "--output-dir", config.output_dir, "--method", "cam", "--epochs", "1", "--train-images", "48",
            "--val-images", "16", "--image-size", "32", "--model-width", "8", "--batch-size", "16",
            "--threads", "1", "--no-progress", "--no-tensorboard"]
    assert main(argv) == 2
    error = _one_line_error(capsys)
    assert "another gainet run is writing to this output directory" in error and config.output_dir in error
    assert _snapshot(Path(config.output_dir)) == before
    first.fit()
    assert main(argv + ["--resume", "auto", "--epochs", "2"]) == 0  # free again once the first run ended


# ---------------------------------------------------------------- 11.9 logged L_e and box energy
def test_logged_loss_e_is_the_mean_over_steps_with_a_supervised_image(tmp_path: Path, monkeypatch) -> None:
    import csv

    from gainet.core import GAIN

    steps: list[tuple[float, bool]] = []
    original = GAIN.forward

    def recording(self, images, labels=None, masks=None, supervised=None, **kwargs):
        output = original(self, images, labels, masks, supervised, **kwargs)
        if masks is not None:  # after the warm-up
            steps.append((output.loss_e.item(), bool(supervised.any())))
        return output

    monkeypatch.setattr(GAIN, "forward", recording)
    # 2 supervised images of 48, 3 steps of 16: at least one step has none
    config = tiny(tmp_path, method="gain-ext", supervised_count=2)
    train(config)
    with open(Path(config.output_dir) / "metrics.csv") as file:
        logged = float(list(csv.DictReader(file))[1]["train/loss_e"])
    with_supervision = [value for value, supervised in steps if supervised]
    assert len(steps) == 3 and 1 <= len(with_supervision) < 3
    assert logged == pytest.approx(sum(with_supervision) / len(with_supervision), rel=1e-12)


def test_box_energy_counts_every_image_with_boxes_whatever_the_batch(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from gainet.evaluation.evaluate import evaluate_gain
    from gainet.training.data import build_datasets
    from gainet.training.trainer import build_gain

    config = tiny(tmp_path, method="gain")
    _, val_set = build_datasets(config)
    torch.manual_seed(0)
    gain = build_gain(config, len(val_set.classes), bool(val_set.multi_label)).eval()
    no_boxes = {1, 6}  # these images lose their boxes

    class Loader:
        def __init__(self, batch_size: int) -> None:
            self.dataset = val_set
            self.inner = DataLoader(val_set, batch_size=batch_size, shuffle=False)

        def __iter__(self):
            start = 0
            for batch in self.inner:
                size = batch["image"].shape[0]
                for i in range(size):
                    if start + i in no_boxes:
                        batch["has_boxes"][i] = False
                        batch["box_masks"][i] = 0
                start += size
                yield batch

    expected_sum, expected_count = 0.0, 0
    for index in range(len(val_set)):
        item = val_set[index]
        if index in no_boxes or not bool(item["has_masks"]) or not bool(item["has_boxes"]):
            continue
        _, pairs, maps = gain.label_attention(item["image"][None], item["labels"][None])
        valid = (item["segmentation"] != 255).double()
        for (_, c), attention in zip(pairs.tolist(), maps.double()):
            box = (item["box_masks"][c] > 0).double() * valid
            if box.sum() == 0:
                continue
            weights = attention * valid
            expected_sum += float((weights * box).sum() / weights.sum()) if weights.sum() > 0 else 0.0
            expected_count += 1
    assert expected_count > 0
    for batch_size in (1, 4, 16):
        metrics = evaluate_gain(gain, Loader(batch_size))
        assert metrics["box_energy"] == pytest.approx(expected_sum / expected_count, rel=1e-6), batch_size


# ---------------------------------------------------------------- 11.18 DDP timeout
def test_process_group_gets_the_configured_timeout(tmp_path: Path, monkeypatch) -> None:
    import datetime

    import torch.distributed as dist

    from gainet.training.distributed import DistributedContext

    seen: dict = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: seen.update(kwargs))
    DistributedContext(rank=1, local_rank=1, world_size=2).init(torch.device("cpu"), timeout=42.5)
    assert seen["timeout"] == datetime.timedelta(seconds=42.5) and seen["backend"] == "gloo"
    seen.clear()
    DistributedContext(rank=0, world_size=2).init(torch.device("cpu"))
    assert seen["timeout"] == datetime.timedelta(minutes=10)
    # the option reaches the trainer's process group, from the command line too
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    seen.clear()
    from gainet.training.trainer import Trainer

    class Stop(Exception):
        pass

    def stop(self, device, timeout=None):
        seen["timeout"] = timeout
        raise Stop

    monkeypatch.setattr(DistributedContext, "init", stop)
    with pytest.raises(Stop):
        Trainer(tiny(tmp_path, method="cam", dist_timeout=5.0))
    assert seen["timeout"] == 5.0
    from gainet.cli import build_parser

    assert build_parser().parse_args(["train", "--dist-timeout", "30"]).dist_timeout == 30.0


# ---------------------------------------------------------------- 11.21 progress bars on terminals only
def test_progress_bars_only_on_a_terminal_and_one_log_line_per_epoch(tmp_path: Path, monkeypatch, caplog) -> None:
    import logging
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    class Piped(io.StringIO):
        def isatty(self) -> bool:
            return False

    caplog.set_level(logging.INFO, logger="gainet.training.trainer")
    outputs = {}
    for name, stream in (("terminal", Terminal()), ("piped", Piped())):
        monkeypatch.setattr(sys, "stderr", stream)
        train(tiny(tmp_path, method="cam", progress=True, output_dir=str(tmp_path / name)))
        monkeypatch.undo()
        outputs[name] = stream.getvalue()
    assert "\r" in outputs["terminal"] and "epoch 1/2" in outputs["terminal"]
    assert outputs["piped"] == ""
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().startswith("epoch ")] == [
        "epoch 1", "epoch 2", "epoch 1", "epoch 2"]


# ---------------------------------------------------------------- 11.22 one vocabulary
def test_every_command_names_its_output_directory_and_progress_flag_alike(trained: Path, tmp_path: Path) -> None:
    import argparse

    from gainet.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        flags = {flag for action in command._actions for flag in action.option_strings}
        if flags & {"--output", "--output-dir"}:
            assert "--output-dir" in flags, name
        if name in ("train", "evaluate", "demo", "make-cams", "eval-cams", "pseudo-labels", "eval-seg", "bias-study"):
            assert "--no-progress" in flags, name
    # the old spelling still works; both reach the same option
    old = parser.parse_args(["evaluate", "--checkpoint", "x.pt", "--output", "a"])
    new = parser.parse_args(["evaluate", "--checkpoint", "x.pt", "--output-dir", "a", "--no-progress"])
    assert old.output == new.output == "a" and new.no_progress
    out = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(trained / "last.pt"), "--output-dir", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    assert (out / "metrics.json").is_file()


def test_refused_resume_names_the_recorded_config(trained: Path, tmp_path: Path) -> None:
    run = _copy(trained, tmp_path)
    config = tiny(tmp_path, method="cam", epochs=2, model_width=16, output_dir=str(run), resume="auto")
    with pytest.raises(ValueError, match=r"model_width=8 \(asked 16\).*--config .*config.yaml repeats its settings"):
        train(config)


def test_resume_repairs_a_run_left_stale_by_an_older_version(tmp_path: Path, monkeypatch) -> None:
    """Older gainet wrote last.pt before best.pt and no best_epoch/final: a kill in between left
    best.pt one epoch behind and, once resumed, a final.json without val."""
    import json

    from gainet.training.trainer import Trainer

    monkeypatch.setattr(Trainer, "_score", lambda self, metrics: float(len(self.history)))
    config = tiny(tmp_path, method="cam", keep_epoch_checkpoints=True)
    train(config)
    run = Path(config.output_dir)
    expected_final = json.loads((run / "final.json").read_text())
    state = load_checkpoint(run / "last.pt")
    state.pop("best_epoch", None), state.pop("final", None)
    state["best_score"] = state["history"][-1]["val/mAP"]  # what _score gives without the patch
    save_atomic(state, run / "last.pt")
    shutil.copy(run / "epoch-1.pt", run / "best.pt")
    (run / "final.json").unlink()
    train(config.replace(resume="auto"))
    assert load_checkpoint(run / "best.pt")["epoch"] == 2
    assert json.loads((run / "final.json").read_text())["val"]["mAP"] == expected_final["val"]["mAP"]


def test_resume_from_the_command_line_keeps_the_recorded_settings(trained: Path, tmp_path: Path, capsys) -> None:
    # The run's settings (tiny images, width 8, ...) are not repeated: --resume reads its config.yaml,
    # and the command line changes only what it names.
    run = _copy(trained, tmp_path)
    assert main(["train", "--output-dir", str(run), "--resume", "auto", "--epochs", "2", "--no-progress"]) == 0
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 2 and state["config"]["epochs"] == 2
    assert state["config"]["model_width"] == TINY["model_width"] and state["config"]["image_size"] == TINY["image_size"]
    # A named setting that differs from the checkpoint's is still refused in one line.
    capsys.readouterr()
    assert main(["train", "--output-dir", str(run), "--resume", "auto", "--epochs", "3", "--model-width", "4",
                 "--no-progress"]) == 2
    assert "model_width=8 (asked 4)" in capsys.readouterr().err


def test_photo_broken_mid_run_is_a_counted_skip_under_on_error_skip_else_one_line_error(tmp_path: Path, capsys) -> None:
    import json

    from conftest import save_image, write_lines

    root = tmp_path / "photos"
    write_lines(root / "classes.txt", ["cat", "dog"])
    rows = []
    for index in range(12):
        save_image(root / "images" / f"p{index}.jpg", 24, 32, seed=index)
        rows.append(f"p{index}.jpg,{'cat' if index % 2 else 'dog'},{'train' if index < 8 else 'val'}\n")
    (root / "labels.csv").write_text("image,labels,split\n" + "".join(rows))
    for name in ("p5.jpg", "p9.jpg"):  # one training photo, one validation photo: truncated JPEGs
        path = root / "images" / name
        path.write_bytes(path.read_bytes()[:200])
    common = dict(dataset="folder", data_root=str(root), image_size=16, model="small-cnn", model_width=4,
                  method="cam", epochs=2, warmup_epochs=0, batch_size=2, progress=False, tensorboard=False,
                  threads=1, num_workers=2)
    final = train(TrainConfig(**common, dataset_options={"on_error": "skip"}, output_dir=str(tmp_path / "skip")))
    record = json.loads((tmp_path / "skip" / "final.json").read_text())
    assert record["train_load_skipped"] == 2  # once per epoch, counted in the main process
    assert record["train_load_skipped_files"][0].startswith(str(root / "images" / "p5.jpg") + ": cannot read image")
    assert final["val"]["skipped"] == 1 and final["val"]["images"] == 3
    rows = _metrics_rows(tmp_path / "skip")
    assert [row["train/load_skipped"] for row in rows] == ["1.0", "1.0"]
    assert main(["train", "--dataset", "folder", "--data-root", str(root), "--image-size", "16", "--model",
                 "small-cnn", "--model-width", "4", "--method", "cam", "--epochs", "1", "--batch-size", "2",
                 "--num-workers", "2", "--no-progress", "--no-tensorboard", "--output-dir", str(tmp_path / "raise")]) != 0
    line = _one_line_error(capsys)
    assert "p5.jpg: cannot read image" in line or "p9.jpg: cannot read image" in line
