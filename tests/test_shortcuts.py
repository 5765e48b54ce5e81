"""``gainet diagnose`` / ``gainet fix`` (issue 19): the background test's splits, verdict, the DFR
head fit, the files, and the CLI end to end on a tiny bias world."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gainet.core.counterfactual import dilate
from gainet.shortcuts.diagnose import (
    build_splits,
    diagnose,
    draw_partners,
    load_annotated,
    object_pixels,
)
from gainet.shortcuts.verdict import GAP_READS, decide
from gainet.shortcuts.fix import counterfactual_training_set, fit_linear_head, fix_dfr, head_loss

# A colour world the tests build by hand: class k's context has colour CONTEXT[k], its object (a
# square) colour OBJECT[k]; context and class agree on every image (a total shortcut).
CONTEXT = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])
OBJECT = torch.tensor([[0.9, 0.9, 0.1], [0.1, 0.9, 0.9], [0.9, 0.1, 0.9]])
SIZE = 24


class ColourWorld(torch.utils.data.Dataset):
    """``n`` images of 3 classes: context of the class's colour (plus noise), a square object of
    the class's object colour at a random place; boxes = the squares. ``boxes=False``: no box."""

    classes = ["a", "b", "c"]
    multi_label = False
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def __init__(self, n: int = 30, seed: int = 0, boxes: bool = True, random_contexts: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            label = i % 3
            # random_contexts: a clean test split, the context drawn independently of the class
            context = int(torch.randint(3, (1,), generator=g)) if random_contexts else label
            image = CONTEXT[context].view(3, 1, 1) + 0.03 * torch.randn(3, SIZE, SIZE, generator=g)
            y, x = torch.randint(2, SIZE - 10, (2,), generator=g).tolist()
            image[:, y:y + 8, x:x + 8] = OBJECT[label].view(3, 1, 1)
            box = torch.zeros(3, SIZE, SIZE)
            box[label, y:y + 8, x:x + 8] = 1.0
            self.items.append((image, label, box))
        self.has_boxes = boxes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        image, label, box = self.items[index]
        return {"image": image, "labels": nn.functional.one_hot(torch.tensor(label), 3).float(),
                "box_masks": box if self.has_boxes else torch.zeros_like(box), "masks": torch.zeros_like(box),
                "has_boxes": torch.tensor(self.has_boxes), "has_masks": torch.tensor(False), "index": index}


class ColourFeatures(nn.Module):
    """Fixed features ``(B, 6)``: closeness of the image's median colour to each context colour
    (3), and of the mean colour of the pixels far from that median (the object) to each object
    colour (3)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.flatten(2)  # (B, 3, HW)
        median = pixels.median(dim=2).values  # (B, 3): the context
        far = ((pixels - median[:, :, None]).abs().sum(1) > 0.4).float()  # (B, HW): object pixels
        obj = (pixels * far[:, None]).sum(2) / far.sum(1, keepdim=True).clamp_min(1.0)
        has = (far.sum(1, keepdim=True) > 0).float()
        context = -((median[:, None, :] - CONTEXT[None]) ** 2).sum(2)
        objects = -((obj[:, None, :] - OBJECT[None]) ** 2).sum(2) * has
        return torch.cat([context, objects], dim=1)


class ColourModel(nn.Module):
    """Reads the context (``reads="context"``) or the object (``"object"``) through a linear head."""

    def __init__(self, reads: str) -> None:
        super().__init__()
        self.features = ColourFeatures()
        self.fc = nn.Linear(6, 3)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            columns = slice(0, 3) if reads == "context" else slice(3, 6)
            self.fc.weight[:, columns] = 20.0 * torch.eye(3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))


def _diagnose(model: nn.Module, data) -> dict:
    result, _, _ = diagnose(model, data, multi_label=False, classes=ColourWorld.classes, progress=False)
    return result


def test_a_context_reader_shows_a_large_gap_and_an_object_reader_none() -> None:
    data = load_annotated(ColourWorld(), progress=False)
    context = _diagnose(ColourModel("context"), data)
    assert context["original"] == 1.0 and context["mixed_same"] == 1.0
    assert context["mixed_rand"] == 0.0 and context["gap"] == 1.0  # another class's context: always wrong
    assert context["context_rate"] == 1.0 and context["context_confidence"] > 0.9
    assert context["verdict_code"] == "reads_context" and "reads the context" in context["verdict"]
    assert context["intervals"]["gap"] == [1.0, 1.0]  # every resample: all right on one, all wrong on the other
    obj = _diagnose(ColourModel("object"), data)
    assert obj["mixed_same"] == obj["mixed_rand"] == 1.0 and obj["gap"] == 0.0
    assert obj["only_fg"] == 1.0  # the object on a neutral fill is recognised
    assert obj["context_rate"] < 0.5  # without an object it has no evidence (ties: class 0 of 3)
    assert obj["verdict_code"] == "object_decides" and "the object decides" in obj["verdict"]


class ConstantModel(nn.Module):
    """Always answers class 1: at chance on every split."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0.0, 5.0, 0.0]).expand(images.shape[0], 3)


def test_a_clean_split_is_diagnosed_with_contexts_from_the_training_images() -> None:
    """Issue 29: on a test split whose backgrounds are random, its own "context of the same class"
    carries no class; the contexts must come from the images the model learned from."""
    clean = load_annotated(ColourWorld(n=60, seed=3, random_contexts=True), progress=False)
    train = load_annotated(ColourWorld(n=60, seed=4), progress=False)
    reader = ColourModel("context")
    own = _diagnose(reader, clean)  # the old behaviour: the split's own contexts
    assert abs(own["gap"]) < 0.3 and own["verdict_code"] == "no_verdict"
    assert "do not go with their labels" in own["verdict"] and own["contexts"]["same_as_test"]
    right, _, _ = diagnose(reader, clean, contexts=train, context_split="split 'train'", multi_label=False,
                           classes=ColourWorld.classes, progress=False)
    assert right["gap"] == 1.0 and right["verdict_code"] == "reads_context"
    assert right["contexts"]["split"] == "split 'train'" and right["contexts"]["images"] == 60
    assert right["original"] < 0.6  # the reader is poor on the clean split, yet the test says why
    obj, _, _ = diagnose(ColourModel("object"), clean, contexts=train, multi_label=False, classes=ColourWorld.classes,
                         progress=False)
    assert obj["verdict_code"] == "object_decides"


def test_a_constant_model_gets_no_verdict() -> None:
    data = load_annotated(ColourWorld(n=60), progress=False)
    result = _diagnose(ConstantModel(), data)
    assert result["original"] == pytest.approx(1 / 3) and result["chance"] == pytest.approx(1 / 3)
    assert result["verdict_code"] == "no_verdict" and "at chance" in result["verdict"]
    assert result["context_rate"] == pytest.approx(result["context_chance"], abs=0.02)


def test_per_class_table_says_which_context_pulls() -> None:
    data = load_annotated(ColourWorld(n=60), progress=False)
    reader = _diagnose(ColourModel("context"), data)
    table = {row["class"]: row for row in reader["per_class"]}
    assert set(table) == {"a", "b", "c"}
    for name, row in table.items():
        assert row["objects"] == 20 and row["original"] == 1.0 and row["mixed_rand"] == 0.0
        assert row["taken_by_context"] == 1.0 and row["context_pull"] == 1.0
        assert row["context_named_own"] == 1.0 and row["context_named_most"] == name
    assert set(reader["annotate_first"]) == {"a", "b", "c"}
    honest = _diagnose(ColourModel("object"), data)
    for row in honest["per_class"]:
        assert row["mixed_rand"] == 1.0 and row["taken_by_context"] == 0.0 and row["context_pull"] == 0.0
    assert honest["annotate_first"] == []


def test_splits_paste_each_object_on_the_filled_context_of_the_right_partner() -> None:
    data = load_annotated(ColourWorld(), progress=False)
    splits = build_splits(data, seed=3)
    classes = data.labels.argmax(1)
    for name, same in (("mixed_same", True), ("mixed_rand", False)):
        rows, partners = splits.rows[name], splits.partners[name]
        assert rows.numel() == len(data) and bool((rows != partners).all())
        assert bool(((classes[rows] == classes[partners]) == same).all())
        for position in range(0, rows.numel(), 7):  # pixel by pixel, against the definition
            i, j = int(rows[position]), int(partners[position])
            image = splits.images(name, [position])[0]
            inside = data.objects[i] > 0.5
            assert torch.equal(image[:, inside], data.images[i][:, inside])
            outside = (data.holes[i] < 0.5) & (dilate(data.holes[j][None], 1)[0] < 0.5)  # hole: mask + 1 px
            assert torch.allclose(image[:, outside], data.images[j][:, outside])  # j's own context
            # j's object is gone: its hole holds context colour, not j's object colour
            hole = (data.holes[j] > 0.5) & ~inside
            if bool(hole.any()):
                assert (image[:, hole].mean(1) - CONTEXT[classes[j]]).abs().max() < 0.1
    assert torch.equal(splits.images("original"), data.images)
    # the same seed draws the same partners, another seed others
    assert torch.equal(build_splits(data, seed=3).partners["mixed_rand"], splits.partners["mixed_rand"])
    assert not torch.equal(build_splits(data, seed=4).partners["mixed_rand"], splits.partners["mixed_rand"])


def test_draw_partners_respects_labels_and_reports_none() -> None:
    labels = torch.tensor([[1, 0], [1, 0], [0, 1]]).float()
    g = torch.Generator().manual_seed(0)
    usable = torch.ones(3, dtype=torch.bool)
    assert draw_partners(labels, True, usable, g).tolist() == [1, 0, -1]
    assert draw_partners(labels, False, usable, g).tolist() == [2, 2, 0] or \
        draw_partners(labels, False, usable, g).tolist()[:2] == [2, 2]


def test_ignore_value_255_is_not_object() -> None:
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, 0, 0] = 1.0
    masks[0, 1, 1, 1] = 255.0
    assert object_pixels(masks)[0].sum() == 1 and object_pixels(masks)[0, 0, 0] == 1


class BandedWorld(torch.utils.data.Dataset):
    """VOC-style masks: a square object of class 0 with a 2-pixel 255 band around it."""

    classes = ["a", "b"]

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> dict:
        label = index % 2
        masks = torch.zeros(2, 20, 20)
        masks[label, 4:16, 4:16] = 255.0
        masks[label, 6:14, 6:14] = 1.0
        return {"image": torch.rand(3, 20, 20), "labels": nn.functional.one_hot(torch.tensor(label), 2).float(),
                "masks": masks, "box_masks": torch.zeros(2, 20, 20), "has_masks": torch.tensor(True),
                "has_boxes": torch.tensor(False), "index": index}


def test_the_255_band_is_removed_with_the_object_but_never_pasted() -> None:
    """Issue 29: VOC's ignore band stayed in the contexts (the object's outline survived)."""
    data = load_annotated(BandedWorld(), source="masks", progress=False)
    band = torch.zeros(20, 20, dtype=torch.bool)
    band[4:16, 4:16] = True
    band[6:14, 6:14] = False
    assert bool((data.holes[:, band] == 1).all())  # removed from the context
    assert bool((data.objects[:, band] == 0).all()) and bool((data.objects[:, 6:14, 6:14] == 1).all())


def test_a_split_without_boxes_is_one_line_saying_what_to_annotate() -> None:
    with pytest.raises(ValueError, match=r"0 images carry .*at least 20 images of 2\+ classes") as error:
        load_annotated(ColourWorld(boxes=False), progress=False, where="split 'val'")
    assert "\n" not in str(error.value) and "split 'val'" in str(error.value)
    with pytest.raises(ValueError, match="at least 20"):
        load_annotated(ColourWorld(n=12), progress=False)


def test_verdict_rule_reads_the_intervals() -> None:
    base = {"metric": "accuracy", "original": 0.9, "chance": 0.25, "mixed_same": 0.9, "mixed_rand": 0.4,
            "contexts": {"split": "split 'train'", "probe": {"score": 0.9, "low": 0.85, "high": 0.95, "chance": 0.25}}}

    def code(gap: float, low: float, high: float, **changes) -> str:
        intervals = {"gap": [low, high], "original": [0.85, 0.95], **changes.pop("intervals", {})}
        return decide({**base, "gap": gap, "intervals": intervals, **changes})[0]

    assert code(0.5, GAP_READS + 0.01, 0.6) == "reads_context"
    assert code(0.05, -0.01, GAP_READS - 0.01) == "object_decides"
    assert code(GAP_READS, GAP_READS - 0.05, GAP_READS + 0.05) == "uncertain"  # straddles: more images needed
    assert code(-0.3, -0.4, -GAP_READS - 0.01) == "reads_context"  # steered away from the context's class
    assert code(-0.15, -0.2, -0.1) == "uncertain"
    assert code(math.nan, math.nan, math.nan) == "no_verdict"
    # at chance on the split: a constant model, or one that does not recognise these images
    at_chance = {"original": [0.2, 0.4], "mixed_same": [0.2, 0.35]}
    chances = {"original": 0.28, "mixed_same": 0.27}
    assert code(0.05, 0.0, 0.1, original=0.3, intervals=at_chance, chances=chances) == "no_verdict"
    # at chance on the originals only because the split's contexts are random: a context reader
    # still recognises its objects on their own class's context, and gets its verdict
    reader = {"original": [0.2, 0.4], "mixed_same": [0.9, 1.0]}
    assert code(0.7, 0.6, 0.8, original=0.3, intervals=reader, chances=chances) == "reads_context"
    # contexts that carry no class (a clean split's own): nothing to tell, whatever the gap
    flat = {"split": "split 'test'", "probe": {"score": 0.27, "low": 0.22, "high": 0.31, "chance": 0.25}}
    assert code(0.01, -0.02, 0.03, contexts=flat) == "no_verdict"
    assert "do not go with their labels" in decide({**base, "gap": 0.0, "intervals": {"gap": [0, 0]}, "contexts": flat})[1]


def test_fit_linear_head_is_the_regularised_optimum() -> None:
    """Independent check: at the optimum the gradient of the objective, written out by hand
    (softmax minus target, plus the L2 term), vanishes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 5, generator=g) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0]) + 2.0
    y = nn.functional.one_hot(torch.randint(3, (80,), generator=g), 3).float()
    y[:10] = 1.0 / 3.0  # soft targets too
    l2 = 0.01
    weight, bias = fit_linear_head(x, y, multi_label=False, l2=l2)
    mean, std = x.double().mean(0), x.double().std(0)
    z = (x.double() - mean) / std
    w_std = weight.double() * std  # back to the standardised weights
    b_std = bias.double() + weight.double() @ mean
    p = torch.softmax(z @ w_std.T + b_std, dim=1)
    grad_w = (p - y.double()).T @ z / x.shape[0] + 2 * l2 * w_std
    grad_b = (p - y.double()).mean(0)
    assert grad_w.abs().max() < 1e-4 and grad_b.abs().max() < 1e-4
    # a larger regulariser gives a smaller head
    small, _ = fit_linear_head(x, y, multi_label=False, l2=1.0)
    assert (small * torch.from_numpy(std.numpy()).float()).norm() < (weight * std.float()).norm()
    assert float(head_loss(torch.zeros(2, 3), torch.full((2, 3), 1 / 3), False)) == pytest.approx(math.log(3))


def test_counterfactual_training_set_puts_each_object_on_every_class() -> None:
    data = load_annotated(ColourWorld(), progress=False)
    images, targets, kind = counterfactual_training_set(data, multi_label=False)
    n = len(data)
    assert (kind == 0).sum() == n and (kind == 1).sum() == 3 * n and (kind == 2).sum() == n
    assert torch.allclose(targets[kind == 2], torch.full((n, 3), 1 / 3))
    features = ColourFeatures()(images[kind == 1])
    context_class = features[:, :3].argmax(1)
    object_class = features[:, 3:].argmax(1)
    assert torch.equal(object_class, targets[kind == 1].argmax(1))  # the object keeps its label
    counts = torch.bincount(context_class * 3 + object_class, minlength=9)
    assert bool((counts == n // 3).all())  # every object class on every context class


@pytest.mark.parametrize("recipe", ["dfr", "plain"])
def test_dfr_moves_a_context_reader_onto_the_object(recipe: str) -> None:
    from gainet.shortcuts.fix import L1_GRID, fix_dfr_plain

    train = load_annotated(ColourWorld(n=30, seed=1), progress=False, min_images=8)
    test = load_annotated(ColourWorld(n=30, seed=2), progress=False)
    model = ColourModel("context")
    before = _diagnose(model, test)
    details = (fix_dfr if recipe == "dfr" else fix_dfr_plain)(model, model, train, multi_label=False, seed=0)
    after = _diagnose(model, test)
    assert before["gap"] == 1.0 and after["gap"] <= 0.1 and after["mixed_rand"] >= 0.9
    # a context alone stops being evidence: confidence near chance (1/3)
    assert after["context_confidence"] < 0.5 < before["context_confidence"]
    if recipe == "dfr":
        assert details["l1"] in L1_GRID and len(details["l1_search"]) == len(L1_GRID) and details["resamples"] == 10
    else:
        assert details["l2"] in (1e-4, 1e-3, 1e-2, 1e-1) and len(details["l2_search"]) == 4


# ---------------------------------------------------------------------- the commands end to end
@pytest.fixture(scope="module")
def reader_checkpoint(tmp_path_factory) -> Path:
    """A small CNN trained 2 epochs on the bias world (its context predicts the class)."""
    from gainet.training.config import TrainConfig
    from gainet.training.trainer import train

    out = tmp_path_factory.mktemp("reader") / "cam"
    train(TrainConfig(method="cam", dataset="bias", train_images=128, val_images=32, image_size=32, model="small-cnn",
                      model_width=8, epochs=2, warmup_epochs=0, batch_size=32, lr=3e-3, progress=False,
                      tensorboard=False, threads=1, output_dir=str(out)))
    return out / "best.pt"


def test_diagnose_and_fix_commands_write_their_files_and_keep_them(reader_checkpoint: Path, tmp_path: Path,
                                                                   capsys) -> None:
    from gainet.cli import main
    from gainet.evaluation.jobs import evaluate_checkpoint

    common = ["--checkpoint", str(reader_checkpoint), "--no-progress", "--limit", "40", "--batch-size", "32"]
    out = tmp_path / "diagnose"
    assert main(["diagnose", *common, "--output-dir", str(out)]) == 0
    result = json.loads((out / "diagnosis.json").read_text())
    assert {"original", "mixed_same", "mixed_rand", "gap", "context_rate", "verdict"} <= set(result)
    assert math.isclose(result["gap"], result["mixed_same"] - result["mixed_rand"], abs_tol=1e-6)
    assert result["split"] == "test_biased" and "<img" in (out / "index.html").read_text()
    printed = capsys.readouterr().out
    assert "background gap" in printed and result["verdict"].split(":")[0] in printed
    assert main(["diagnose", *common, "--output-dir", str(out)]) != 0  # a finished output is kept
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--overwrite" in error and "diagnosis" in error
    for way in ("dfr", "guidance", "auto"):
        fixed = tmp_path / way
        count = 26 if way == "auto" else 13  # auto holds a quarter out: at least 4 to choose on
        assert main(["fix", *common, "--way", way, "--supervised-count", f"{count}", "--epochs", "1",
                     "--output-dir", str(fixed)]) == 0
        record = json.loads((fixed / "fix.json").read_text())
        assert record["way"] == way and record["supervised_count"] == count and record["fix_seconds"] > 0
        # the annotated images come from the training split, never from the held-out one under test
        assert len(record["annotated_ids"]) == count and all(i.startswith("bias-train-") for i in record["annotated_ids"])
        assert record["before"]["gap"] == pytest.approx(result["gap"])  # the same held-out test before
        assert (fixed / "after" / "diagnosis.json").is_file()
        metrics = evaluate_checkpoint(fixed / "fixed.pt", splits=["test_decorrelated"], output_dir=tmp_path / "ev")
        assert 0.0 <= metrics["splits"]["test_decorrelated"]["accuracy"] <= 1.0
    details = json.loads((tmp_path / "auto" / "fix.json").read_text())["details"]
    names = [c["name"] for c in details["candidates"]]
    # auto: every candidate scored on the held-out quarter, the best group-balanced one chosen and said how sure
    assert details["chosen"] in names and details["held_out_images"] >= 4 and 0.0 <= details["stability"] <= 1.0
    best = max(details["candidates"][1:], key=lambda c: (c["balanced"], c["worst_group"]))
    assert best["balanced"] == next(c for c in details["candidates"] if c["name"] == details["chosen"])["balanced"]
    assert "How sure" in (tmp_path / "auto" / "fix.md").read_text()
    # the chosen way is the one refit on every annotated image, and DFR's rule's choice is a candidate too
    record = json.loads((tmp_path / "auto" / "fix.json").read_text())
    assert record["chosen_way"] == details["way"] and details["refit_on"] == 26
    assert details["chosen_by_worst_group"] in names and details["resamples"] == 200
    dfr = torch.load(tmp_path / "dfr" / "fixed.pt", weights_only=True)
    original = torch.load(reader_checkpoint, weights_only=True)
    changed = [k for k in original["model"] if not torch.equal(original["model"][k], dfr["model"][k])]
    # DFR: the last layer only (and the wrapper's copy of it that Grad-CAM's weights use)
    assert changed and all(k.endswith(("fc.weight", "fc.bias", "linear_head.weight", "linear_head.bias")) for k in changed)


def test_a_model_trained_elsewhere_is_normalised_as_imagenet_models_are(reader_checkpoint: Path,
                                                                         tmp_path: Path) -> None:
    from gainet.data import build_dataset
    from gainet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from gainet.shortcuts.jobs import load_subject, run_diagnose

    state = torch.load(reader_checkpoint, weights_only=True)["model"]
    weights = tmp_path / "plain.pt"  # what a user's own script saves: the classifier's state dict alone
    plain = {k.removeprefix("backbone.model."): v for k, v in state.items() if k.startswith("backbone.model.")}
    assert "fc.weight" in plain
    torch.save(plain, weights)
    kwargs = dict(checkpoint=None, model="small-cnn", weights=str(weights), multi_label=False, dataset="bias",
                  data_root=None, dataset_options={"num_images": 40}, image_size=32, device=torch.device("cpu"))
    subject = load_subject(**kwargs)
    assert subject.mean == tuple(IMAGENET_MEAN) and subject.std == tuple(IMAGENET_STD)
    world = build_dataset("bias", "test_biased", image_size=32, **subject.config.dataset_options)
    picture = torch.from_numpy(world.rendered(0).image).permute(2, 0, 1).double() / 255  # independent of the transform
    expected = (picture - torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)) / torch.tensor(
        IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(world[0]["image"].double(), expected, atol=1e-5, rtol=0)
    own = load_subject(**kwargs, normalize="dataset")
    assert own.mean == tuple(build_dataset("bias", "train", image_size=32, num_images=4).mean)
    result = run_diagnose(model="small-cnn", weights=str(weights), dataset="bias", image_size=32,
                          dataset_options={"num_images": 40}, output_dir=tmp_path / "d", progress=False,
                          normalize="dataset")
    assert 0.0 <= result["original"] <= 1.0 and result["model"] == str(weights)


def test_a_torchvision_model_trained_elsewhere_is_diagnosed_and_fixed(tmp_path: Path) -> None:
    """The path of a user's own torchvision classifier: a plain ``state_dict()`` of
    ``mobilenet_v3_small`` with a 4-class head, diagnosed, fixed by DFR (its last layer only, the
    rest untouched) and by guidance (a gainet run that starts from those weights)."""
    import torchvision

    from gainet.shortcuts.jobs import run_diagnose, run_fix

    torch.manual_seed(0)
    network = torchvision.models.mobilenet_v3_small(weights=None, num_classes=4)
    weights = tmp_path / "mine.pt"
    torch.save(network.state_dict(), weights)
    common = dict(model="mobilenet_v3_small", weights=str(weights), dataset="bias", image_size=32,
                  dataset_options={"num_images": 48}, progress=False, batch_size=16, threads=1)
    result = run_diagnose(output_dir=tmp_path / "d", **{k: v for k, v in common.items() if k != "threads"})
    assert result["model"] == str(weights) and 0.0 <= result["mixed_rand"] <= 1.0
    dfr = run_fix(way="dfr", supervised_count="25%", output_dir=tmp_path / "dfr", **common)
    assert dfr["before"]["gap"] == pytest.approx(result["gap"])
    fixed = torch.load(tmp_path / "dfr" / "fixed.pt", weights_only=True)["model"]
    original = network.state_dict()
    inner = {k.removeprefix("backbone.model."): v for k, v in fixed.items() if k.startswith("backbone.model.")}
    assert set(inner) == set(original)
    changed = {k for k in original if not torch.equal(original[k], inner[k])}
    assert changed == {"classifier.3.weight", "classifier.3.bias"}  # the last linear layer only
    guided = run_fix(way="guidance", supervised_count="25%", epochs=1, output_dir=tmp_path / "guided", **common)
    assert guided["way"] == "guidance" and (tmp_path / "guided" / "fixed.pt").is_file()
    trained = torch.load(tmp_path / "guided" / "train" / "last.pt", weights_only=True)
    assert trained["config"]["model"] == "mobilenet_v3_small"
    assert trained["config"]["init_weights"] == str(weights.resolve())  # it starts from the user's weights
    # ... and really loads them: at a learning rate too small to move anything, the fine-tuned
    # weights are the user's (a fresh initialisation would differ everywhere)
    still = run_fix(way="guidance", supervised_count="25%", epochs=1, lr=1e-12, output_dir=tmp_path / "still", **common)
    assert still["way"] == "guidance"
    kept = torch.load(tmp_path / "still" / "fixed.pt", weights_only=True)["model"]
    kept = {k.removeprefix("backbone.model."): v for k, v in kept.items() if k.startswith("backbone.model.")}
    for name, parameter in network.named_parameters():
        torch.testing.assert_close(kept[name], parameter.detach(), atol=1e-6, rtol=0, msg=name)


def test_fix_without_way_takes_the_measured_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # docs/shortcuts.md: guidance fixed more than dfr on the pretrained bias world; the CLI must not
    # keep its own copy of the default
    from gainet.cli import main
    from gainet.shortcuts import jobs

    seen = {}

    def fake_run_fix(**kwargs):
        seen.update(kwargs)
        return {"way": kwargs["way"]}

    monkeypatch.setattr(jobs, "run_fix", fake_run_fix)
    monkeypatch.setattr(jobs, "fix_markdown", lambda record: "")
    assert jobs.DEFAULT_WAY == "guidance"
    assert main(["fix", "--checkpoint", str(tmp_path / "model.pt"), "--output-dir", str(tmp_path / "fix")]) == 0
    assert seen["way"] == "guidance"
    assert main(["fix", "--checkpoint", str(tmp_path / "model.pt"), "--way", "dfr",
                 "--output-dir", str(tmp_path / "fix2")]) == 0
    assert seen["way"] == "dfr"


# ---------------------------------------------------------------------- the numbers behind a verdict
def test_bootstrap_interval_matches_a_float64_loop_over_the_same_resamples() -> None:
    """Independent computation: the paired bootstrap written out per resample, in float64, with
    the same unit draws (``torch.randint`` from the same seed) as the vectorised version."""
    from gainet.shortcuts.evidence import RESAMPLES, SplitAnswers, interval, resampled_scores

    g = torch.Generator().manual_seed(0)
    n, draws = 40, 3
    labels = nn.functional.one_hot(torch.randint(4, (n,), generator=g), 4).float()
    units = torch.arange(n).repeat(draws)  # three pasted images per object
    splits = {"a": SplitAnswers(torch.randn(n, 4, generator=g), labels, torch.arange(n)),
              "b": SplitAnswers(torch.randn(n * draws, 4, generator=g), labels[units], units)}
    samples = resampled_scores(splits, n, multi_label=False, seed=5)
    picks = torch.randint(n, (RESAMPLES, n), generator=torch.Generator().manual_seed(5))
    hits = {k: (v.scores.argmax(1) == v.labels.argmax(1)).double() for k, v in splits.items()}
    for r in (0, 17, RESAMPLES - 1):
        chosen = picks[r].tolist()
        a = sum(float(hits["a"][i]) for i in chosen) / n
        b = sum(float(hits["b"][i + d * n]) for i in chosen for d in range(draws)) / (n * draws)
        assert float(samples["a"][r]) == pytest.approx(a, abs=1e-6)
        assert float(samples["b"][r]) == pytest.approx(b, abs=1e-6)
    low, high = interval(samples["a"] - samples["b"])
    point = float(hits["a"].mean() - hits["b"].mean())
    assert low < point < high and high - low < 0.6


def test_chance_score_is_the_mean_over_other_images_labels() -> None:
    from gainet.shortcuts.evidence import chance_score

    g = torch.Generator().manual_seed(1)
    scores = torch.randn(25, 5, generator=g)
    labels = nn.functional.one_hot(torch.randint(5, (25,), generator=g), 5).float()
    answers, truth = scores.argmax(1).tolist(), labels.argmax(1).tolist()
    pairs = [float(answers[j] == truth[k]) for j in range(25) for k in range(25) if j != k]
    assert chance_score(scores, labels, False) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)


def test_the_context_probe_finds_a_class_only_where_contexts_carry_one() -> None:
    from gainet.shortcuts.diagnose import contexts_of
    from gainet.shortcuts.evidence import context_probe

    for random_contexts, carries in ((False, True), (True, False)):
        data = load_annotated(ColourWorld(n=90, seed=7, random_contexts=random_contexts), progress=False)
        filled, ok = contexts_of(data)
        probe = context_probe(filled[ok], data.labels[ok], multi_label=False)
        assert (probe["low"] > probe["chance"]) == carries, probe


def test_fit_sparse_head_meets_the_l1_optimality_conditions() -> None:
    """Independent check (subgradient conditions of the l1-penalised objective, written out by hand
    in float64): where a standardised weight is non-zero the gradient of the loss equals
    ``-l1 * sign(w)``; where it is zero the gradient lies within ``[-l1, l1]``; the bias's gradient is 0."""
    from gainet.shortcuts.fix import fit_sparse_head

    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 8, generator=g) * torch.linspace(0.5, 3.0, 8) + 1.0
    y = nn.functional.one_hot((x[:, 0] + 0.5 * x[:, 1] > 1.5).long() + (x[:, 2] > 1.0).long(), 3).float()
    l1 = 0.02
    weight, bias = fit_sparse_head(x, y, multi_label=False, l1=l1, steps=3000)
    mean, std = x.double().mean(0), x.double().std(0)
    z = (x.double() - mean) / std
    w = weight.double() * std
    b = bias.double() + weight.double() @ mean
    p = torch.softmax(z @ w.T + b, dim=1)
    grad_w = (p - y.double()).T @ z / x.shape[0]
    grad_b = (p - y.double()).mean(0)
    nonzero = w.abs() > 1e-4
    assert bool(nonzero.any()) and bool((~nonzero).any())  # sparse, not empty
    assert (grad_w[nonzero] + l1 * w[nonzero].sign()).abs().max() < 2e-3
    assert grad_w[~nonzero].abs().max() <= l1 + 2e-3
    assert grad_b.abs().max() < 2e-3


def test_balanced_rows_give_every_group_the_smallest_groups_size() -> None:
    from gainet.shortcuts.fix import balanced_rows

    groups = torch.tensor([[0, 0]] * 10 + [[0, 1]] * 3 + [[1, 1]] * 6 + [[-1, 0]] * 4)
    rows = balanced_rows(groups, torch.Generator().manual_seed(0))
    keys, counts = torch.unique(groups[rows], dim=0, return_counts=True)
    assert keys.shape[0] == 4 and counts.tolist() == [3, 3, 3, 3] and rows.unique().numel() == rows.numel()


# ---------------------------------------------------------------------- the Python API (in memory)
def _tensors(world: "ColourWorld") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    items = [world[i] for i in range(len(world))]
    images = torch.stack([item["image"] for item in items])
    labels = torch.stack([item["labels"] for item in items]).argmax(1)
    boxes = []
    for item in items:
        ys, xs = item["box_masks"].amax(0).nonzero(as_tuple=True)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    return images, labels, torch.tensor(boxes)


def test_api_diagnoses_and_fixes_a_model_in_memory(tmp_path: Path) -> None:
    from gainet.shortcuts import annotated_images, diagnose_model, fix_model

    test_images, test_labels, test_boxes = _tensors(ColourWorld(n=60, seed=11, random_contexts=True))
    train_images, train_labels, train_boxes = _tensors(ColourWorld(n=60, seed=12))
    test = annotated_images(test_images, test_labels, boxes=test_boxes)
    seen = annotated_images(train_images, train_labels, boxes=train_boxes)
    # the boxes become the same object pixels load_annotated reads from a dataset
    assert torch.equal(seen.objects, load_annotated(ColourWorld(n=60, seed=12), progress=False).objects)
    reader = ColourModel("context")
    report = diagnose_model(reader, test, contexts=seen, classes=["a", "b", "c"])
    assert report.code == "reads_context" and report.gap[0] == 1.0 and "| mixed-rand" in report.markdown()
    files = report.write(tmp_path / "d")
    assert json.loads(files["diagnosis.json"].read_text())["verdict_code"] == "reads_context"
    assert "Which context leaks" in files["index.html"].read_text()
    fixed = fix_model(reader, seen, way="dfr")
    assert fixed.model is not reader and torch.equal(reader.fc.weight[:, :3], 20.0 * torch.eye(3))  # a copy
    assert diagnose_model(fixed.model, test, contexts=seen).code == "object_decides"
    tuned = fix_model(reader, seen, way="finetune", train=(train_images, train_labels), epochs=30, lr=0.05,
                      batch_size=12, annotated_per_batch=9)
    after = diagnose_model(tuned.model, test, contexts=seen)
    assert after.result["mixed_rand"] > 0.9 and after.code == "object_decides", after.verdict
    assert tuned.details["finetune"]["rows_per_step"] > 9  # swaps and contexts joined every step
    with pytest.raises(ValueError, match="train="):
        fix_model(reader, seen, way="finetune")
    with pytest.raises(ValueError, match="exactly one of masks= or boxes="):
        annotated_images(test_images, test_labels)


# ---------------------------------------------------------------------- review items (issue 29)
def test_a_model_on_voc_is_scored_multi_label_as_its_fix_trains_it(voc_tree, tmp_path: Path) -> None:
    """``--model`` on a VOC dataset was silently single-label while ``fix --way guidance`` trained
    multi-label: the dataset decides (img_b shows a cat and a dog)."""
    from gainet.models import build_classifier
    from gainet.shortcuts.jobs import load_subject

    root, _ = voc_tree
    weights = tmp_path / "voc-small.pt"
    torch.save(build_classifier("small-cnn", 20, width=4).state_dict(), weights)
    subject = load_subject(checkpoint=None, model="small-cnn", weights=str(weights), multi_label=False, dataset="voc",
                           data_root=str(root), dataset_options=None, image_size=32, device=torch.device("cpu"))
    assert subject.multi_label and len(subject.classes) == 20 and subject.classes[14] == "person"


def test_a_held_out_split_that_shares_images_with_training_is_refused(folder_tree, tmp_path: Path) -> None:
    """The guard compared split names only: ``--split all`` (or overlapping split files) leaked
    training images into the test. It compares image ids now."""
    from gainet.data import build_dataset
    from gainet.models import build_classifier
    from gainet.shortcuts.jobs import refuse_shared_images, run_fix

    root, _ = folder_tree
    train = build_dataset("folder", "train", root=str(root), image_size=32, train_transforms=False)
    refuse_shared_images(train, "train", build_dataset("folder", "val", root=str(root), image_size=32), "val")
    with pytest.raises(ValueError, match=r"--split 'all' shares 2 images with the training split 'train'") as error:
        refuse_shared_images(train, "train", build_dataset("folder", "all", root=str(root), image_size=32), "all")
    assert "\n" not in str(error.value)
    weights = tmp_path / "mine.pt"
    torch.save(build_classifier("small-cnn", 3, width=4).state_dict(), weights)
    with pytest.raises(ValueError, match="shares 2 images"):
        run_fix(way="dfr", model="small-cnn", weights=str(weights), dataset="folder", data_root=str(root),
                image_size=32, train_split="train", split="all", output_dir=tmp_path / "fix", progress=False)


def test_contexts_fall_back_to_the_split_under_test_only_when_not_asked_for(folder_tree, tmp_path: Path) -> None:
    """A folder without the default context split: the diagnosis says where its contexts came from
    instead of failing; a --context-split asked for by name that cannot be read is one line."""
    from gainet.shortcuts.jobs import load_contexts

    class Subject:  # what load_contexts reads of a subject
        class config:
            dataset, train_split, dataset_options, data_root, image_size = "folder", "nosuchsplit", {}, None, 32
            val_split = "val"
            train_images = val_images = None

    test = load_annotated(ColourWorld(n=30), progress=False)
    contexts, where = load_contexts(Subject(), None, test=test, test_split="val", swap_mask="mask", limit=None,
                                    seed=0, progress=False)
    assert contexts is None and "the split under test" in where
    with pytest.raises(ValueError):
        load_contexts(Subject(), "nosuchsplit", test=test, test_split="val", swap_mask="mask", limit=None, seed=0,
                      progress=False)
