"""PASCAL VOC through torchvision: both layouts, labels / masks / boxes, splits, SBD, real samples."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from gainet.data import VOC_CLASSES, VOCDataset, build_dataset, check_sample

from conftest import save_image, save_index_png, write_lines


def _names(sample) -> list[str]:
    return [VOC_CLASSES[i] for i in sample["labels"].nonzero().flatten().tolist()]


def test_segmentation_split_labels_masks_and_boxes(voc_tree):
    root, expected = voc_tree
    data = VOCDataset(root, "train", image_size=80)
    assert [data.image_id(i) for i in range(len(data))] == ["img_a", "img_b"]
    assert data.multi_label and data.classes == list(VOC_CLASSES) and len(data.mean) == 3
    for i in range(len(data)):
        sample = data[i]
        check_sample(sample, 20)
        info = expected[data.image_id(i)]
        assert sorted(_names(sample)) == sorted(info["labels"])
        assert bool(sample["has_masks"]) and bool(sample["has_boxes"])
        for name in info["labels"]:
            c = VOC_CLASSES.index(name)
            assert sample["masks"][c].sum() > 0 and not (sample["masks"][c] * (1 - sample["box_masks"][c])).any()
    sample = data[0]
    # img_a keeps its 255 border in the segmentation but not in any mask.
    assert (sample["segmentation"] == 255).any()
    assert not sample["masks"][:, sample["segmentation"] == 255].any()
    boxes, labels = data.boxes(0)
    assert labels.tolist() == [VOC_CLASSES.index("person")]
    # 80x60 resized to 80x80: x unchanged, y scaled by 80/60.
    assert torch.allclose(boxes, torch.tensor([[20.0, 10 * 80 / 60, 50.0, 40 * 80 / 60]]))


def test_mask_values_match_the_png_at_native_size(voc_tree):
    root, expected = voc_tree
    data = VOCDataset(root, "val", image_size=40)
    sample = data[0]
    assert data.image_id(0) == "img_d" and _names(sample) == ["bird"]
    assert np.array_equal(sample["segmentation"].numpy(), expected["img_d"]["mask"])
    assert not bool(sample["has_boxes"]) and not sample["box_masks"].any()
    assert data.boxes(0)[0].shape == (0, 4)


def test_main_split_takes_labels_from_xml_when_no_mask(voc_tree):
    root, _ = voc_tree
    data = VOCDataset(root, "train", image_set="main", image_size=64)
    assert [data.image_id(i) for i in range(3)] == ["img_a", "img_b", "img_c"]
    assert [data.has_masks_at(i) for i in range(3)] == [True, True, False]
    sample = data[2]
    check_sample(sample, 20)
    assert sorted(_names(sample)) == ["bus", "car"]
    assert not bool(sample["has_masks"]) and (sample["segmentation"] == 255).all() and not sample["masks"].any()
    assert bool(sample["has_boxes"])
    boxes, labels = data.boxes(2)
    assert torch.allclose(boxes, torch.tensor([[0.0, 0.0, 20.0, 20.0], [29.0, 29.0, 64.0, 64.0]]))
    assert [VOC_CLASSES[i] for i in labels] == ["car", "bus"]
    car = sample["box_masks"][VOC_CLASSES.index("car")]
    assert car[:20, :20].all() and car.sum() == 400


def test_nested_torchvision_layout_loads_the_same(voc_tree, tmp_path):
    root, _ = voc_tree
    nested = tmp_path / "parent"
    shutil.copytree(root, nested / "VOCdevkit" / "VOC2012")
    flat, deep = VOCDataset(root, "train", image_size=32), VOCDataset(nested, "train", image_size=32)
    assert len(flat) == len(deep) == 2
    assert torch.equal(flat[1]["masks"], deep[1]["masks"]) and torch.equal(flat[1]["image"], deep[1]["image"])


def test_train_split_augments_and_batches(voc_tree):
    root, _ = voc_tree
    data = build_dataset("voc", "train", root=root, image_size=32)
    assert data.transform.train
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["segmentation"].shape == (2, 32, 32)
    assert not build_dataset("voc", "val", root=root, image_size=32).transform.train


def test_train_aug_from_sbd(voc_tree, tmp_path):
    scipy_io = pytest.importorskip("scipy.io", reason="SBD's .mat masks need scipy")
    root, _ = voc_tree
    sbd = tmp_path / "sbd"
    # SBD holds img_b (also VOC train), img_d (VOC val: excluded) and a new image sbd_x.
    for image_id, (h, w) in {"img_b": (50, 70), "img_d": (40, 40), "sbd_x": (30, 40)}.items():
        save_image(sbd / "img" / f"{image_id}.jpg", h, w, seed=len(image_id))
        seg = np.zeros((h, w), np.uint8)
        seg[5:20, 5:20] = 19  # train
        (sbd / "cls").mkdir(parents=True, exist_ok=True)
        scipy_io.savemat(sbd / "cls" / f"{image_id}.mat", {"GTcls": {"Segmentation": seg}})
    write_lines(sbd / "train.txt", ["img_b", "sbd_x"])
    write_lines(sbd / "val.txt", ["img_d"])
    data = VOCDataset(root, "train_aug", sbd_root=sbd, image_size=32)
    assert [data.image_id(i) for i in range(len(data))] == ["img_a", "img_b", "sbd_x"]
    assert sorted(_names(data[1])) == ["cat", "dog"]  # VOC's own mask wins over SBD's
    sample = data[2]
    check_sample(sample, 20)
    assert _names(sample) == ["train"] and bool(sample["has_masks"])


def test_train_aug_from_list_and_aug_masks(voc_tree):
    root, _ = voc_tree
    write_lines(root / "ImageSets" / "Segmentation" / "train_aug.txt", ["img_a", "img_c"])
    seg = np.zeros((64, 64), np.uint8)
    seg[:10, :10] = 7
    save_index_png(root / "SegmentationClassAug" / "img_c.png", seg)
    data = VOCDataset(root, "train_aug", image_size=32, on_error="skip")
    # img_a has no SegmentationClassAug mask but keeps its XML; img_c gets its aug mask.
    assert [data.image_id(i) for i in range(len(data))] == ["img_a", "img_c"]
    assert _names(data[1]) == ["car"] and bool(data[1]["has_masks"])
    assert not bool(data[0]["has_masks"]) and _names(data[0]) == ["person"]


def test_train_aug_without_sbd_is_explained(voc_tree):
    root, _ = voc_tree
    with pytest.raises(ValueError, match="train_aug.*sbd_root"):
        VOCDataset(root, "train_aug")


def test_real_voc_samples_load_with_readme_classes(voc_samples):
    data = build_dataset("voc", "val", root=voc_samples, image_size=96)
    assert len(data) == 14 and not data.transform.train
    wanted = {
        "vainf_008": ["horse"],
        "vainf_120": ["bicycle", "bottle"],
        "vainf_294": ["car", "person"],
        "vainf_582": ["motorbike", "person"],
    }
    ids = [data.image_id(i) for i in range(len(data))]
    for image_id, classes in wanted.items():
        sample = data[ids.index(image_id)]
        check_sample(sample, 20)
        assert _names(sample) == classes
        assert bool(sample["has_masks"]) and not bool(sample["has_boxes"])
        for name in classes:
            assert sample["masks"][VOC_CLASSES.index(name)].sum() > 0
        assert (sample["segmentation"] == 255).any()  # VOC's void boundaries survive resizing
