"""The garments worlds on a few tiny garments written here in idx format (never the real files)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from gainet.data import DataError, GarmentsBiasWorld, GarmentsWorld, build_dataset, check_sample
from gainet.data.garments import read_idx

PER_CLASS = {"train": 6, "test": 3}  # photos per Fashion-MNIST class in each file


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: 0, 0, type 0x08 (ubyte), ndim; big-endian int32 dims; the bytes."""
    data = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def garment_photo(label: int, variant: int) -> np.ndarray:
    """uint8 (28, 28): a bright block whose width tells the class, on black."""
    photo = np.zeros((28, 28), dtype=np.uint8)
    half = 3 + label
    photo[4:24, 14 - half:14 + half] = 180 + 7 * variant
    return photo


def write_fashion(folder: Path, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for part, stem in (("train", "train"), ("test", "t10k")):
        labels = np.tile(np.arange(10), PER_CLASS[part])  # classes interleaved, as in the real files
        images = np.stack([garment_photo(int(k), i % 4) for i, k in enumerate(labels)])
        write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", labels)
    return folder


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fashion")
    write_fashion(root / "FashionMNIST" / "raw")  # torchvision's layout
    return root


def test_read_idx_plain_and_gz_and_bad_files(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        assert np.array_equal(read_idx(tmp_path / name), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "a-idx3-ubyte").read_bytes()[:-3])
    with pytest.raises(DataError, match="header says"):
        read_idx(tmp_path / "short")


def test_missing_files_name_both_ways_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        GarmentsWorld("train", root=tmp_path)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and str(tmp_path) in message
    assert "apt install dataset-fashion-mnist" in message and "download=true" in message


@pytest.mark.parametrize("split", list(GarmentsWorld.splits))
def test_garments_samples_follow_contract_and_masks_agree(fashion_root: Path, split: str) -> None:
    world = build_dataset("garments", split, root=fashion_root, image_size=40, num_images=12, stats_images=8)
    assert world.classes == ["T-shirt/top", "Pullover", "Coat", "Shirt", "Sandal", "Sneaker", "Ankle boot"]
    assert world.multi_label and world.image_size == 40
    for index in range(len(world)):
        sample = world[index]
        check_sample(sample, 7)
        item = world.rendered(index)
        present = sorted(set(np.unique(item.segmentation).tolist()) - {0})
        assert [k - 1 for k in present] == list(item.labels) == sample["labels"].nonzero()[:, 0].tolist()
        for box, label in zip(item.boxes, item.box_labels):  # a box holds its whole garment
            x0, y0, x1, y1 = (int(v) for v in box)
            assert (sample["box_masks"][label, y0:y1, x0:x1] == 1).all()
            assert sample["masks"][label].sum() <= (x1 - x0) * (y1 - y0)
        assert (sample["masks"].sum(0) <= 1).all()  # occlusion: one class per pixel


def test_garments_deterministic_by_seed_and_use_their_split_photos(fashion_root: Path) -> None:
    a = GarmentsWorld("train", root=fashion_root, image_size=32, num_images=4, stats_images=4)
    b = GarmentsWorld("train", root=fashion_root, image_size=32, num_images=4, stats_images=4)
    c = GarmentsWorld("train", root=fashion_root, image_size=32, num_images=4, stats_images=4, seed=1)
    assert all(np.array_equal(a.rendered(i).image, b.rendered(i).image) for i in range(4))
    assert not all(np.array_equal(a.rendered(i).image, c.rendered(i).image) for i in range(4))
    # photo pools: 5/6 of the training file for training, the rest for val, t10k for test
    images, pools = a._pools["train"]
    assert sum(p.size for p in pools) == 7 * 5 and all(p.max() < 50 for p in pools)
    assert all(p.min() >= 50 for p in a._pools["val"][1])


def test_garments_bias_splits_context_rates_and_context_only(fashion_root: Path) -> None:
    options = dict(root=fashion_root, image_size=32, stats_images=8)
    train = GarmentsBiasWorld("train", num_images=400, **options)
    matches = np.mean([train.context(i) == train.rendered(i).labels[0] for i in range(len(train))])
    assert abs(matches - 0.95) < 0.04  # p = 0.95 in training
    decorrelated = GarmentsBiasWorld("test_decorrelated", num_images=400, **options)
    rate = np.mean([decorrelated.context(i) == decorrelated.rendered(i).labels[0] for i in range(400)])
    assert abs(rate - 0.25) < 0.07  # uniform over 4 contexts
    for split in GarmentsBiasWorld.splits:
        world = GarmentsBiasWorld(split, num_images=6, **options)
        for index in range(6):
            sample = world[index]
            check_sample(sample, 4)
            if split in GarmentsBiasWorld.context_splits:  # no garment: no label, mask or box (as the bias world's)
                assert sample["labels"].sum() == 0
                assert not sample["has_masks"] and not sample["has_boxes"] and not world.has_masks_at(index)
                assert 0 <= world.context(index) < 4
            else:
                assert sample["labels"].sum() == 1
                assert sample["has_masks"] and sample["masks"][int(sample["labels"].argmax())].sum() > 0


def test_garments_options_are_checked(fashion_root: Path) -> None:
    with pytest.raises(ValueError, match="garment_classes"):
        GarmentsWorld("train", root=fashion_root, garment_classes=[0, 0])
    with pytest.raises(ValueError, match="objects"):
        GarmentsWorld("train", root=fashion_root, objects=(1, 9))
    with pytest.raises(ValueError, match="unknown split"):
        build_dataset("garments", "test_biased", root=fashion_root)


def test_trainer_and_evaluate_run_on_garments(fashion_root: Path, tmp_path: Path) -> None:
    from gainet.evaluation.jobs import evaluate_checkpoint
    from gainet.training.config import TrainConfig
    from gainet.training.trainer import train

    config = TrainConfig(method="cam", dataset="garments", data_root=str(fashion_root), image_size=32,
                         train_images=16, val_images=8, epochs=1, warmup_epochs=0, batch_size=8, model_width=8,
                         progress=False, tensorboard=False, output_dir=str(tmp_path / "run"),
                         dataset_options={"stats_images": 8})
    final = train(config)
    assert 0 <= final["val"]["mAP"] <= 1 and "agnostic_cam_miou" in final["val"]
    result = evaluate_checkpoint(tmp_path / "run" / "last.pt", splits=["test"], device="cpu")
    assert "| test (class-agnostic) |" in result["markdown"]


def test_download_only_when_asked(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets

    calls = []

    class FakeFashionMNIST:  # stands in for torchvision's class: "downloads" the tiny files
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            if download:
                write_fashion(Path(root) / "FashionMNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    with pytest.raises(DataError, match="not found"):
        GarmentsWorld("val", root=tmp_path, image_size=32, stats_images=4)
    assert calls == []  # nothing fetched without the flag
    world = build_dataset("garments", "val", root=tmp_path, image_size=32, num_images=2, stats_images=4,
                          download=True)
    assert calls == [(str(tmp_path), True)] and world.files == tmp_path / "FashionMNIST" / "raw"
    with pytest.raises(DataError, match="needs a root"):
        GarmentsWorld("val", download=True)
