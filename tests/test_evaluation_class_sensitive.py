"""Class-sensitive attention metrics (class-agnostic baseline, wrong-class overlap, part / body
coverage) against independent float64 computations on tiny hand-made maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from gainet.evaluation import RegionCoverageMeter, class_agnostic_maps
from gainet.evaluation.evaluate import agnostic_metrics, evaluate_gain, with_agnostic_rows

approx = pytest.approx


def test_class_agnostic_map_is_the_renormalised_mean_by_hand():
    maps = torch.tensor([[[[0.0, 0.5, 1.0]], [[1.0, 0.5, 0.2]]]])  # (1, 2, 1, 3)
    # mean 0.5, 0.5, 0.6 -> min-max: 0, 0, 1
    assert class_agnostic_maps(maps).tolist() == [[[0.0, 0.0, 1.0]]]
    flat = torch.full((1, 3, 2, 2), 0.3)  # constant mean: no information, the zero map
    assert class_agnostic_maps(flat).abs().max() == 0
    with pytest.raises(ValueError, match="B, C, H, W"):
        class_agnostic_maps(torch.zeros(2, 3, 4))


def test_region_coverage_by_hand_pools_pixels_and_respects_valid():
    meter = RegionCoverageMeter(threshold=0.5)
    maps = torch.tensor([[[0.9, 0.5, 0.2, 0.7]], [[0.6, 0.6, 0.0, 0.0]]])  # (2, 1, 4)
    region = torch.tensor([[[1.0, 1.0, 1.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]])
    valid = torch.tensor([[[True, True, False, True]], [[True, True, True, True]]])
    meter.update("a", maps, region, valid)
    # region pixels counted: map0 -> 0.9, 0.5 (0.2 invalid); map1 -> 0.6. Above 0.5 (strict): 0.9, 0.6
    meter.update("b", maps[:1], region[:1])  # 0.9 0.5 0.2 -> 1 of 3
    result = meter.compute()
    assert result["a"] == approx(2 / 3) and result["b"] == approx(1 / 3)
    empty = RegionCoverageMeter()
    empty.update("none", maps, torch.zeros_like(maps))
    assert math.isnan(empty.compute()["none"])


class _TinyWorld(Dataset):
    """Two 1x4 images, 3 classes, with part masks; image 0 has class 0, image 1 classes 1 and 2."""

    classes = ["a", "b", "c"]
    multi_label = True

    class transform:  # noqa: N801 - mimics JointTransform's flag
        train = False

    segmentation = torch.tensor([[[1, 1, 1, 0]], [[2, 2, 3, 255]]])
    parts = torch.zeros(2, 3, 1, 4)
    parts[0, 0, 0, 0] = 1  # image 0: part of class 0 at pixel 0
    parts[1, 1, 0, 1] = 1  # image 1: part of class 1 at pixel 1
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 1]])

    def __len__(self):
        return 2

    def __getitem__(self, i):
        seg = self.segmentation[i, 0][None]  # (1, 4) -> H=1, W=4
        masks = torch.stack([(seg == k + 1).float() for k in range(3)])
        return {"image": torch.zeros(3, 1, 4), "labels": self.labels[i], "masks": masks,
                "box_masks": masks.clone(), "has_masks": torch.tensor(True), "has_boxes": torch.tensor(True),
                "segmentation": seg.long(), "index": i}

    def part_masks(self, i):
        return self.parts[i]


# every class map of every image, (B, C, H, W) = (2, 3, 1, 4)
_MAPS = torch.tensor([
    [[[1.0, 0.8, 0.1, 0.0]], [[0.2, 0.9, 0.7, 0.3]], [[0.0, 0.0, 0.6, 1.0]]],
    [[[0.6, 0.7, 0.2, 0.1]], [[0.9, 0.4, 0.0, 0.0]], [[0.1, 0.2, 0.8, 0.5]]],
])


class _FixedMaps(torch.nn.Module):
    """Stands in for GAIN: ``label_attention`` returns the hand-made maps of the asked pairs."""

    def label_attention(self, images, labels):
        pairs = torch.nonzero(labels)
        scores = torch.tensor([[2.0, -1.0, -2.0], [-1.0, 1.0, 0.5]])
        return scores, pairs, _MAPS[pairs[:, 0], pairs[:, 1]]


def _reference() -> dict[str, float]:
    """The same metrics computed independently in float64 numpy."""
    maps = _MAPS.numpy().astype(np.float64)[:, :, 0]  # (2, 3, 4)
    seg = _TinyWorld.segmentation.numpy()[:, 0]
    parts = _TinyWorld.parts.numpy()[:, :, 0] > 0
    labels = _TinyWorld.labels.numpy() > 0
    valid = seg != 255
    mean = maps.mean(axis=1)
    agnostic = (mean - mean.min(1, keepdims=True)) / (mean.max(1, keepdims=True) - mean.min(1, keepdims=True))
    out = {}
    for prefix, pick in (("", lambda b, c: maps[b, c]), ("agnostic_", lambda b, c: agnostic[b])):
        hit = {"part": 0, "body": 0, "cov": 0, "above": 0, "wrong": 0}
        tot = {"part": 0, "body": 0, "cov": 0, "wrong": 0}
        for b in range(2):
            for c in range(3):
                m = pick(b, c) > 0.5
                obj = (seg[b] == c + 1) & valid[b]
                if labels[b, c]:
                    part, body = parts[b, c] & valid[b], obj & ~parts[b, c]
                    hit["part"] += (m & part).sum(); tot["part"] += part.sum()
                    hit["body"] += (m & body).sum(); tot["body"] += body.sum()
                    hit["cov"] += (m & obj).sum(); tot["cov"] += obj.sum(); hit["above"] += (m & valid[b]).sum()
                else:
                    objects = (seg[b] > 0) & valid[b]
                    hit["wrong"] += (m & objects).sum(); tot["wrong"] += objects.sum()
        out[prefix + "part_coverage"] = hit["part"] / tot["part"]
        out[prefix + "body_coverage"] = hit["body"] / tot["body"]
        out[prefix + "coverage"] = hit["cov"] / tot["cov"]
        out[prefix + "precision"] = hit["cov"] / hit["above"]
        out[prefix + "wrong_class_coverage"] = hit["wrong"] / tot["wrong"]
    return out


def test_evaluate_gain_class_sensitive_metrics_match_an_independent_computation():
    loader = DataLoader(_TinyWorld(), batch_size=2)
    metrics = evaluate_gain(_FixedMaps(), loader)
    expected = _reference()
    for key, value in expected.items():
        assert metrics[key] == approx(float(value), abs=1e-12), key
    assert metrics["wrong_class_coverage"] != metrics["agnostic_wrong_class_coverage"]
    assert "agnostic_cam_miou" in metrics and 0.0 <= metrics["agnostic_cam_miou"] <= 1.0
    plain = evaluate_gain(_FixedMaps(), loader, class_sensitive=False)
    assert not any(k.startswith("agnostic_") or k.startswith("part_") for k in plain)
    assert plain["cam_miou"] == approx(metrics["cam_miou"]) and plain["coverage"] == approx(metrics["coverage"])


def test_agnostic_rows_follow_their_row_with_plain_names():
    rows = [{"method": "cam", "mAP": 0.9, "cam_miou": 0.5, "agnostic_cam_miou": 0.6, "agnostic_coverage": 0.7}]
    assert agnostic_metrics(rows[0]) == {"cam_miou": 0.6, "coverage": 0.7}
    assert with_agnostic_rows(rows, "method") == [
        {"method": "cam", "mAP": 0.9, "cam_miou": 0.5},
        {"method": "cam (class-agnostic)", "cam_miou": 0.6, "coverage": 0.7},
    ]
