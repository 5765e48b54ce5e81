"""``gainet explain --model``: Grad-CAM of any classifier without training; unique names, argument
checks and counted skips."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gainet.cli import main
from gainet.evaluation.explain import output_stems, safe_name
from gainet.models import SmallConvNet, imagenet_categories

SIZE = 32
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)


@pytest.fixture
def small_weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "small.pt"
    torch.save(SmallConvNet(3, width=4).state_dict(), path)
    return path


def _images(folder: Path, names: list[str], size: int = SIZE) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _independent_gradcam(weights: Path, image: Path, class_index: int) -> np.ndarray:
    """Grad-CAM of small-cnn's ``features`` in float64, written out from its definition."""
    model = SmallConvNet(3, width=4).double().eval()
    model.load_state_dict(torch.load(weights, weights_only=True))
    pixels = torch.from_numpy(np.asarray(Image.open(image), dtype=np.float64) / 255.0).permute(2, 0, 1)
    x = ((pixels - MEAN[:, None, None]) / STD[:, None, None])[None]
    features = model.features(x)
    logit = model.fc(features.mean(dim=(2, 3)))[0, class_index]
    (gradient,) = torch.autograd.grad(logit, features)
    cam = F.relu((gradient.mean(dim=(2, 3))[:, :, None, None] * features).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]
    return ((cam - cam.min()) / (cam.max() - cam.min())).detach().numpy()


def test_explain_any_model_from_a_weights_file_matches_gradcam(tmp_path: Path, small_weights: Path, capsys) -> None:
    (image,) = _images(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    assert main(["explain", str(image), "--model", "small-cnn", "--weights", str(small_weights), "--image-size",
                 str(SIZE), "--classes", "2", "--save-npy", "--output", str(out), "--device", "cpu"]) == 0
    assert "wrote 1 overlays" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["a_2.npy", "a_2.png"]
    np.testing.assert_allclose(np.load(out / "a_2.npy"), _independent_gradcam(small_weights, image, 2), atol=1e-5)
    assert np.asarray(Image.open(out / "a_2.png")).shape == (SIZE, SIZE, 3)
    # top-k by score, one overlay per class, indices as names (small-cnn has no class names)
    assert main(["explain", str(image), "--model", "small-cnn", "--weights", str(small_weights), "--image-size",
                 str(SIZE), "--top-k", "5", "--output", str(out / "top"), "--device", "cpu"]) == 0
    assert sorted(p.name for p in (out / "top").iterdir()) == ["a_0.png", "a_1.png", "a_2.png"]


def test_a_1000_class_model_gets_imagenet_names(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    weights = tmp_path / "tiny_timm.pth"
    torch.save(timm.create_model("test_efficientnet", pretrained=False).state_dict(), weights)
    _images(tmp_path / "in", ["x.png"], size=48)
    out = tmp_path / "out"
    assert main(["explain", str(tmp_path / "in"), "--model", "timm:test_efficientnet", "--weights", str(weights),
                 "--image-size", "48", "--top-k", "2", "--classes", "tench", "goldfish", "--output", str(out),
                 "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["x_goldfish.png", "x_tench.png"]
    twelve_k = tmp_path / "tiny_timm_12k.pth"
    torch.save(timm.create_model("test_efficientnet", pretrained=False, num_classes=11821).state_dict(), twelve_k)
    assert main(["explain", str(tmp_path / "in"), "--model", "timm:test_efficientnet", "--weights", str(twelve_k),
                 "--image-size", "48", "--classes", "benthos", "--output", str(out / "12k"), "--device", "cpu"]) == 0
    assert [p.name for p in (out / "12k").iterdir()] == ["x_benthos.png"]  # timm's ImageNet-12k names
    categories = imagenet_categories()  # torchvision's metadata: offline
    assert len(categories) == 1000 and categories[0] == "tench" and safe_name("great white shark") == "great_white_shark"


def test_same_stems_get_distinct_overlays(tmp_path: Path, small_weights: Path, capsys) -> None:
    paths = _images(tmp_path, ["one/cat.png", "two/cat.png", "cat.jpg", "cat-2.png"])
    assert output_stems(paths) == ["cat", "cat-3", "cat-4", "cat-2"]  # cat-2 is a real file's stem
    out = tmp_path / "out"
    assert main(["explain", *map(str, paths), "--model", "small-cnn", "--weights", str(small_weights),
                 "--classes", "1", "--image-size", str(SIZE), "--output", str(out), "--device", "cpu"]) == 0
    assert "wrote 4 overlays" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["cat-2_1.png", "cat-3_1.png", "cat-4_1.png", "cat_1.png"]


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path, small_weights: Path, capsys) -> None:
    folder = tmp_path / "in"
    _images(folder, ["a.png", "c.png"])
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(folder / "b.jpg", quality=95)
    data = (folder / "b.jpg").read_bytes()
    (folder / "b.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    out = tmp_path / "out"
    assert main(["explain", str(folder), "--model", "small-cnn", "--weights", str(small_weights), "--image-size",
                 str(SIZE), "--output", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("wrote 2 overlays") and "skipped 1 unreadable images (first: " in printed
    assert "b.jpg" in printed and len(printed.splitlines()) == 1
    assert sorted(p.name.split("_")[0] for p in out.iterdir()) == ["a", "c"]


@pytest.mark.parametrize("argv, message", [
    (["--top-k", "-1"], "--top-k must be >= 1, got -1"),
    (["--top-k", "0"], "--top-k must be >= 1, got 0"),
    (["--classes", "7"], "unknown class '7'"),
    (["--image-size", "0"], "--image-size must be >= 8"),
])
def test_bad_arguments_are_one_line_errors(tmp_path: Path, small_weights: Path, capsys, argv, message) -> None:
    (image,) = _images(tmp_path, ["a.png"])
    assert main(["explain", str(image), "--model", "small-cnn", "--weights", str(small_weights), "--output",
                 str(tmp_path / "out"), "--device", "cpu", *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_model_sources_are_checked_without_downloading(tmp_path: Path, small_weights: Path, capsys) -> None:
    (image,) = _images(tmp_path, ["a.png"])
    assert main(["explain", str(image), "--model", "resnet18", "--device", "cpu"]) == 2
    assert "needs --weights FILE or --pretrained" in capsys.readouterr().err
    assert main(["explain", str(image), "--checkpoint", "x.pt", "--weights", str(small_weights)]) == 2
    assert "--weights goes with --model" in capsys.readouterr().err

    class Payload:  # a pickle that would run code when loaded without weights_only
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"fc.weight": Payload()}, protocol=2))
    assert main(["explain", str(image), "--model", "small-cnn", "--weights", str(evil), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert "evil.pt: not a readable state-dict file" in captured.err and "pwned" not in captured.out
    wrong = tmp_path / "wrong.pt"
    torch.save({"something.weight": torch.zeros(2)}, wrong)
    assert main(["explain", str(image), "--model", "small-cnn", "--weights", str(wrong), "--device", "cpu"]) == 2
    assert "not a small-cnn state dict" in capsys.readouterr().err
