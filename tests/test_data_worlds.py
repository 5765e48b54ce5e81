"""The generated worlds: determinism, contract, label consistency, bias rates, body evidence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gainet.data import BiasWorld, PartsWorld, build_dataset, check_sample

FAST = {"stats_images": 8}


def test_same_seed_same_images_other_seed_other_images():
    a = PartsWorld("train", seed=3, num_images=20, **FAST)
    b = PartsWorld("train", seed=3, num_images=20, cache=False, **FAST)
    c = PartsWorld("train", seed=4, num_images=20, **FAST)
    for i in (0, 7, 19):
        sa, sb, sc = a[i], b[i], c[i]
        for key in ("image", "labels", "masks", "box_masks", "segmentation"):
            assert torch.equal(sa[key], sb[key]), key
        assert not torch.equal(sa["image"], sc["image"])
    assert a.mean == b.mean and a.std == b.std


def test_splits_differ_and_any_index_regenerates():
    train = BiasWorld("train", seed=0, num_images=10, **FAST)
    test = BiasWorld("test_biased", seed=0, num_images=10, **FAST)
    assert not np.array_equal(train.rendered(0).image, test.rendered(0).image)
    train.prerender()
    assert len(train._cache) == 10
    fresh = BiasWorld("train", seed=0, num_images=10, cache=False, **FAST)
    assert np.array_equal(fresh.rendered(9).image, train.render("train", 9).image)
    # Every split normalises with the train statistics.
    assert train.mean == test.mean


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_parts_samples_follow_contract(split):
    world = PartsWorld(split, num_images=12, **FAST)
    assert world.multi_label and len(world.classes) == 5
    for i in range(len(world)):
        sample = world[i]
        check_sample(sample, 5)
        assert sample["image"].shape == (3, 64, 64) and sample["index"] == i
        assert bool(sample["has_masks"]) and bool(sample["has_boxes"])
    assert world.image_id(3) == f"parts-{split}-s0-00003"


@pytest.mark.parametrize("split", list(BiasWorld.splits))
def test_bias_samples_follow_contract(split):
    world = BiasWorld(split, num_images=8, **FAST)
    assert not world.multi_label and world.classes == ["circle", "square", "triangle", "cross"]
    for i in range(len(world)):
        sample = world[i]
        check_sample(sample, 4)
        assert sample["labels"].sum() == (0 if split in BiasWorld.context_splits else 1)


def test_bias_context_split_is_context_without_object():
    world = BiasWorld("test_context", num_images=40, **FAST)
    contexts = [world.context(i) for i in range(len(world))]
    assert set(contexts) == {0, 1, 2, 3}  # uniform over the classes' contexts
    for i in range(len(world)):
        item, sample = world.rendered(i), world[i]
        assert item.labels == () and item.boxes.shape == (0, 4) and not item.segmentation.any()
        assert sample["labels"].sum() == 0 and sample["masks"].sum() == 0 and sample["box_masks"].sum() == 0
        # No object drawn: every pixel is the context's hue, within noise (an object differs in
        # brightness by 0.25-0.45, i.e. 64-115 grey levels).
        image = item.image.astype(np.float64)
        assert np.abs(image - np.median(image.reshape(-1, 3), axis=0)).max(axis=2).max() < 60


def test_parts_labels_agree_with_masks_segmentation_boxes_and_parts():
    world = PartsWorld("train", num_images=60, **FAST)
    counts = []
    for i in range(len(world)):
        sample, item = world[i], world.rendered(i)
        labels = set(sample["labels"].nonzero().flatten().tolist())
        counts.append(len(labels))
        seg_classes = set(sample["segmentation"].unique().tolist()) - {0}
        assert seg_classes == {c + 1 for c in labels}
        boxes, box_labels = world.boxes(i)
        assert set(box_labels.tolist()) == labels and len(boxes) == len(labels)
        masks, box_masks = sample["masks"], sample["box_masks"]
        assert set(masks.flatten(1).any(1).nonzero().flatten().tolist()) == labels
        assert not (masks * (1 - box_masks)).any(), "an object pixel lies outside its class's box"
        parts = world.part_masks(i)
        for c in labels:
            part_pixels, object_pixels = parts[c].sum().item(), masks[c].sum().item()
            assert part_pixels > 0 and not (parts[c] * (1 - masks[c])).any()
            # The part is small: a few percent of the visible object.
            assert 0.02 < part_pixels / object_pixels < 0.2
        assert np.array_equal(item.segmentation, sample["segmentation"].numpy())
    assert set(counts) == {1, 2}


def test_bias_context_matches_class_at_about_p():
    def match_rate(split: str, **options) -> float:
        world = BiasWorld(split, num_images=400, cache=False, **FAST, **options)
        return float(np.mean([world.context(i) == world.rendered(i).labels[0] for i in range(len(world))]))

    assert abs(match_rate("train") - 0.95) < 0.04
    assert abs(match_rate("test_biased", bias_p=0.7) - 0.7) < 0.08
    assert abs(match_rate("test_decorrelated") - 0.25) < 0.07
    assert abs(match_rate("train_unbiased") - 0.25) < 0.07


def test_bias_object_marked_by_mask_and_box():
    world = BiasWorld("test_decorrelated", num_images=20, **FAST)
    for i in range(len(world)):
        sample = world[i]
        label = int(sample["labels"].argmax())
        area = sample["masks"][label].sum().item()
        assert 0.01 * 64 * 64 < area < 0.25 * 64 * 64
        (x0, y0, x1, y1), = world.boxes(i)[0].tolist()
        ys, xs = sample["masks"][label].nonzero(as_tuple=True)
        assert (x0, y0, x1, y1) == (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1)


def _body_features(world: PartsWorld) -> tuple[np.ndarray, np.ndarray]:
    """Colour statistics and stripe orientation (doubled-angle structure tensor) of body pixels."""
    feats, labels = [], []
    for i in range(len(world)):
        item = world.rendered(i)
        (label,) = item.labels
        body = item.segmentation == label + 1
        pixels = item.image[body].astype(np.float64) / 255
        grey = item.image.astype(np.float64).mean(-1) / 255
        gy, gx = np.gradient(grey)
        inside = body & np.roll(body, 1, 0) & np.roll(body, -1, 0) & np.roll(body, 1, 1) & np.roll(body, -1, 1)
        jxx, jyy, jxy = (gx[inside] ** 2).sum(), (gy[inside] ** 2).sum(), (gx[inside] * gy[inside]).sum()
        norm = np.hypot(jxx - jyy, 2 * jxy) + 1e-12
        feats.append(np.concatenate([pixels.mean(0), pixels.std(0), [(jxx - jyy) / norm, 2 * jxy / norm]]))
        labels.append(label)
    return np.asarray(feats), np.asarray(labels)


def test_bodies_alone_carry_real_but_weaker_class_evidence():
    """Nearest class mean on the body's colour and stripe orientation, parts hidden: clearly
    above the 20% chance level, yet short of what the part alone gives (its colour is exact)."""
    options = dict(objects=(1, 1), hide_parts=True, cache=False, **FAST)
    x_train, y_train = _body_features(PartsWorld("train", num_images=250, **options))
    x_test, y_test = _body_features(PartsWorld("test", num_images=250, **options))
    scale = x_train.std(0) + 1e-9
    centres = np.stack([x_train[y_train == k].mean(0) for k in range(5)]) / scale
    predicted = np.argmin(((x_test[:, None, :] / scale - centres[None]) ** 2).sum(-1), axis=1)
    accuracy = (predicted == y_test).mean()
    assert 0.4 < accuracy < 0.95, accuracy


def test_world_options_are_checked():
    with pytest.raises(ValueError, match="unknown split 'test'.*valid: train, val, test_biased"):
        BiasWorld("test", **FAST)
    with pytest.raises(ValueError, match="image_size"):
        PartsWorld("train", image_size=512, **FAST)
    with pytest.raises(ValueError, match="num_classes"):
        BiasWorld("train", num_classes=9, **FAST)


def test_world_sizes_and_factory():
    world = build_dataset("parts", "val", image_size=96, num_images=5, num_classes=4, seed=2, **FAST)
    assert isinstance(world, PartsWorld) and len(world) == 5 and world.classes == ["class0", "class1", "class2", "class3"]
    check_sample(world[4], 4)
    assert world[4]["image"].shape == (3, 96, 96)
    assert len(build_dataset("bias", "train_unbiased", **FAST)) == 2000
    augmented = build_dataset("bias", "train", num_images=4, train_transforms=True, **FAST)
    check_sample(augmented[0], 4)


def test_default_collate_batches_world_samples():
    loader = torch.utils.data.DataLoader(PartsWorld("val", num_images=8, **FAST), batch_size=4)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["masks"].shape == (4, 5, 64, 64)
    assert batch["has_masks"].shape == (4,) and batch["index"].tolist() == [0, 1, 2, 3]
