"""End-to-end training on a tiny world: every method, checkpoints, exact resume, CLI jobs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gainet.cli import main
from gainet.training.checkpoint import load_checkpoint, save_atomic
from gainet.training.config import TrainConfig
from gainet.training.data import build_datasets
from gainet.training.trainer import Trainer, train

TINY = dict(
    dataset="parts", image_size=32, train_images=48, val_images=16, model="small-cnn", model_width=8,
    epochs=2, warmup_epochs=1, batch_size=16, lr=3e-3, progress=False, tensorboard=False, threads=1,
)


def tiny(tmp_path: Path, **changes) -> TrainConfig:
    return TrainConfig(**{**TINY, "output_dir": str(tmp_path / "run"), **changes})


@pytest.mark.parametrize("method", ["cam", "gain", "gain-ext", "gain-adv"])
def test_each_method_trains_evaluates_and_writes_its_files(tmp_path: Path, method: str) -> None:
    config = tiny(tmp_path, method=method, supervised_count=8, tensorboard=method == "gain")
    final = train(config)
    run = Path(config.output_dir)
    for name in ("last.pt", "best.pt", "metrics.csv", "config.yaml", "final.json"):
        assert (run / name).is_file(), name
    with open(run / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # the warm-up epoch is classification only; mining/supervision start after it
    assert float(rows[0]["train/loss_am"]) == 0.0 and float(rows[0]["train/loss_e"]) == 0.0
    assert (float(rows[1]["train/loss_am"]) > 0) == (method != "cam")
    assert (float(rows[1]["train/loss_e"]) > 0) == (method == "gain-ext")
    assert ("train/loss_adversary" in rows[0]) == (method == "gain-adv")
    val = final["val"]
    assert 0.0 <= val["mAP"] <= 1.0 and 0.0 <= val["cam_miou"] <= 1.0 and 0.0 <= val["coverage"] <= 1.0
    if method == "gain":
        assert any((run / "tensorboard").iterdir())
    assert json.loads((run / "final.json").read_text())["val"]["images"] == 16


@pytest.mark.parametrize("method", ["gain-ext", "gain-adv-ext"])
def test_resume_from_epoch_checkpoint_matches_uninterrupted_run(tmp_path: Path, method: str) -> None:
    full = tiny(tmp_path, method=method, supervised_count=8, keep_epoch_checkpoints=True,
                output_dir=str(tmp_path / "full"))
    train(full)
    resumed = full.replace(output_dir=str(tmp_path / "resumed"), resume=str(tmp_path / "full" / "epoch-1.pt"),
                           keep_epoch_checkpoints=False)
    train(resumed)
    expected = load_checkpoint(tmp_path / "full" / "last.pt")
    actual = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert actual["epoch"] == expected["epoch"] == 2
    for key, value in expected["model"].items():
        assert torch.equal(actual["model"][key], value), key
    assert [r["train/loss"] for r in actual["history"]] == [r["train/loss"] for r in expected["history"]]
    if method == "gain-adv-ext":  # the adversary and its optimiser are restored too
        assert any(k.startswith("adversary.") for k in expected["model"])
        assert actual["adversary_optimizer"]["state"].keys() == expected["adversary_optimizer"]["state"].keys()
        for index, value in expected["adversary_optimizer"]["state"].items():
            assert torch.equal(actual["adversary_optimizer"]["state"][index]["exp_avg"], value["exp_avg"])


def test_resume_auto_continues_last_checkpoint(tmp_path: Path) -> None:
    config = tiny(tmp_path, method="cam", epochs=1, warmup_epochs=0)
    train(config)
    trainer = Trainer(config.replace(epochs=2, resume="auto"))
    assert trainer.start_epoch == 1
    assert trainer.fit()["epoch"] == 2


def test_gain_ext_supervises_the_requested_number_of_images(tmp_path: Path) -> None:
    train_set, _ = build_datasets(tiny(tmp_path, method="gain-ext", supervised_count=5))
    flags = [bool(train_set[i]["supervised"]) for i in range(len(train_set))]
    assert sum(flags) == 5
    by_fraction, _ = build_datasets(tiny(tmp_path, method="gain-ext", supervised_fraction=0.25))
    assert len(by_fraction.supervised) == 12
    assert build_datasets(tiny(tmp_path, method="gain"))[0].supervised == frozenset()
    with pytest.raises(ValueError, match="only 48 carry"):
        build_datasets(tiny(tmp_path, method="gain-ext", supervised_count=100))


def test_non_finite_loss_stops_with_one_line_error(tmp_path: Path, monkeypatch) -> None:
    import gainet.core.gain as gain_module

    monkeypatch.setattr(gain_module, "classification_loss", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 1 step 1"):
        train(tiny(tmp_path, method="cam"))
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing half-trained is saved


def test_atomic_save_leaves_previous_checkpoint_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_atomic({"model": {}, "config": {}, "epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_atomic({"model": {}, "config": {}, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "broken.pt")


def test_cli_train_config_file_overrides_evaluate_and_explain(tmp_path: Path, capsys) -> None:
    config_file = tmp_path / "train.yaml"
    values = {**TINY, "method": "gain", "epochs": 5, "output_dir": str(tmp_path / "cli")}
    config_file.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in values.items()))
    assert main(["train", "--config", str(config_file), "--epochs", "2", "--no-progress"]) == 0
    state = load_checkpoint(tmp_path / "cli" / "last.pt")
    assert state["epoch"] == 2 and state["config"]["method"] == "gain"

    assert main(["evaluate", "--checkpoint", str(tmp_path / "cli" / "best.pt"), "--output", str(tmp_path / "ev"),
                 "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0 <= metrics["splits"]["val"]["cam_miou"] <= 1
    table = (tmp_path / "ev" / "metrics.md").read_text()
    assert "| val |" in table and "| val (class-agnostic) |" in table and "part_coverage" in table
    assert 0 <= metrics["splits"]["val"]["agnostic_cam_miou"] <= 1
    assert main(["evaluate", "--checkpoint", str(tmp_path / "cli" / "best.pt"), "--output", str(tmp_path / "ev5"),
                 "--device", "cpu", "--attention-layer", "features.5"]) == 0  # another layer of the same weights
    other = json.loads((tmp_path / "ev5" / "metrics.json").read_text())
    assert metrics["attention_layer"] == "features" and other["attention_layer"] == "features.5"
    assert other["splits"]["val"]["mAP"] == metrics["splits"]["val"]["mAP"]
    assert other["splits"]["val"]["cam_miou"] != metrics["splits"]["val"]["cam_miou"]

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / name)
    out = tmp_path / "explained"
    assert main(["explain", str(images), "--checkpoint", str(tmp_path / "cli" / "last.pt"), "--top-k", "2",
                 "--save-npy", "--output", str(out), "--device", "cpu"]) == 0
    pngs, arrays = sorted(out.glob("*.png")), sorted(out.glob("*.npy"))
    assert len(pngs) == 4 and len(arrays) == 4
    attention = np.load(arrays[0])
    assert attention.shape == (32, 32) and 0 <= attention.min() and attention.max() <= 1
    assert main(["explain", str(images / "a.png"), "--checkpoint", str(tmp_path / "cli" / "last.pt"),
                 "--classes", "class1", "--output", str(out / "one"), "--device", "cpu"]) == 0
    assert [p.name for p in (out / "one").glob("*.png")] == ["a_class1.png"]

    (images / "corrupt.png").write_bytes(b"\x89PNG broken")
    capsys.readouterr()
    assert main(["explain", str(images / "corrupt.png"), "--checkpoint", str(tmp_path / "cli" / "last.pt"),
                 "--output", str(out), "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert "corrupt.png" in error and len(error.splitlines()) == 1
    assert main(["explain", str(images), "--checkpoint", str(tmp_path / "cli" / "last.pt"), "--classes", "dog",
                 "--output", str(out), "--device", "cpu"]) == 2
    assert "unknown class 'dog'" in capsys.readouterr().err


def test_cli_help_explains_every_command(capsys) -> None:
    for command in ("train", "evaluate", "explain", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: gainet " + command in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--method", "nope"])


def test_demo_writes_report_with_every_method(tmp_path: Path) -> None:
    from gainet.studies.demo import run_demo

    result = run_demo(tmp_path / "demo", epochs=1, threads=1, progress=False, parts=["attention"],
                      train_images=32, val_images=8, image_size=32, model_width=8,
                      faithfulness_images=2)  # tests/test_demo_faithfulness.py checks those rows
    html = (tmp_path / "demo" / "report.html").read_text()
    for method in ("cam", "gain", "gain-ext", "gain-adv"):
        assert f"<td>{method}</td>" in html
    assert (tmp_path / "demo" / "overlays.png").is_file() and (tmp_path / "demo" / "curves.png").is_file()
    methods = ["cam", "gain", "gain-ext", "gain-adv"]
    assert [r["method"] for r in result["rows"]] == [m + s for m in methods for s in ("", " (class-agnostic)")]
    for method in methods:  # the class-agnostic baseline row of each method is in the report
        assert f"<td>{method} (class-agnostic)</td>" in html
    assert "wrong_class_coverage" in html and "body_coverage" in html


def test_demo_shortcut_part_diagnoses_fixes_and_reports_beside_the_reference(tmp_path: Path, capsys) -> None:
    from gainet.studies.demo import run_demo

    quick = {"model": "small-cnn", "pretrained": None, "model_width": 8, "image_size": 32, "train_images": 320,
             "epochs": 1, "lr": 3e-3}
    result = run_demo(tmp_path / "demo", threads=1, progress=False, parts=["shortcut"], shortcut_overrides=quick,
                      shortcut_test_images=40)
    rows = result["shortcut"]
    assert [row["model"].split(" ")[0] for row in rows] == ["trained", "trained", "the"]
    diagnosis = json.loads((tmp_path / "demo" / "shortcut" / "diagnose-cam" / "diagnosis.json").read_text())
    assert rows[1]["background gap"] == pytest.approx(diagnosis["gap"])  # the table shows what diagnose measured
    accuracy = json.loads((tmp_path / "demo" / "shortcut" / "accuracy-fixed" / "accuracy.json").read_text())
    assert rows[2]["accuracy, test_decorrelated"] == pytest.approx(accuracy["test_decorrelated"])
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "reads the background" in html and 'href="shortcut/diagnose-cam/index.html"' in html
    assert (tmp_path / "demo" / "shortcut" / "diagnose-cam" / "index.html").is_file()
    printed = capsys.readouterr().out
    assert "background gap" in printed and rows[1]["verdict"] in printed
    again = run_demo(tmp_path / "demo", threads=1, progress=False, parts=["shortcut"], shortcut_overrides=quick,
                     shortcut_test_images=40)  # a second demo reuses the first's outputs
    assert again["shortcut"] == rows
