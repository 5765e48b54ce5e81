"""Folder format: labels files (CSV / JSON), classes, masks, COCO / XML boxes, splits, VOC layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gainet.data import FolderDataset, VOCDataset, build_dataset, check_sample, load_folder

from conftest import build_voc_tree, save_image, write_lines, write_voc_xml


def _names(data, sample) -> list[str]:
    return sorted(data.classes[i] for i in sample["labels"].nonzero().flatten().tolist())


def test_csv_with_split_column_masks_and_coco_boxes(folder_tree):
    root, expected = folder_tree
    train = FolderDataset(root, "train", image_size=60, augment={"eval_resize": "letterbox"})
    val = FolderDataset(root, "val", image_size=60)
    everything = FolderDataset(root, None, image_size=60)
    assert train.classes == ["cat", "dog", "bird"] and train.multi_label
    assert [train.image_id(i) for i in range(len(train))] == ["p1", "p2"]
    assert [val.image_id(i) for i in range(len(val))] == ["p3", "p4"]
    assert len(everything) == 4
    for data in (train, val):
        for i in range(len(data)):
            sample = data[i]
            check_sample(sample, 3)
            info = expected[data.image_id(i)]
            assert _names(data, sample) == sorted(info["labels"])
            assert bool(sample["has_masks"]) == (info["mask"] is not None) == data.has_masks_at(i)
            assert bool(sample["has_boxes"]) == bool(info["boxes"]) == data.has_boxes_at(i)
    # p1 is 60x40, letterboxed into 60x60 with 10 rows of padding on top: native x, y + 10.
    sample = train[0]
    mask = expected["p1"]["mask"]
    assert np.array_equal(sample["segmentation"][10:50].numpy(), mask)
    assert (sample["segmentation"][:10] == 255).all()
    boxes, labels = train.boxes(0)
    assert labels.tolist() == [0, 2]
    assert torch.allclose(boxes, torch.tensor([[5.0, 15.0, 25.0, 30.0], [30.0, 35.0, 55.0, 45.0]]))
    cat = sample["box_masks"][0]
    assert cat[15:30, 5:25].all() and cat.sum() == 15 * 20


def test_json_dict_with_inferred_classes(tmp_path):
    root = tmp_path / "d"
    for name in ("a", "b", "c"):
        save_image(root / "images" / f"{name}.jpg", 20, 20)
    (root / "labels.json").write_text(json.dumps({"a.jpg": ["zebra", "ant"], "b": "ant", "c.jpg": "ant; moth"}))
    data = FolderDataset(root, image_size=16)
    assert data.classes == ["ant", "moth", "zebra"]
    assert [_names(data, data[i]) for i in range(3)] == [["ant", "zebra"], ["ant"], ["ant", "moth"]]
    assert not bool(data[0]["has_masks"]) and (data[0]["segmentation"] == 255).all()


def test_json_records_with_splits_and_numeric_ids(tmp_path):
    root = tmp_path / "d"
    write_lines(root / "classes.txt", ["background", "round", "square"])  # a background line is dropped
    for name in ("a", "b", "c"):
        save_image(root / "images" / f"{name}.png", 20, 20)
    records = [
        {"image": "a.png", "labels": [1], "split": "train"},
        {"image": "b.png", "labels": ["2", "round"], "split": "train"},
        {"image": "c.png", "labels": "square", "split": "test"},
    ]
    (root / "labels.json").write_text(json.dumps(records))
    data = FolderDataset(root, "train", image_size=16)
    assert data.classes == ["round", "square"]
    assert [_names(data, data[i]) for i in range(2)] == [["round"], ["round", "square"]]
    with pytest.raises(ValueError, match="unknown split 'val'.*train, test|unknown split 'val'.*test, train"):
        FolderDataset(root, "val")


def test_split_files_and_xml_box_folder(tmp_path):
    root = tmp_path / "d"
    write_lines(root / "classes.txt", ["car", "tree"])
    for name in ("x1", "x2", "x3"):
        save_image(root / "images" / f"{name}.jpg", 30, 40)
    (root / "labels.csv").write_text("image,labels\nx1.jpg,car tree\nx2.jpg,tree\nx3.jpg,car\n")
    write_lines(root / "splits" / "train.txt", ["x1", "x3.jpg"])
    write_voc_xml(root / "boxes" / "x1.xml", 40, 30, [("car", (1, 1, 10, 10)), ("tree", (20, 5, 40, 30))])
    data = FolderDataset(root, "train", image_size=40, augment={"eval_resize": "center_crop"})
    assert [data.image_id(i) for i in range(len(data))] == ["x1", "x3"]
    assert data.has_boxes_at(0) and not data.has_boxes_at(1)
    sample = data[0]
    check_sample(sample, 2)
    assert bool(sample["has_boxes"]) and sample["box_masks"][0].sum() > 0


def test_voc_layout_with_own_classes_loads_through_folder(tmp_path):
    root = tmp_path / "VOCmine"
    build_voc_tree(root)
    # Three classes of its own; the val split's only mask (img_d) uses id 3.
    write_lines(root / "classes.txt", ["aeroplane", "bicycle", "bird"])
    data = build_dataset("folder", "val", root=root, image_size=40)
    assert isinstance(data, VOCDataset) and data.classes == ["aeroplane", "bicycle", "bird"]
    sample = data[0]
    check_sample(sample, 3)
    assert _names(data, sample) == ["bird"]
    assert isinstance(load_folder(root, "val"), VOCDataset)


def test_build_dataset_folder_defaults(folder_tree):
    root, _ = folder_tree
    train = build_dataset("folder", "train", root=root, image_size=24)
    assert train.transform.train and len(train) == 2
    check_sample(train[0], 3)
    assert not build_dataset("folder", "val", root=root, image_size=24).transform.train


def test_single_label_folder_is_inferred(tmp_path):
    root = tmp_path / "d"
    for name in ("a", "b"):
        save_image(root / "images" / f"{name}.jpg", 20, 20)
    (root / "labels.csv").write_text("image,labels,split\na.jpg,ant,train\nb.jpg,moth,val\n")
    assert not FolderDataset(root, "train").multi_label
    assert FolderDataset(root, "train", multi_label=True).multi_label
    (root / "labels.csv").write_text("image,labels,split\na.jpg,ant,train\nb.jpg,moth;ant,val\n")
    assert FolderDataset(root, "train").multi_label  # the val entry decides for every split


def test_voc_layout_with_classes_file_from_a_relative_root(tmp_path, monkeypatch):
    # The classes.txt found in the folder was joined to the root a second time (vx/good/vx/good/classes.txt).
    build_voc_tree(tmp_path / "vx" / "good")
    write_lines(tmp_path / "vx" / "good" / "classes.txt", ["aeroplane", "bicycle", "bird"])
    monkeypatch.chdir(tmp_path)
    data = build_dataset("folder", "val", root="vx/good", image_size=40)
    assert isinstance(data, VOCDataset) and data.classes == ["aeroplane", "bicycle", "bird"]
    assert _names(data, data[0]) == ["bird"]
    # An explicit classes file is still relative to the dataset directory.
    write_lines(tmp_path / "vx" / "good" / "mine.txt", ["aeroplane", "bicycle", "bird", "boat"])
    assert len(load_folder("vx/good", "val", classes="mine.txt").classes) == 4


def test_large_jpeg_decodes_reduced_and_its_boxes_and_mask_follow(tmp_path):
    from PIL import Image

    from conftest import save_index_png
    from gainet.data import readers

    root = tmp_path / "big"
    write_lines(root / "classes.txt", ["cat", "dog"])
    height, width = 600, 800
    yy, xx = np.mgrid[0:height, 0:width]
    photo = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], -1).astype(np.uint8)
    (root / "images").mkdir(parents=True)
    Image.fromarray(photo).save(root / "images" / "a.jpg", quality=95)
    mask = np.zeros((height, width), np.uint8)
    mask[100:400, 200:600] = 1  # the cat, its box below
    mask[0:8, :] = 255  # an ignore strip
    save_index_png(root / "masks" / "a.png", mask)
    write_voc_xml(root / "boxes" / "a.xml", width, height, [("cat", (201, 101, 600, 400))])
    (root / "labels.csv").write_text("image,labels\na.jpg,cat\n")
    # 800x600 for a 64-px network: decoded at 1/4 (200x150, both sides >= 128), not 1/8 (100x75).
    assert readers.read_rgb(root / "images" / "a.jpg", min_side=128).shape == (150, 200, 3)
    assert readers.read_rgb(root / "images" / "a.jpg", min_side=400).shape == (600, 800, 3)  # under 2x: full
    reduced = FolderDataset(root, image_size=64)
    full = FolderDataset(root, image_size=64, reduce_decode=False)
    raw = reduced.load_raw(reduced.records[0], reduced.decode_side)
    assert raw.image.shape == (150, 200, 3) and raw.segmentation.shape == (150, 200)
    np.testing.assert_allclose(raw.boxes, [[50, 25, 150, 100]], atol=0.3)  # (200, 100, 600, 400) / 4
    assert (raw.segmentation[2:, :] == np.pad(np.ones((75, 100)), ((25, 50), (50, 50)))[2:]).all()
    assert (raw.segmentation[:2] == 255).all()
    a, b = reduced[0], full[0]
    for key in ("masks", "box_masks"):
        inter = (a[key] * b[key]).sum()
        union = ((a[key] + b[key]) > 0).sum()
        assert inter / union > 0.95, key
    assert (a["segmentation"] == 255).any() and a["load_skipped"] == ""
    assert (a["image"] - b["image"]).abs().mean() < 0.05  # the same picture, normalised
