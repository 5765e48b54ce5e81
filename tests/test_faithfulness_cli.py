"""The opt-in faithfulness and randomisation reports of `gainet evaluate` and `gainet explain`:
the numbers reach metrics.json / metrics.md / checks.json and are those of the metrics module on
the same model, images and maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gainet.cli import main
from gainet.evaluation.faithfulness import FAITHFULNESS_METRICS, perturbation_curve
from gainet.models import SmallConvNet
from gainet.training.config import TrainConfig
from gainet.training.trainer import train


def test_evaluate_reports_faithfulness_beside_the_class_agnostic_row(tmp_path: Path, capsys) -> None:
    train(TrainConfig(dataset="parts", image_size=32, train_images=16, val_images=8, model="small-cnn", model_width=4,
                      epochs=1, warmup_epochs=0, batch_size=8, progress=False, tensorboard=False, threads=1,
                      method="cam", output_dir=str(tmp_path / "run")))
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--output", str(tmp_path / "ev"),
                 "--device", "cpu", "--faithfulness", "3", "--randomisation", "3", "--no-progress"]) == 0
    val = json.loads((tmp_path / "ev" / "metrics.json").read_text())["splits"]["val"]
    for key in FAITHFULNESS_METRICS:
        assert np.isfinite(val[key]) and np.isfinite(val["agnostic_" + key])
    assert 0 <= val["deletion_auc"] <= 1 and val["faithfulness_images"] == 3 and val["randomisation_images"] == 3
    assert -1 <= val["randomisation_spearman"] <= 1 and len(val["randomisation_curve"]) >= 2
    table = (tmp_path / "ev" / "metrics.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| split"))
    assert "deletion_auc" in header and "road" in header and "randomisation_spearman" in header
    agnostic_row = next(line for line in table.splitlines() if "(class-agnostic)" in line)
    column = [c.strip() for c in header.split("|")].index("deletion_auc")
    assert float(agnostic_row.split("|")[column]) == round(val["agnostic_deletion_auc"], 3)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--faithfulness", "-1"]) == 2
    assert "--faithfulness must be >= 0" in capsys.readouterr().err


def test_explain_writes_the_checks_of_its_maps(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "small.pt"
    model = SmallConvNet(3, width=4).eval()
    torch.save(model.state_dict(), weights)
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / name)
    out = tmp_path / "out"
    assert main(["explain", str(folder), "--model", "small-cnn", "--weights", str(weights), "--image-size", "32",
                 "--output", str(out), "--device", "cpu", "--save-npy", "--faithfulness", "--randomisation"]) == 0
    printed = capsys.readouterr().out
    assert "faithfulness (mean" in printed and "randomisation (Spearman" in printed
    checks = json.loads((out / "checks.json").read_text())
    assert [row["map"] for row in checks["faithfulness"]] == sorted(p.stem for p in out.glob("*.npy"))
    # the deletion AUC of map a: recomputed from the saved map and the model on the same input
    row = checks["faithfulness"][0]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = torch.from_numpy(np.asarray(Image.open(folder / "a.png"), dtype=np.float32) / 255).permute(2, 0, 1)
    image = ((pixels - mean[:, None, None]) / std[:, None, None])[None]
    saved = torch.from_numpy(np.load(out / f"{row['map']}.npy"))[None]
    cls = int(row["map"].split("_")[-1])
    curve = perturbation_curve(model, image, saved, torch.tensor([cls]), baseline="zero")
    assert abs(float(curve.auc[0]) - row["deletion_auc"]) < 1e-4
    assert -1 <= checks["randomisation_spearman"] <= 1
