"""Issue 20: finished runs are never replaced silently, input sizes a model cannot take are
one-line errors, train-seg holds the output-directory lock, and models are described once."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gainet.cli import main
from gainet.training.config import TrainConfig

TRAIN_ARGS = ["--method", "cam", "--epochs", "1", "--warmup-epochs", "0", "--train-images", "16", "--val-images",
              "8", "--image-size", "16", "--model-width", "4", "--batch-size", "8", "--threads", "1",
              "--no-progress", "--no-tensorboard"]


def _one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


def test_train_into_a_finished_run_is_refused_and_overwrite_starts_afresh(tmp_path: Path, capsys) -> None:
    from gainet.training.trainer import Trainer

    run = tmp_path / "run"
    run.mkdir()
    (run / "final.json").write_text('{"val": {"mAP": 0.9}}')
    (run / "epoch-7.pt").write_bytes(b"old")
    (run / "notes.txt").write_text("mine")
    assert main(["train", "--output-dir", str(run), *TRAIN_ARGS]) == 2
    error = _one_line_error(capsys)
    assert str(run) in error and "--resume auto" in error and "--overwrite" in error
    assert (run / "final.json").read_text() == '{"val": {"mAP": 0.9}}'  # nothing replaced
    config = TrainConfig(dataset="parts", image_size=16, train_images=16, val_images=8, model_width=4, epochs=1,
                         method="cam", batch_size=8, progress=False, tensorboard=False, output_dir=str(run),
                         overwrite=True)
    trainer = Trainer(config)
    trainer.close()
    assert not (run / "final.json").exists() and not (run / "epoch-7.pt").exists()
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files go
    assert trainer.config.overwrite is False  # recorded as a plain run: --resume auto continues it
    with pytest.raises(ValueError, match="give one of them"):
        TrainConfig(overwrite=True, resume="auto")


def test_train_seg_refuses_a_finished_run_and_holds_the_lock(tmp_path: Path) -> None:
    from gainet.training.output_lock import OutputDirLock
    from gainet.wsss.config import SegConfig
    from gainet.wsss.seg_trainer import SegTrainer

    run = tmp_path / "seg"
    run.mkdir()
    (run / "last.pt").write_bytes(b"old")
    with pytest.raises(ValueError, match=r"holds a finished run \(last.pt\); continue it with --resume auto"):
        SegTrainer(SegConfig(labels_dir=str(tmp_path / "labels"), output_dir=str(run)))
    other = tmp_path / "seg2"
    with OutputDirLock(other):
        with pytest.raises(ValueError, match="another gainet run is writing to this output directory"):
            SegTrainer(SegConfig(labels_dir=str(tmp_path / "labels"), output_dir=str(other)))
    # the lock is dropped when construction fails (here: no pseudo labels to read)
    with pytest.raises((ValueError, FileNotFoundError)):
        SegTrainer(SegConfig(labels_dir=str(tmp_path / "labels"), output_dir=str(other)))
    with OutputDirLock(other):
        pass


def test_bias_study_refuses_a_run_trained_with_other_settings(tmp_path: Path) -> None:
    import yaml

    from gainet.studies.bias_study import _continue_or_refuse

    config = TrainConfig(dataset="bias", method="cam", epochs=3, output_dir=str(tmp_path / "cam"))
    Path(config.output_dir).mkdir()
    (Path(config.output_dir) / "last.pt").write_bytes(b"x")
    (Path(config.output_dir) / "config.yaml").write_text(yaml.safe_dump(config.replace(epochs=5).to_dict()))
    with pytest.raises(ValueError, match=r"other settings \(epochs=5, asked 3\); rerun with --overwrite"):
        _continue_or_refuse(config)
    assert _continue_or_refuse(config.replace(overwrite=True)).overwrite
    (Path(config.output_dir) / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    assert _continue_or_refuse(config).resume == "auto"  # an interrupted run with these settings continues


def test_explain_refuses_overlays_of_an_earlier_explain(tmp_path: Path) -> None:
    from gainet.evaluation.explain import Explainer, explain_images

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cat.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "cat_0.png").write_bytes(b"earlier")
    explainer = Explainer(gain=None, class_names=["0"], image_size=8)  # refused before the model is used
    with pytest.raises(ValueError, match=r"cat_0.png\); start afresh with --overwrite \(replaces them\)"):
        explain_images([tmp_path / "cat.png"], explainer, output_dir=out)


def test_input_size_too_small_is_one_line_error_naming_the_smallest(tmp_path: Path, capsys) -> None:
    from gainet.io.input_size import check_input_size, smallest_input_size
    from gainet.models import build_classifier

    model = build_classifier("efficientnet-lite0", 3)
    with pytest.raises(ValueError, match=r"--image-size 8 is too small for efficientnet-lite0: the smallest input "
                                         r"it takes is 32 x 32 pixels"):
        check_input_size(model, 8, "--image-size", "efficientnet-lite0")
    assert smallest_input_size(model) == 32
    check_input_size(model, 32)  # no error
    assert model.training  # the probes restore the mode
    assert main(["train", "--output-dir", str(tmp_path / "r"), "--model", "efficientnet-lite0",
                 "--pretrained", "none", *TRAIN_ARGS]) == 2
    error = _one_line_error(capsys)
    assert "--image-size 16 is too small for efficientnet-lite0" in error and "32 x 32" in error


def test_rebuilt_model_is_not_described_again(caplog) -> None:
    from gainet.training.trainer import build_gain

    config = TrainConfig(image_size=16, model_width=4)
    with caplog.at_level(logging.INFO, logger="gainet.core.backbone"):
        build_gain(config, 3, True)
        build_gain(config, 3, True, log_level=logging.DEBUG)  # the demo report's rebuild
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert sum("found automatically" in line for line in lines) == 1
    assert sum("Grad-CAM weights" in line for line in lines) == 1
