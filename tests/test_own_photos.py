"""A new user's own photos: per-dataset defaults, the label-prior advice, single-label VOC layout."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_image, save_index_png, write_lines, write_voc_xml
from torchmetrics.classification import MultilabelAveragePrecision

from gainet.cli import build_parser
from gainet.cli.train_eval import config_from_args
from gainet.data import DataError, build_dataset
from gainet.data.voc import VOCDataset
from gainet.evaluation.classification import ClassificationMeter
from gainet.training import defaults
from gainet.training.config import TrainConfig
from gainet.training.trainer import train


# ---------------------------------------------------------------------- defaults per data source
def _config(argv: list[str], yaml_text: str | None = None, tmp_path: Path | None = None) -> TrainConfig:
    if yaml_text is not None:
        (tmp_path / "c.yaml").write_text(yaml_text)
        argv = [*argv, "--config", str(tmp_path / "c.yaml")]
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_photo_datasets_default_to_the_offline_pretrained_backbone(monkeypatch) -> None:
    monkeypatch.setattr(defaults, "offline_weights_available", lambda: True)
    folder = _config(["--dataset", "folder", "--data-root", "x"])
    assert (folder.model, folder.pretrained, folder.image_size, folder.lr) == ("efficientnet-lite0", "imagenet", 128, 1e-3)
    voc = _config(["--dataset", "voc"])
    assert (voc.model, voc.pretrained, voc.image_size, voc.lr) == ("efficientnet-lite0", "imagenet", 224, 1e-3)
    worlds = _config(["--dataset", "parts"])
    plain = TrainConfig()
    assert (worlds.model, worlds.pretrained, worlds.image_size, worlds.lr) == (plain.model, None, plain.image_size, plain.lr)
    assert _config([]).model == "small-cnn"  # the default dataset is a built-in world
    # The method: the plain classifier on photos (GAIN lowered val mAP there, docs/own_photos.md);
    # the worlds keep the dataclass default; a method the user names wins.
    assert (folder.method, voc.method, worlds.method) == ("cam", "cam", plain.method)
    assert _config(["--dataset", "folder", "--method", "gain"]).method == "gain"


def test_options_the_user_sets_win_over_dataset_defaults(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(defaults, "offline_weights_available", lambda: True)
    given = _config(["--dataset", "folder", "--model", "resnet18", "--lr", "0.01", "--image-size", "96"])
    # a torchvision model gets no pretrained default: its weights would download
    assert (given.model, given.pretrained, given.image_size, given.lr) == ("resnet18", None, 96, 0.01)
    from_yaml = _config(["--lr", "0.02"], "dataset: folder\nmodel: small-cnn\nimage_size: 64\n", tmp_path)
    assert (from_yaml.model, from_yaml.pretrained, from_yaml.image_size, from_yaml.lr) == ("small-cnn", None, 64, 0.02)
    no_weights = _config(["--dataset", "folder", "--pretrained", "none"])
    assert (no_weights.model, no_weights.pretrained) == ("efficientnet-lite0", None)
    explicit_lite = _config(["--dataset", "voc", "--model", "efficientnet-lite0"])
    assert explicit_lite.pretrained == "imagenet"


def test_without_the_offline_weights_photos_fall_back_to_small_cnn(monkeypatch, caplog) -> None:
    monkeypatch.setattr(defaults, "offline_weights_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        config = _config(["--dataset", "folder"])
    assert (config.model, config.pretrained, config.image_size) == ("small-cnn", None, 128)
    assert "pip install 'gainet[all]'" in caplog.text


def test_checkpoint_configs_are_not_changed_by_the_defaults(monkeypatch) -> None:
    monkeypatch.setattr(defaults, "offline_weights_available", lambda: True)
    recorded = TrainConfig(dataset="folder", data_root="x").to_dict()  # every key present
    assert TrainConfig.from_dict(recorded) == TrainConfig(dataset="folder", data_root="x")


# ---------------------------------------------------------------------- label prior
def test_label_prior_matches_torchmetrics_on_constant_scores() -> None:
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.random((40, 5)) < np.array([0.5, 0.3, 0.1, 0.05, 0.0])).long()
    meter = ClassificationMeter(5, multi_label=True)
    meter.update(torch.zeros(40, 5), labels)
    # independent: torchmetrics' AP of tied scores (float32: 1e-6), classes without positives left out
    with pytest.warns(UserWarning, match="No positive samples"):
        ap = MultilabelAveragePrecision(5, average=None)(torch.zeros(40, 5), labels).double()
    present = labels.sum(0) > 0
    assert meter.label_prior() == pytest.approx(float(ap[present].mean()), abs=1e-6)
    assert meter.compute()["mAP"] == pytest.approx(meter.label_prior(), abs=1e-6)

    single = ClassificationMeter(3, multi_label=False)
    targets = torch.tensor([0, 2, 2, 2, 1, 2, 0, 2])
    single.update(torch.zeros(8, 3), targets)
    majority = torch.nn.functional.one_hot(torch.full((8,), 2), 3).float()
    assert single.label_prior() == pytest.approx(float((majority.argmax(1) == targets).double().mean()))


def test_advice_only_when_the_score_sits_at_the_prior() -> None:
    config = TrainConfig(dataset="folder", model="small-cnn")
    at_prior = defaults.label_prior_advice({"mAP": 0.16, "label_prior": 0.15}, config, 2)
    assert at_prior is not None and len(at_prior.splitlines()) == 1
    assert "0.160" in at_prior and "0.150" in at_prior and "--pretrained imagenet" in at_prior
    assert defaults.label_prior_advice({"mAP": 0.40, "label_prior": 0.15}, config, 2) is None
    tuned = defaults.label_prior_advice({"accuracy": 0.31, "label_prior": 0.30},
                                        config.replace(model="efficientnet-lite0", pretrained="imagenet"), 3)
    assert tuned is not None and "lower --lr" in tuned
    assert defaults.label_prior_advice({"mAP": math.nan, "label_prior": 0.1}, config, 2) is None
    # once: the first evaluation from epoch 2 on
    assert [e for e in range(1, 10) if defaults.is_first_check(e, 1)] == [2]
    assert [e for e in range(1, 10) if defaults.is_first_check(e, 3)] == [3]
    assert [e for e in range(1, 10) if defaults.is_first_check(e, 2)] == [2]


def test_training_that_learns_nothing_says_so(tmp_path: Path, caplog) -> None:
    # lr 1e-12: the untrained net's random ranking (lr must be > 0); 64 validation images keep its mAP near the prior
    config = TrainConfig(dataset="parts", image_size=32, train_images=32, val_images=64, model="small-cnn",
                         model_width=4, method="cam", epochs=2, warmup_epochs=0, batch_size=16, lr=1e-12,
                         progress=False, tensorboard=False, threads=1, output_dir=str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING, logger="gainet.training.defaults"):
        final = train(config)
    assert "label_prior" in final["val"]
    warnings = [r.getMessage() for r in caplog.records if "label prior" in r.getMessage()]
    assert len(warnings) == 1 and "after 2 epochs" in warnings[0]


# ---------------------------------------------------------------------- VOC layout: single-label
def _voc_folder(root: Path, two_classes_in_one: bool = False) -> Path:
    """A tiny VOC-layout folder with classes.txt (cat, dog): 4 images, one class each (by mask or
    XML); ``two_classes_in_one`` puts a dog beside the cat of the first image's XML."""
    write_lines(root / "classes.txt", ["background", "cat", "dog"])
    for n, cls in enumerate([1, 2, 1, 2]):
        save_image(root / "JPEGImages" / f"im{n}.jpg", 32, 32, seed=n)
        if n % 2:
            mask = np.zeros((32, 32), np.uint8)
            mask[8:24, 8:24] = cls
            mask[7, 7:25] = 255
            save_index_png(root / "SegmentationClass" / f"im{n}.png", mask)
        else:
            objects = [("cat" if cls == 1 else "dog", (5, 5, 20, 20))]
            if two_classes_in_one and n == 0:
                objects.append(("dog", (22, 22, 30, 30)))
            write_voc_xml(root / "Annotations" / f"im{n}.xml", 32, 32, objects)
    write_lines(root / "ImageSets" / "Segmentation" / "train.txt", ["im0", "im1", "im2", "im3"])
    write_lines(root / "ImageSets" / "Segmentation" / "val.txt", ["im1", "im3"])
    return root


def test_voc_layout_infers_single_label_and_can_be_overridden(tmp_path: Path) -> None:
    root = _voc_folder(tmp_path / "single")
    data = build_dataset("folder", "train", root=root, image_size=32)
    assert isinstance(data, VOCDataset) and data.classes == ["cat", "dog"]
    assert data.multi_label is False
    assert data[0]["labels"].tolist() == [1.0, 0.0]
    assert build_dataset("folder", "train", root=root, image_size=32, multi_label=True).multi_label is True

    several = _voc_folder(tmp_path / "multi", two_classes_in_one=True)
    assert build_dataset("folder", "val", root=several, image_size=32).multi_label is True  # any split decides
    forced = build_dataset("folder", "train", root=several, image_size=32, multi_label=False)
    with pytest.raises(DataError, match=r"im0.xml: shows 2 classes \(cat, dog\) but the dataset is single-label"):
        forced[0]


def test_single_label_voc_layout_trains_with_cross_entropy_and_top1(tmp_path: Path) -> None:
    root = _voc_folder(tmp_path / "single")
    config = TrainConfig(dataset="folder", data_root=str(root), image_size=32, model="small-cnn", model_width=4,
                         method="cam", epochs=1, warmup_epochs=0, batch_size=2, progress=False, tensorboard=False,
                         threads=1, output_dir=str(tmp_path / "run"))
    final = train(config)
    assert "accuracy" in final["val"] and "mAP" not in final["val"] and "confusion" in final["val"]
    from gainet.training.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "run" / "last.pt")["multi_label"] is False
