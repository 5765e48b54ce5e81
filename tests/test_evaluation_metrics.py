"""Evaluation metrics against hand computations on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from gainet.evaluation import (
    AttentionSweep,
    ClassificationMeter,
    ConfusionMatrix,
    CoverageMeter,
    confusion_matrix,
    energy_in_boxes,
    miou_from_confusion,
    pair_masks,
    pointing_hits,
    predict_segmentation,
    sweep_confusion_matrices,
)

approx = pytest.approx


# ------------------------------------------------------------------ classification


def test_multilabel_map_f1_accuracy_by_hand():
    # logits (positive <=> probability > 0.5); class 2 never occurs
    scores = torch.tensor([[2.0, 0.5, -1.0], [-1.0, 0.8, -2.0], [1.0, 0.1, -0.5]])
    labels = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 0]])
    meter = ClassificationMeter(3, multi_label=True)
    meter.update(scores[:2], labels[:2])  # two batches: state must accumulate
    meter.update(scores[2:], labels[2:])
    result = meter.compute()
    # class 0: positives ranked 1st and 2nd -> AP 1
    # class 1: ranking 0.8 (neg), 0.5 (pos), 0.1 (pos) -> AP = (1/2 + 2/3) / 2 = 7/12
    # class 2: no positive -> undefined, left out of the mean
    assert result["ap_per_class"][0] == approx(1.0)
    assert result["ap_per_class"][1] == approx(7 / 12)
    assert math.isnan(result["ap_per_class"][2])
    assert result["mAP"] == approx((1 + 7 / 12) / 2)
    # decisions: [1,1,0], [0,1,0], [1,1,0]
    # class 0: tp 2 fp 0 fn 0 tn 1; class 1: tp 2 fp 1 fn 0 tn 0; class 2: tn 3
    assert result["f1_per_class"][0] == approx(1.0)
    assert result["f1_per_class"][1] == approx(4 / 5)
    assert math.isnan(result["f1_per_class"][2])
    assert result["f1_macro"] == approx(0.9)
    assert result["f1_micro"] == approx(2 * 4 / (2 * 4 + 1 + 0))
    assert result["accuracy"] == approx(8 / 9)
    assert result["accuracy_per_class"] == approx([1.0, 2 / 3, 1.0])
    assert result["exact_match"] == approx(2 / 3)
    assert result["num_samples"] == 3


def test_single_label_accuracy_and_confusion_by_hand():
    scores = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 2.0, 5.0], [1.0, 0.0, 0.5]])
    targets = torch.tensor([0, 2, 2, 1])  # predictions: 0, 1, 2, 0
    meter = ClassificationMeter(3, multi_label=False)
    meter.update(scores[:2], torch.nn.functional.one_hot(targets[:2], 3))  # one-hot labels
    meter.update(scores[2:], targets[2:])  # index labels
    result = meter.compute()
    assert result["accuracy"] == approx(2 / 4)
    assert result["confusion"] == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]
    assert result["accuracy_per_class"] == approx([1.0, 0.0, 0.5])
    assert result["balanced_accuracy"] == approx(0.5)


def test_classification_meter_rejects_bad_shapes_and_empty_compute():
    meter = ClassificationMeter(3)
    with pytest.raises(RuntimeError):
        meter.compute()
    with pytest.raises(ValueError):
        meter.update(torch.zeros(2, 4), torch.zeros(2, 4))


# ------------------------------------------------------------------ segmentation


def test_confusion_matrix_iou_and_pixel_accuracy_by_hand():
    target = torch.tensor([[[0, 0, 1], [1, 255, 2]], [[0, 1, 1], [255, 0, 0]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 1]], [[0, 1, 0], [3, 0, 0]]])
    # counted pixels (target, pred): (0,0) (0,1) (1,1) (1,1) (2,1) | (0,0) (1,1) (1,0) (0,0) (0,0)
    expected = torch.tensor([[4, 1, 0, 0], [1, 3, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(confusion_matrix(pred, target, 4), expected)

    meter = ConfusionMatrix(4)
    meter.update(pred[:1], target[:1])
    meter.update(pred[1:], target[1:])
    result = meter.compute()
    assert result["confusion"] == expected.tolist()
    # IoU: class 0: 4 / (5 + 5 - 4) = 4/6; class 1: 3 / (4 + 5 - 3) = 3/6; class 2: 0 / 1 = 0;
    # class 3: absent from target and counted predictions -> NaN, out of the mean
    assert result["iou_per_class"][:3] == approx([4 / 6, 3 / 6, 0.0])
    assert math.isnan(result["iou_per_class"][3])
    assert result["miou"] == approx((4 / 6 + 3 / 6 + 0.0) / 3)
    assert result["pixel_accuracy"] == approx(7 / 10)


def test_miou_from_confusion_and_label_checks():
    miou, per_class = miou_from_confusion(torch.tensor([[2, 0], [0, 0]]))
    assert miou == approx(1.0) and per_class[0] == approx(1.0) and math.isnan(per_class[1])
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 3)


# ------------------------------------------------------------------ attention sweep


def test_predict_segmentation_argmax_over_ground_truth_maps():
    maps = torch.tensor([[[[0.9, 0.2, 0.6, 0.1]], [[0.3, 0.7, 0.6, 0.05]]]])  # (1, 2, 1, 4)
    both = predict_segmentation(maps, torch.tensor([[1, 1]]), 0.5)
    # pixel 2: tie between the classes -> the first; pixel 3: every map <= t -> background
    assert both.tolist() == [[[1, 2, 1, 0]]]
    only_first = predict_segmentation(maps, torch.tensor([[1, 0]]), 0.5)
    assert only_first.tolist() == [[[1, 0, 1, 0]]]  # class 2 is not a label: never predicted
    at_map_value = predict_segmentation(maps, torch.tensor([[1, 1]]), 0.6)
    assert at_map_value.tolist() == [[[1, 2, 0, 0]]]  # map == t is background


def test_sweep_picks_the_hand_computed_best_threshold():
    segmentation = torch.tensor([[[1, 1, 1, 1, 0, 0, 0, 0, 0, 0]]])
    maps = torch.tensor([[[[0.9, 0.8, 0.7, 0.45, 0.6, 0.3, 0.1, 0.0, 0.0, 0.0]]]])
    sweep = AttentionSweep(1, thresholds=[0.2, 0.4, 0.5, 0.65])
    sweep.update(maps, torch.tensor([[1]]), segmentation)
    result = sweep.compute()
    # t=0.2: fg = 0..5 -> IoU cls 4/6, bg 4/6;  t=0.4: fg = 0..4 -> cls 4/5, bg 5/6
    # t=0.5: fg = 0,1,2,4 -> cls 3/5, bg 5/7;   t=0.65: fg = 0..2 -> cls 3/4, bg 6/7
    expected = [(4 / 6 + 4 / 6) / 2, (4 / 5 + 5 / 6) / 2, (3 / 5 + 5 / 7) / 2, (3 / 4 + 6 / 7) / 2]
    assert [t for t, _ in result["curve"]] == approx([0.2, 0.4, 0.5, 0.65])
    assert [m for _, m in result["curve"]] == approx(expected)
    assert result["best_threshold"] == approx(0.4)
    assert result["best_miou"] == approx((4 / 5 + 5 / 6) / 2)
    assert result["per_class_iou"] == approx([5 / 6, 4 / 5])
    assert result["confusion"] == [[5, 1], [0, 4]]


def _reference_sweep(maps, labels, segmentation, thresholds, num_labels):
    """Per threshold and image: stack [t, maps of the ground-truth classes], argmax, count pairs."""
    out = torch.zeros(len(thresholds), num_labels, num_labels, dtype=torch.long)
    for ti, t in enumerate(thresholds):
        for b in range(maps.shape[0]):
            classes = [c for c in range(maps.shape[1]) if labels[b, c] > 0]
            stack = torch.stack([torch.full(maps.shape[2:], float(t), dtype=torch.float64)]
                                + [maps[b, c].double() for c in classes])
            winner = stack.argmax(0)
            lookup = torch.tensor([0] + [c + 1 for c in classes])
            pred = lookup[winner]
            for y, p in zip(segmentation[b].flatten().tolist(), pred.flatten().tolist()):
                if y != 255:
                    out[ti, y, p] += 1
    return out


def test_sweep_matches_a_naive_per_threshold_argmax():
    generator = torch.Generator().manual_seed(0)
    # values on a 1/4 grid so that maps hit the thresholds exactly (ties to background)
    maps = torch.randint(0, 5, (3, 3, 6, 7), generator=generator).float() / 4
    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    segmentation = torch.randint(0, 4, (3, 6, 7), generator=generator)
    segmentation[0, 0, :3] = 255
    thresholds = [0.0, 0.25, 0.5, 0.75, 0.9]
    got = sweep_confusion_matrices(maps, labels, segmentation, thresholds)
    assert torch.equal(got, _reference_sweep(maps, labels, segmentation, thresholds, 4))


def test_sweep_ignores_255_pixels():
    segmentation = torch.tensor([[[1, 1, 0, 255, 255]]])
    maps = torch.tensor([[[[1.0, 1.0, 0.0, 1.0, 0.0]]]])  # wrong on both ignored pixels
    sweep = AttentionSweep(1, thresholds=[0.5])
    sweep.update(maps, torch.tensor([[1]]), segmentation)
    result = sweep.compute()
    assert result["confusion"] == [[1, 0], [0, 2]]
    assert result["best_miou"] == approx(1.0)


def _two_objects():
    """Two 4x4 images; image 0 has class 0 (label 1), image 1 classes 0 and 1 (labels 1, 2)."""
    segmentation = torch.zeros(2, 4, 4, dtype=torch.long)
    segmentation[0, 1:3, 1:3] = 1
    segmentation[1, 0:2, 0:2] = 1
    segmentation[1, 2:4, 2:4] = 2
    segmentation[1, 3, 0] = 255
    labels = torch.tensor([[1, 0], [1, 1]])
    return segmentation, labels


def test_perfect_maps_give_miou_one_and_full_coverage():
    segmentation, labels = _two_objects()
    maps = torch.stack([(segmentation == c + 1).float() for c in range(2)], dim=1) * labels[:, :, None, None]
    sweep = AttentionSweep(2)
    sweep.update(maps, labels, segmentation)
    result = sweep.compute()
    assert result["best_miou"] == approx(1.0)
    assert all(miou == approx(1.0) for _, miou in result["curve"])

    pairs = torch.nonzero(labels)
    object_masks, valid = pair_masks(segmentation, pairs)
    pair_maps = maps[pairs[:, 0], pairs[:, 1]]
    meter = CoverageMeter()
    meter.update(pair_maps, object_masks, valid, box_masks=object_masks)
    scores = meter.compute()
    for key in ("coverage", "precision", "iou", "pointing", "box_energy"):
        assert scores[key] == approx(1.0), key
    assert scores["num_maps"] == 3


def test_empty_maps_give_zero_foreground_iou_and_coverage():
    segmentation, labels = _two_objects()
    maps = torch.zeros(2, 2, 4, 4)
    sweep = AttentionSweep(2)
    sweep.update(maps, labels, segmentation)
    result = sweep.compute()
    assert result["per_class_iou"][1] == 0.0 and result["per_class_iou"][2] == 0.0
    background = (segmentation == 0).sum().item()
    assert result["per_class_iou"][0] == approx(background / (segmentation != 255).sum().item())

    pairs = torch.nonzero(labels)
    object_masks, valid = pair_masks(segmentation, pairs)
    meter = CoverageMeter()
    meter.update(torch.zeros(3, 4, 4), object_masks, valid, box_masks=object_masks)
    scores = meter.compute()
    assert scores["coverage"] == 0.0 and scores["iou"] == 0.0
    assert math.isnan(scores["precision"])  # no pixel above the threshold: undefined
    assert scores["pointing"] == 0.0  # an empty map points nowhere
    assert scores["box_energy"] == 0.0


def test_pair_masks_by_hand():
    segmentation = torch.tensor([[[0, 1, 2], [255, 2, 2]]])
    masks, valid = pair_masks(segmentation, torch.tensor([[0, 1], [0, 0]]))
    assert masks.tolist() == [[[0, 0, 1], [0, 1, 1]], [[0, 1, 0], [0, 0, 0]]]
    assert valid.tolist() == [[[True, True, True], [False, True, True]]] * 2


# ------------------------------------------------------------------ coverage / pointing / energy


def _coverage_example():
    maps = torch.tensor([
        [[0.9, 0.6, 0.2], [0.1, 0.7, 0.0]],
        [[0.3, 0.5, 0.4], [0.6, 0.2, 0.95]],
    ])
    masks = torch.tensor([
        [[1, 1, 0], [0, 0, 0]],
        [[1, 1, 1], [0, 0, 1]],
    ]).float()
    valid = torch.ones(2, 2, 3, dtype=torch.bool)
    valid[1, 1, 2] = False  # the 0.95 pixel of map 1 is not counted
    boxes = torch.tensor([
        [[1, 1, 1], [0, 0, 0]],
        [[1, 1, 0], [0, 0, 0]],
    ]).float()
    return maps, masks, valid, boxes


def test_coverage_precision_iou_pointing_energy_by_hand():
    maps, masks, valid, boxes = _coverage_example()
    meter = CoverageMeter(threshold=0.5, curve_thresholds=[0.25, 0.5])
    meter.update(maps[:1], masks[:1], valid[:1], box_masks=boxes[:1])
    meter.update(maps[1:], masks[1:], valid[1:], box_masks=boxes[1:])
    result = meter.compute()
    # t=0.5 (strict): map 0 above at (0,0) (0,1) (1,1): TP 2, FP 1, FN 0
    #                 map 1 above (valid) at (1,0): TP 0, FP 1, FN 3   -> TP 2, FP 2, FN 3
    assert result["coverage"] == approx(2 / 5)
    assert result["precision"] == approx(2 / 4)
    assert result["iou"] == approx(2 / 7)
    # pointing: map 0 peaks at (0,0), on the object; map 1's valid peak is (1,0), off the object
    assert result["pointing"] == approx(1 / 2)
    # energy: map 0: (0.9 + 0.6 + 0.2) / 2.5; map 1 (valid pixels): (0.3 + 0.5) / 2.0
    assert result["box_energy"] == approx((1.7 / 2.5 + 0.8 / 2.0) / 2)
    # t=0.25: map 0 as before (TP 2, FP 1); map 1: TP 3, FP 1, FN 0 -> TP 5, FP 2, FN 0
    low = result["curve"][0]
    assert low["threshold"] == approx(0.25)
    assert (low["coverage"], low["precision"], low["iou"]) == approx((1.0, 5 / 7, 5 / 7))
    assert result["curve"][1]["coverage"] == approx(result["coverage"])


def test_pointing_and_energy_functions_respect_valid_pixels():
    maps, masks, valid, boxes = _coverage_example()
    hit, counted = pointing_hits(maps, masks)
    assert hit.tolist() == [True, True] and counted.tolist() == [True, True]  # 0.95 lies on the object
    hit, counted = pointing_hits(maps, masks, valid)
    assert hit.tolist() == [True, False]
    energy, counted = energy_in_boxes(maps, boxes)
    assert energy.tolist() == approx([1.7 / 2.5, 0.8 / 2.95])
    no_object = torch.zeros(1, 2, 3)
    hit, counted = pointing_hits(maps[:1], no_object)
    assert counted.tolist() == [False] and hit.tolist() == [False]


# ------------------------------------------------------------------ VOC devkit average precision


def _voc_example():
    # class 0: ranking pos, neg, neg, pos, pos (3 positives): precision 1, 1/2, 1/3, 2/4, 3/5 at
    # recall 1/3, 1/3, 1/3, 2/3, 1; it rises again at the end, where the definitions part.
    # class 1: a tie at 0.5 between a negative (listed first) and the only positive.
    # class 2: no positive.
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.5, 0.2], [0.7, 0.4, 0.3], [0.6, 0.3, 0.4], [0.5, 0.2, 0.5]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0]])
    return scores, targets


def test_voc_all_point_ap_by_hand_in_float64():
    from gainet.evaluation.classification import voc_average_precision

    scores, targets = _voc_example()
    ap = voc_average_precision(scores, targets)
    assert ap.dtype == torch.float64
    # class 0, interpolated precision (best at this recall or beyond): 1 on (0, 1/3], 3/5 on (1/3, 1]
    assert ap[0].item() == approx(1 / 3 * 1 + 2 / 3 * 3 / 5, abs=1e-15)  # 11/15
    # class 1: the devkit's stable sort ranks the earlier-listed negative first: precision 1/2 at recall 1
    assert ap[1].item() == approx(1 / 2, abs=1e-15)
    assert math.isnan(ap[2].item())
    # listed the other way round, the positive wins the tie
    swapped = voc_average_precision(scores[[1, 0, 2, 3, 4]], targets[[1, 0, 2, 3, 4]])
    assert swapped[1].item() == approx(1.0, abs=1e-15)


def test_voc2007_eleven_point_ap_by_hand():
    from gainet.evaluation.classification import voc_average_precision

    scores, targets = _voc_example()
    ap = voc_average_precision(scores, targets, eleven_point=True)
    # class 0: levels 0, .1, .2, .3 reach precision 1; .4 .. 1.0 (7 levels) reach at best 3/5
    assert ap[0].item() == approx((4 * 1 + 7 * 3 / 5) / 11, abs=1e-15)
    # class 1: precision 1/2 at recall 1, so 1/2 at every level
    assert ap[1].item() == approx(1 / 2, abs=1e-15)
    assert math.isnan(ap[2].item())


def test_meter_reports_voc_ap_beside_torchmetrics_ap_and_names_both():
    scores, targets = _voc_example()
    meter = ClassificationMeter(3, multi_label=True, voc_ap=True)
    meter.update(scores[:2], targets[:2])
    meter.update(scores[2:], targets[2:])
    result = meter.compute()
    # torchmetrics' non-interpolated AP for class 0: (1 + 2/4 + 3/5) / 3 = 0.7; the VOC one 11/15.
    assert result["ap_per_class"][0] == approx(0.7, abs=1e-6)
    assert result["ap_voc_per_class"][0] == approx(11 / 15, abs=1e-12)
    assert result["mAP_voc"] == approx((11 / 15 + 1 / 2) / 2, abs=1e-12)
    assert set(result["ap_definition"]) == {"mAP", "mAP_voc"} and "VOC2010" in result["ap_definition"]["mAP_voc"]
    plain = ClassificationMeter(3, multi_label=True)
    plain.update(scores, targets)
    assert "mAP_voc" not in plain.compute()


def test_evaluate_gain_on_voc_reports_the_voc_ap(voc_tree, tmp_path):
    from gainet.data import FolderDataset, VOCDataset
    from gainet.evaluation.evaluate import evaluate_gain
    from gainet.training.config import TrainConfig
    from gainet.training.data import eval_loader
    from gainet.training.trainer import build_gain

    root, _ = voc_tree
    voc = VOCDataset(root, "train", image_set="main", image_size=32)
    torch.manual_seed(0)
    gain = build_gain(TrainConfig(model_width=4, image_size=32), len(voc.classes), True)
    metrics = evaluate_gain(gain, eval_loader(voc, 4))
    assert 0.0 <= metrics["mAP_voc"] <= 1.0 and "mAP" in metrics
    assert "VOC2010" in metrics["ap_definition"]["mAP_voc"]
    assert getattr(FolderDataset, "ap_definition", None) is None  # other datasets: torchmetrics' mAP only
