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
    verdict,
)
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

    def __init__(self, n: int = 30, seed: int = 0, boxes: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            label = i % 3
            image = CONTEXT[label].view(3, 1, 1) + 0.03 * torch.randn(3, SIZE, SIZE, generator=g)
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
    assert "reads the context" in context["verdict"]
    obj = _diagnose(ColourModel("object"), data)
    assert obj["mixed_same"] == obj["mixed_rand"] == 1.0 and obj["gap"] == 0.0
    assert obj["context_rate"] < 0.5  # without an object it has no evidence (ties: class 0 of 3)
    assert "the object decides" in obj["verdict"]


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
            image = splits.images[name][position]
            inside = data.objects[i] > 0.5
            assert torch.equal(image[:, inside], data.images[i][:, inside])
            outside = (data.holes[i] < 0.5) & (dilate(data.holes[j][None], 1)[0] < 0.5)  # hole: mask + 1 px
            assert torch.allclose(image[:, outside], data.images[j][:, outside])  # j's own context
            # j's object is gone: its hole holds context colour, not j's object colour
            hole = (data.holes[j] > 0.5) & ~inside
            if bool(hole.any()):
                assert (image[:, hole].mean(1) - CONTEXT[classes[j]]).abs().max() < 0.1
    assert torch.equal(splits.images["original"], data.images)
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


def test_a_split_without_boxes_is_one_line_saying_what_to_annotate() -> None:
    with pytest.raises(ValueError, match=r"0 images carry .*at least 20 images of 2\+ classes") as error:
        load_annotated(ColourWorld(boxes=False), progress=False, where="split 'val'")
    assert "\n" not in str(error.value) and "split 'val'" in str(error.value)
    with pytest.raises(ValueError, match="at least 20"):
        load_annotated(ColourWorld(n=12), progress=False)


def test_verdict_thresholds() -> None:
    base = {"metric": "accuracy", "original": 0.9}
    assert "reads the context" in verdict({**base, "mixed_same": 0.94, "mixed_rand": 0.37, "gap": 0.57})
    assert "leans on" in verdict({**base, "mixed_same": 0.9, "mixed_rand": 0.83, "gap": 0.07})
    assert "the object decides" in verdict({**base, "mixed_same": 0.9, "mixed_rand": 0.88, "gap": 0.02})
    assert "no verdict" in verdict({**base, "mixed_same": math.nan, "mixed_rand": 0.5, "gap": math.nan})


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


def test_dfr_moves_a_context_reader_onto_the_object() -> None:
    train = load_annotated(ColourWorld(n=30, seed=1), progress=False, min_images=8)
    test = load_annotated(ColourWorld(n=30, seed=2), progress=False)
    model = ColourModel("context")
    before = _diagnose(model, test)
    details = fix_dfr(model, model, train, multi_label=False, seed=0)
    after = _diagnose(model, test)
    assert before["gap"] == 1.0 and after["gap"] <= 0.1 and after["mixed_rand"] >= 0.9
    # a context alone stops being evidence: confidence near chance (1/3)
    assert after["context_confidence"] < 0.5 < before["context_confidence"]
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
    from gainet.runner import evaluate_checkpoint

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
    for way in ("dfr", "guidance"):
        fixed = tmp_path / way
        assert main(["fix", *common, "--way", way, "--supervised-count", "10%", "--epochs", "1",
                     "--output-dir", str(fixed)]) == 0
        record = json.loads((fixed / "fix.json").read_text())
        assert record["way"] == way and record["supervised_count"] == 13 and record["fix_seconds"] > 0
        assert record["before"]["gap"] == pytest.approx(result["gap"])  # the same held-out test before
        assert (fixed / "after" / "diagnosis.json").is_file()
        metrics = evaluate_checkpoint(fixed / "fixed.pt", splits=["test_decorrelated"], output_dir=tmp_path / "ev")
        assert 0.0 <= metrics["splits"]["test_decorrelated"]["accuracy"] <= 1.0
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
