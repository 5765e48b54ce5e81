"""Shared test fixtures. Data fixtures: small on-disk datasets in VOC and folder layout,
built in tmp_path, and the real VOC sample folder shipped beside the repository."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gainet.data.voc import voc_palette  # the fixtures write real VOC palette PNGs

VOC_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc-samples"


def save_index_png(path: Path, array: np.ndarray) -> None:
    """Save a class-index map as a palette ("P") PNG with the VOC palette."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8))
    img.putpalette(voc_palette())  # turns the "L" image into a "P" (palette) one
    img.save(path)


def save_image(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Save a random RGB image (JPEG or PNG by suffix); return its uint8 (H, W, 3) array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return array


def write_voc_xml(path: Path, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> None:
    """Write a VOC annotation XML; boxes are VOC's 1-based inclusive (xmin, ymin, xmax, ymax)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"<annotation><filename>{path.stem}.jpg</filename>"]
    parts.append(f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>")
    for name, (x0, y0, x1, y1) in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    path.write_text("".join(parts))


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def build_voc_tree(voc_root: Path) -> dict:
    """A five-image VOC directory (flat layout) at ``voc_root``; returns what it holds.

    img_a: mask person (15) with a 255 border, XML person. img_b: mask cat (8) + dog (12),
    XML cat + dog. img_c: XML only (car, bus). img_d: mask only, bird (3). img_e: XML only,
    listed in Main/val.
    Segmentation/train: a, b; Segmentation/val: d; Main/train: a, b, c; Main/val: e.
    """
    expected = {}
    # img_a: 60 x 80, person block rows 10..39, cols 20..49, ignore border around it.
    save_image(voc_root / "JPEGImages" / "img_a.jpg", 60, 80, seed=1)
    seg = np.zeros((60, 80), np.uint8)
    seg[9:41, 19:51] = 255
    seg[10:40, 20:50] = 15
    save_index_png(voc_root / "SegmentationClass" / "img_a.png", seg)
    write_voc_xml(voc_root / "Annotations" / "img_a.xml", 80, 60, [("person", (21, 11, 50, 40))])
    expected["img_a"] = {"labels": ["person"], "mask": seg, "boxes": [(20, 10, 50, 40)]}
    # img_b: 50 x 70, cat left, dog right.
    save_image(voc_root / "JPEGImages" / "img_b.jpg", 50, 70, seed=2)
    seg = np.zeros((50, 70), np.uint8)
    seg[5:25, 5:30] = 8
    seg[20:45, 40:65] = 12
    save_index_png(voc_root / "SegmentationClass" / "img_b.png", seg)
    write_voc_xml(voc_root / "Annotations" / "img_b.xml", 70, 50, [("cat", (6, 6, 30, 25)), ("dog", (41, 21, 65, 45))])
    expected["img_b"] = {"labels": ["cat", "dog"], "mask": seg, "boxes": [(5, 5, 30, 25), (40, 20, 65, 45)]}
    # img_c: no mask, XML only.
    save_image(voc_root / "JPEGImages" / "img_c.jpg", 64, 64, seed=3)
    write_voc_xml(voc_root / "Annotations" / "img_c.xml", 64, 64, [("car", (1, 1, 20, 20)), ("bus", (30, 30, 64, 64))])
    expected["img_c"] = {"labels": ["bus", "car"], "mask": None, "boxes": [(0, 0, 20, 20), (29, 29, 64, 64)]}
    # img_d: mask only.
    save_image(voc_root / "JPEGImages" / "img_d.jpg", 40, 40, seed=4)
    seg = np.zeros((40, 40), np.uint8)
    seg[10:30, 10:30] = 3
    save_index_png(voc_root / "SegmentationClass" / "img_d.png", seg)
    expected["img_d"] = {"labels": ["bird"], "mask": seg, "boxes": []}
    # img_e: XML only, Main/val.
    save_image(voc_root / "JPEGImages" / "img_e.jpg", 32, 48, seed=5)
    write_voc_xml(voc_root / "Annotations" / "img_e.xml", 48, 32, [("boat", (3, 3, 40, 30))])
    expected["img_e"] = {"labels": ["boat"], "mask": None, "boxes": [(2, 2, 40, 30)]}
    write_lines(voc_root / "ImageSets" / "Segmentation" / "train.txt", ["img_a", "img_b"])
    write_lines(voc_root / "ImageSets" / "Segmentation" / "val.txt", ["img_d"])
    write_lines(voc_root / "ImageSets" / "Main" / "train.txt", ["img_a", "img_b", "img_c"])
    write_lines(voc_root / "ImageSets" / "Main" / "val.txt", ["img_e"])
    return expected


@pytest.fixture
def voc_tree(tmp_path: Path) -> tuple[Path, dict]:
    """(root, expected) of a flat-layout VOC directory built by ``build_voc_tree``."""
    root = tmp_path / "VOC2012"
    return root, build_voc_tree(root)


@pytest.fixture
def folder_tree(tmp_path: Path) -> tuple[Path, dict]:
    """(root, expected) of a folder-layout dataset: images/, labels.csv with a split column,
    classes.txt, masks/ for two images, COCO boxes.json for two images.

    Classes: cat (1), dog (2), bird (3).
    """
    root = tmp_path / "mydata"
    write_lines(root / "classes.txt", ["cat", "dog", "bird"])
    save_image(root / "images" / "p1.png", 40, 60, seed=11)
    save_image(root / "images" / "p2.jpg", 30, 30, seed=12)
    save_image(root / "images" / "p3.png", 50, 40, seed=13)
    save_image(root / "images" / "p4.jpg", 36, 36, seed=14)
    mask = np.zeros((40, 60), np.uint8)
    mask[5:20, 5:25] = 1
    mask[25:35, 30:55] = 3
    mask[0, :] = 255
    (root / "masks").mkdir()
    Image.fromarray(mask).save(root / "masks" / "p1.png")  # grayscale index PNG
    mask3 = np.zeros((50, 40), np.uint8)
    mask3[10:40, 10:30] = 2
    save_index_png(root / "masks" / "p3.png", mask3)
    (root / "labels.csv").write_text(
        "image,labels,split\n"
        "p1.png,cat;bird,train\n"
        "p2,dog,train\n"
        "p3.png,dog,val\n"
        "p4.jpg,cat dog,val\n"
    )
    coco = {
        "images": [{"id": 1, "file_name": "p1.png", "width": 60, "height": 40}, {"id": 7, "file_name": "p4.jpg", "width": 36, "height": 36}],
        "categories": [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}, {"id": 19, "name": "bird"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 17, "bbox": [5, 5, 20, 15]},
            {"id": 2, "image_id": 1, "category_id": 19, "bbox": [30, 25, 25, 10]},
            {"id": 3, "image_id": 7, "category_id": 17, "bbox": [0, 0, 10, 10]},
            {"id": 4, "image_id": 7, "category_id": 18, "bbox": [20, 20, 16, 16]},
        ],
    }
    (root / "boxes.json").write_text(json.dumps(coco))
    expected = {
        "p1": {"labels": ["cat", "bird"], "mask": mask, "boxes": [(5, 5, 25, 20), (30, 25, 55, 35)], "split": "train"},
        "p2": {"labels": ["dog"], "mask": None, "boxes": [], "split": "train"},
        "p3": {"labels": ["dog"], "mask": mask3, "boxes": [], "split": "val"},
        "p4": {"labels": ["cat", "dog"], "mask": None, "boxes": [(0, 0, 10, 10), (20, 20, 36, 36)], "split": "val"},
    }
    return root, expected


@pytest.fixture
def voc_samples() -> Path:
    """The real VOC sample folder beside the repository (skips when absent)."""
    if not (VOC_SAMPLES / "JPEGImages").is_dir():
        pytest.skip(f"real VOC samples not found at {VOC_SAMPLES}")
    return VOC_SAMPLES
