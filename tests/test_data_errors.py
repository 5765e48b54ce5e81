"""Bad input: one-line DataError naming the file, or skipped and counted under on_error="skip"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import pytest

from gainet.data import DataError, FolderDataset, VOCDataset, build_dataset

from conftest import save_image, save_index_png, write_lines, write_voc_xml


def _one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def _folder(root: Path, rows: str, classes=("cat", "dog")) -> Path:
    write_lines(root / "classes.txt", list(classes))
    for name in ("a", "b", "c"):
        save_image(root / "images" / f"{name}.png", 20, 30, seed=ord(name))
    (root / "labels.csv").write_text("image,labels\n" + rows)
    return root


def test_data_error_is_a_value_error_with_file_and_problem():
    err = DataError("x/y.png", "cannot read\n image")
    assert isinstance(err, ValueError) and str(err) == "x/y.png: cannot read image"
    assert err.file == "x/y.png" and err.problem == "cannot read image"


@pytest.mark.parametrize("payload", [b"not an image at all", "truncated"])
def test_corrupt_image_raises_on_load_and_is_skipped_when_validated(tmp_path, payload):
    root = _folder(tmp_path / "d", "a.png,cat\nb.png,dog\nc.png,cat\n")
    bad = root / "images" / "b.png"
    if payload == "truncated":
        bad.write_bytes(bad.read_bytes()[:60])
    else:
        bad.write_bytes(payload)
    lazy = FolderDataset(root, image_size=16)
    assert len(lazy) == 3
    with pytest.raises(DataError) as err:
        lazy[1]
    _one_line(err, str(bad), "cannot read image")
    with pytest.raises(DataError) as err:
        FolderDataset(root, validate=True)
    _one_line(err, str(bad))
    skipping = FolderDataset(root, validate=True, on_error="skip", image_size=16)
    assert len(skipping) == 2 and [s[0] for s in skipping.skipped] == [str(bad)]
    assert "cannot read image" in skipping.skipped[0][1]
    skipping[1]  # the remaining items load


def test_mask_of_wrong_size(tmp_path):
    root = _folder(tmp_path / "d", "a.png,cat\nb.png,dog\n")
    save_index_png(root / "masks" / "a.png", np.ones((10, 10), np.uint8))
    with pytest.raises(DataError) as err:
        FolderDataset(root)[0]
    _one_line(err, str(root / "masks" / "a.png"), "mask is 10x10 but its image is 30x20")
    data = FolderDataset(root, validate=True, on_error="skip")
    assert len(data) == 1 and len(data.skipped) == 1


def test_mask_with_unknown_class_id_and_rgb_mask(tmp_path):
    root = _folder(tmp_path / "d", "a.png,cat\nb.png,dog\nc.png,cat\n")
    seg = np.zeros((20, 30), np.uint8)
    seg[2:5, 2:5] = 9
    save_index_png(root / "masks" / "a.png", seg)
    with pytest.raises(DataError) as err:
        FolderDataset(root, validate=True)
    _one_line(err, "a.png", "unknown class id(s) 9", "valid: 1..2")
    save_image(root / "masks" / "b.png", 20, 30)  # an RGB image is no index mask
    data = FolderDataset(root, validate=True, on_error="skip")
    assert len(data) == 1 and len(data.skipped) == 2
    assert "palette or grayscale" in data.skipped[1][1]
    (root / "labels.csv").write_text("image,labels\na.png,cat\nb.png,dog\n")
    with pytest.raises(DataError) as err:
        FolderDataset(root, validate=True, on_error="skip")
    _one_line(err, "labels.csv", "no usable images; 2 skipped")


def test_unknown_class_name_in_labels_file(tmp_path):
    root = _folder(tmp_path / "d", "a.png,cat\nb.png,horse\nc.png,3\n")
    with pytest.raises(DataError) as err:
        FolderDataset(root)
    _one_line(err, str(root / "labels.csv"), "image b.png: unknown class 'horse'")
    data = FolderDataset(root, on_error="skip")
    assert len(data) == 1 and len(data.skipped) == 2
    assert "unknown class '3'" in data.skipped[1][1]  # id 3 is past classes.txt's 2 lines


def test_empty_label_set(tmp_path):
    root = _folder(tmp_path / "d", "a.png,cat\nb.png,\n")
    with pytest.raises(DataError) as err:
        FolderDataset(root)
    _one_line(err, "labels.csv", "image b.png: empty label set")
    # A VOC mask with only background / void has no label either.
    voc = tmp_path / "voc"
    save_image(voc / "JPEGImages" / "e.jpg", 20, 20)
    seg = np.zeros((20, 20), np.uint8)
    seg[0] = 255
    save_index_png(voc / "SegmentationClass" / "e.png", seg)
    write_lines(voc / "ImageSets" / "Segmentation" / "val.txt", ["e"])
    with pytest.raises(DataError) as err:
        VOCDataset(voc, "val")[0]
    _one_line(err, str(voc / "SegmentationClass" / "e.png"), "empty label set")


@pytest.mark.parametrize(
    "box, problem",
    [((5, 5, 60, 15), "lies outside the 30x20 image"), ((10, 5, 9, 15), "is degenerate"), ((40, 5, 50, 15), "outside")],
)
def test_bad_boxes_in_xml(tmp_path, box, problem):
    root = _folder(tmp_path / "d", "a.png,cat\nb.png,dog\n")
    write_voc_xml(root / "boxes" / "a.xml", 30, 20, [("cat", box)])
    with pytest.raises(DataError) as err:
        FolderDataset(root)[0]
    _one_line(err, str(root / "boxes" / "a.xml"), problem)
    data = FolderDataset(root, validate=True, on_error="skip")
    assert [Path(f).name for f, _ in data.skipped] == ["a.xml"]


def test_bad_boxes_in_coco_and_unknown_category(tmp_path):
    root = _folder(tmp_path / "d", "a.png,cat\nb.png,dog\n")
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "unicorn"}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [-5, 0, 10, 10]},
            {"image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 5]},
        ],
    }
    (root / "boxes.json").write_text(json.dumps(coco))
    with pytest.raises(DataError) as err:
        FolderDataset(root)
    _one_line(err, str(root / "boxes.json"), "unknown class 'unicorn'")
    data = FolderDataset(root, on_error="skip")
    assert len(data) == 1
    with pytest.raises(DataError) as err:
        data[0]
    _one_line(err, "boxes.json (image a.png)", "lies outside")


def test_unknown_class_in_voc_xml(voc_tree):
    root, _ = voc_tree
    write_voc_xml(root / "Annotations" / "img_c.xml", 64, 64, [("spaceship", (1, 1, 5, 5))])
    data = VOCDataset(root, "train", image_set="main")
    with pytest.raises(DataError) as err:
        data[2]
    _one_line(err, str(root / "Annotations" / "img_c.xml"), "unknown class 'spaceship'")


def test_missing_files_listed_in_splits(voc_tree, tmp_path):
    root, _ = voc_tree
    write_lines(root / "ImageSets" / "Segmentation" / "train.txt", ["img_a", "ghost", "img_b"])
    with pytest.raises(DataError) as err:
        VOCDataset(root, "train")
    _one_line(err, str(root / "JPEGImages" / "ghost.jpg"), "listed in", "train.txt", "not found")
    data = VOCDataset(root, "train", on_error="skip")
    assert len(data) == 2 and data.skipped[0][0] == str(root / "JPEGImages" / "ghost.jpg")
    folder = _folder(tmp_path / "d", "a.png,cat\nzz.png,dog\n")
    with pytest.raises(DataError) as err:
        FolderDataset(folder)
    _one_line(err, str(folder / "images" / "zz.png"), "listed in labels.csv but not found")
    write_lines(folder / "splits" / "train.txt", ["a", "nobody"])
    data = FolderDataset(folder, "train", on_error="skip")
    assert len(data) == 1 and "lists 'nobody'" in data.skipped[0][1]


def test_corrupt_xml_and_missing_split_file(voc_tree):
    root, _ = voc_tree
    (root / "Annotations" / "img_c.xml").write_text("<annotation><object>")
    data = VOCDataset(root, "train", image_set="main", validate=True, on_error="skip")
    assert len(data) == 2 and "cannot parse XML" in data.skipped[0][1]
    with pytest.raises(DataError) as err:
        VOCDataset(root, "trainval")
    _one_line(err, "trainval.txt", "split file not found")
    with pytest.raises(DataError) as err:
        VOCDataset(root.parent / "nowhere")
    _one_line(err, "no VOC layout here")


def test_bad_names_and_splits_give_one_line_value_errors(voc_tree):
    root, _ = voc_tree
    with pytest.raises(ValueError) as err:
        build_dataset("imagenet", "train")
    _one_line(err, "unknown dataset 'imagenet'", "parts, bias, garments, garments-bias, voc, folder")
    with pytest.raises(ValueError) as err:
        build_dataset("parts", "holdout")
    _one_line(err, "unknown split 'holdout'", "train, val, test")
    with pytest.raises(ValueError) as err:
        build_dataset("voc", "holdout", root=root)
    _one_line(err, "unknown split 'holdout'", "train, val, trainval, train_aug")
    with pytest.raises(ValueError) as err:
        build_dataset("voc", "train")
    _one_line(err, "needs root")
    with pytest.raises(ValueError, match="on_error"):
        build_dataset("voc", "train", root=root, on_error="ignore")


def test_data_error_survives_a_dataloader_worker(tmp_path):
    import torch

    root = _folder(tmp_path / "d", "a.png,cat\nb.png,dog\n")
    (root / "images" / "a.png").write_bytes(b"junk")
    loader = torch.utils.data.DataLoader(FolderDataset(root, image_size=16), batch_size=1, num_workers=1)
    with pytest.raises(DataError, match="a.png: cannot read image"):
        next(iter(loader))


def test_16_bit_images_are_scaled_to_8_bit_not_clipped_white(tmp_path):
    from PIL import Image

    from gainet.data.readers import read_rgb

    # A 16-bit grayscale PNG (Pillow mode I;16) spanning the whole 0..65535 range.
    values = np.linspace(0, 65535, 20 * 30).round().astype(np.uint16).reshape(20, 30)
    root = _folder(tmp_path / "d", "a.png,cat\nb.png,dog\n")
    Image.fromarray(values).save(root / "images" / "a.png")
    assert Image.open(root / "images" / "a.png").mode == "I;16"
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)  # v / 257, rounded
    rgb = read_rgb(root / "images" / "a.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (20, 30, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)
    # The dataset (training and explain read through read_rgb) sees the same picture, not white.
    raw = FolderDataset(root).load_raw(FolderDataset(root).records[0])
    np.testing.assert_array_equal(raw.image[..., 0], expected)
    assert raw.image.min() == 0 and raw.image.max() == 255
    # A float image outside [0, 1] has no agreed scale: one line naming the file.
    Image.fromarray(np.full((20, 30), 3.0, np.float32)).save(root / "images" / "b.tif")
    with pytest.raises(DataError) as err:
        read_rgb(root / "images" / "b.tif")
    _one_line(err, "b.tif", "outside [0, 1]")
    assert str(err.value).count("b.tif") == 1


def test_rgb_mask_message_names_the_file_once(tmp_path):
    root = _folder(tmp_path / "d", "a.png,cat\nb.png,dog\n")
    save_image(root / "masks" / "a.png", 20, 30)  # RGB: not an index mask
    with pytest.raises(DataError) as err:
        FolderDataset(root)[0]
    _one_line(err, "palette or grayscale index image, got mode RGB")
    assert str(err.value).count("a.png") == 1, str(err.value)
    assert err.value.file == str(root / "masks" / "a.png")


@pytest.mark.parametrize("text", ["<annotation></annotation>", "<annotation/>", "<annotation> </annotation>"])
def test_empty_annotation_has_no_objects_not_no_root(tmp_path, text):
    from gainet.data.readers import read_voc_xml

    path = tmp_path / "a.xml"
    path.write_text(text)
    assert read_voc_xml(path) == []
    # An image whose only annotation is empty has no label: said so, naming the XML.
    root = _folder(tmp_path / "d", "a.png,cat\nb.png,dog\n")
    (root / "labels.csv").write_text("image,labels\na.png,cat\n")
    (root / "boxes").mkdir()
    (root / "boxes" / "a.xml").write_text(text)
    assert FolderDataset(root)[0]["has_boxes"].item() is False
    (tmp_path / "b.xml").write_text("<notvoc><object/></notvoc>")
    with pytest.raises(DataError) as err:
        read_voc_xml(tmp_path / "b.xml")
    _one_line(err, "b.xml", "not a VOC annotation (root element <notvoc>")


def test_mask_disagreeing_with_the_labels_file_is_an_error_or_a_counted_skip(tmp_path):
    root = _folder(tmp_path / "d", "a.png,cat\nb.png,dog\nc.png,cat;dog\n")
    seg = np.zeros((20, 30), np.uint8)
    seg[2:8, 2:8] = 2  # dog, while labels.csv says cat
    save_index_png(root / "masks" / "a.png", seg)
    seg_b = np.zeros((20, 30), np.uint8)
    seg_b[2:8, 2:8] = 2
    save_index_png(root / "masks" / "b.png", seg_b)  # agrees: dog
    seg_c = np.zeros((20, 30), np.uint8)
    seg_c[2:8, 2:8] = 1
    save_index_png(root / "masks" / "c.png", seg_c)  # cat only, labels.csv says cat and dog
    lazy = FolderDataset(root, image_size=16)
    with pytest.raises(DataError) as err:
        lazy[0]
    _one_line(err, str(root / "masks" / "a.png"), "mask shows dog", "labels.csv lists cat")
    assert lazy[1]["labels"].tolist() == [0.0, 1.0]
    with pytest.raises(DataError) as err:
        lazy[2]
    _one_line(err, "c.png", "mask shows cat", "lists cat, dog")
    with pytest.raises(DataError):
        FolderDataset(root, validate=True)
    data = FolderDataset(root, validate=True, on_error="skip", image_size=16)
    assert len(data) == 1 and [Path(f).name for f, _ in data.skipped] == ["a.png", "c.png"]
    # 255 (ignore) and background pixels say nothing about the classes.
    seg[2:8, 2:8] = 1
    seg[0] = 255
    save_index_png(root / "masks" / "a.png", seg)
    assert FolderDataset(root, image_size=16)[0]["labels"].tolist() == [1.0, 0.0]


def test_skip_summary_counts_all_and_names_the_first_few(tmp_path):
    from gainet.data.errors import skip_line, skip_summary

    root = _folder(tmp_path / "d", "".join(f"{n}.png,cat\n" for n in ("a", "g1", "g2", "g3", "g4", "g5", "g6")))
    data = FolderDataset(root, on_error="skip")
    summary = skip_summary(data, limit=2)
    assert summary["count"] == 6 and [Path(i["file"]).name for i in summary["first"]] == ["g1.png", "g2.png"]
    line = skip_line("split 'train'", summary)
    assert "\n" not in line and line.startswith("split 'train': 6 files skipped (on_error=skip): ")
    assert line.endswith("; and 4 more") and "g1.png: listed in labels.csv but not found" in line
    assert skip_summary(object()) == {"count": 0, "first": []}


def _jpeg_folder(root: Path, count: int = 6) -> Path:
    write_lines(root / "classes.txt", ["cat", "dog"])
    rows = []
    for index in range(count):
        save_image(root / "images" / f"p{index}.jpg", 24, 32, seed=index)
        rows.append(f"p{index}.jpg,{'cat' if index % 2 else 'dog'}\n")
    (root / "labels.csv").write_text("image,labels\n" + "".join(rows))
    return root


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def test_jpeg_broken_after_setup_is_a_counted_stand_in_from_the_workers(tmp_path):
    from torch.utils.data import DataLoader

    root = _jpeg_folder(tmp_path / "d")
    skipping = FolderDataset(root, image_size=16, on_error="skip")  # construction checks existence only
    raising = FolderDataset(root, image_size=16)
    bad = root / "images" / "p3.jpg"
    _truncate(bad)  # the file breaks after the dataset was built, as in the middle of an epoch
    batches = list(DataLoader(skipping, batch_size=2, num_workers=2))
    # Every batch keeps its size; exactly one row stands in for the broken file, and says so.
    assert [len(b["image"]) for b in batches] == [2, 2, 2]
    flags = [flag for b in batches for flag in b["load_skipped"]]
    assert flags[3].startswith(f"{bad}: cannot read image") and not any(flags[:3] + flags[4:])
    assert torch.equal(batches[1]["index"], torch.tensor([2, 4]))  # p4 stood in for p3
    with pytest.raises(DataError) as err:  # rebuilt from the worker's traceback: still one line
        list(DataLoader(raising, batch_size=2, num_workers=2))
    _one_line(err, str(bad), "cannot read image")


def test_stand_ins_give_up_when_every_following_item_is_broken(tmp_path):
    root = _jpeg_folder(tmp_path / "d", count=3)
    data = FolderDataset(root, image_size=16, on_error="skip")
    for index in range(3):
        _truncate(root / "images" / f"p{index}.jpg")
    with pytest.raises(DataError) as err:
        data[0]
    _one_line(err, "p0.jpg", "and so did the next 2 items")


def test_evaluation_leaves_out_a_file_broken_mid_run_and_counts_it(tmp_path):
    from torch.utils.data import DataLoader

    from gainet.core import GAIN
    from gainet.evaluation.evaluate import evaluate_gain
    from gainet.models import build_classifier

    root = _jpeg_folder(tmp_path / "d")
    data = FolderDataset(root, image_size=16, on_error="skip")
    _truncate(root / "images" / "p0.jpg")
    gain = GAIN(build_classifier("small-cnn", 2, width=4), multi_label=False)
    metrics = evaluate_gain(gain, DataLoader(data, batch_size=4))
    assert metrics["images"] == 5 and metrics["skipped"] == 1  # p1 stood in for p0 and is scored once
    assert metrics["skipped_files"][0].startswith(str(root / "images" / "p0.jpg"))
