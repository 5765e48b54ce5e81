"""Bad data seen from the command line: one line per error (also from DataLoader workers),
and skipped files counted and reported in the log, metrics.csv, final.json and metrics.json."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from gainet.cli import main
from gainet.data import DataError

from conftest import save_image


def _folder(root: Path, names: str = "abcdef") -> Path:
    """Six 24x24 images, labels cat/dog alternating, split train (first four) / val (last two)."""
    rows = []
    for number, name in enumerate(names):
        save_image(root / "images" / f"{name}.png", 24, 24, seed=number)
        rows.append(f"{name}.png,{'cat' if number % 2 else 'dog'},{'train' if number < 4 else 'val'}")
    (root / "labels.csv").write_text("image,labels,split\n" + "\n".join(rows) + "\n")
    return root


def _train_args(root: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "folder", "--data-root", str(root), "--output-dir", str(output), "--method", "cam", "--model", "small-cnn",
            "--model-width", "4", "--image-size", "16", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "2",
            "--no-progress", "--no-tensorboard", "--threads", "1", *extra]


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_data_error_pickles_with_file_and_problem():
    err = pickle.loads(pickle.dumps(DataError("x/y.png", "cannot read: image")))
    assert (err.file, err.problem, str(err)) == ("x/y.png", "cannot read: image", "x/y.png: cannot read: image")


def test_bad_file_in_a_worker_is_one_line_on_the_command_line(tmp_path, capsys):
    root = _folder(tmp_path / "d")
    (root / "images" / "b.png").write_bytes(b"junk")
    assert main(_train_args(root, tmp_path / "run", "--num-workers", "1")) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"gainet train: error: {root / 'images' / 'b.png'}: cannot read image"), lines


@pytest.mark.parametrize(
    "options, message",
    [
        ("on_eror=skip", "unknown parts dataset option 'on_eror'; valid: "),
        ("objects=3", "parts dataset option objects=3 must be a list [an integer, an integer]"),
        ("image_size=20", "dataset option 'image_size': set by the training config"),
    ],
)
def test_bad_dataset_options_are_one_line(tmp_path, capsys, options, message):
    args = ["train", "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--warmup-epochs", "0",
            "--dataset-options", options]
    assert main(args) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"gainet train: error: {message}"), lines


def test_folder_and_voc_dataset_options_are_checked(tmp_path, capsys):
    from gainet.data import build_dataset

    root = _folder(tmp_path / "d")
    with pytest.raises(ValueError, match=r"^unknown folder dataset option 'on_eror'; valid: .*on_error"):
        build_dataset("folder", "train", root=root, on_eror="skip")
    with pytest.raises(ValueError, match=r"^folder dataset option validate='yes' must be true or false$"):
        build_dataset("folder", "train", root=root, validate="yes")
    assert len(build_dataset("folder", "train", root=root, on_error="skip", classes=["cat", "dog"])) == 4
    with pytest.raises(ValueError, match=r"^unknown voc dataset option 'images'"):
        build_dataset("voc", "train", root=root, images="pics")
    assert main(_train_args(root, tmp_path / "run", "--dataset-options", "masks=3")) == 2
    lines = _error_lines(capsys)
    assert lines == ["gainet train: error: folder dataset option masks=3 must be text or null"], lines


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("epochs: ten\n", "config value epochs='ten' must be an integer"),
        ("lr: fast\n", "config value lr='fast' must be a number"),
        ("dataset_options: [1]\n", "config value dataset_options=[1] must be a mapping"),
        ("progress: 3\n", "config value progress=3 must be true or false"),
    ],
)
def test_yaml_value_of_the_wrong_type_is_one_line(tmp_path, capsys, yaml_text, message):
    (tmp_path / "c.yaml").write_text(yaml_text)
    key = yaml_text.split(":")[0]
    quick = {"epochs": "1", "warmup-epochs": "0", "train-images": "8", "val-images": "4", "image-size": "32",
             "model-width": "4", "batch-size": "4", "threads": "1"}  # should the check be missing
    args = [item for flag, value in quick.items() if flag != key for item in (f"--{flag}", value)]
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "run"),
                 "--no-tensorboard", *args]) == 2
    lines = _error_lines(capsys)
    assert lines == [f"gainet train: error: {message}"], lines


def test_yaml_number_written_as_text_is_read_as_a_number():
    from gainet.training.config import TrainConfig

    # PyYAML reads "1e-3" (no dot) as text; a float field takes it as the number it spells.
    config = TrainConfig.from_dict({"lr": "1e-3", "grad_clip": "2"})
    assert config.lr == 0.001 and config.grad_clip == 2.0


def test_skipped_files_are_counted_in_the_log_metrics_final_json_and_evaluate_report(tmp_path, caplog, capsys):
    import csv
    import json
    import logging

    root = _folder(tmp_path / "d")
    with open(root / "labels.csv", "a") as file:
        file.write("ghost.png,cat,train\n")  # listed, not on disk: dropped when the dataset is built
    (root / "images" / "f.png").write_bytes(b"junk")  # val image that cannot be decoded (validate=true)
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert main(_train_args(root, run, "--dataset-options", "on_error=skip,validate=true")) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("split 'train': 1 file skipped (on_error=skip): ") and "ghost.png" in w for w in warnings)
    assert any(w.startswith("split 'val': 1 file skipped") and "f.png: cannot read image" in w for w in warnings)
    with open(run / "metrics.csv") as file:
        row = next(csv.DictReader(file))
    assert (row["train/skipped"], row["val/skipped"]) == ("1", "1")
    final = json.loads((run / "final.json").read_text())
    assert final["train/skipped"] == 1 and final["val"]["skipped"] == 1
    assert [Path(item["file"]).name for item in final["train_skipped_files"]] == ["ghost.png"]
    assert len(final["val"]["skipped_files"]) == 1
    assert final["val"]["skipped_files"][0].startswith(f"{root / 'images' / 'f.png'}: cannot read image")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", "--checkpoint", str(run / "last.pt"), "--output", str(tmp_path / "ev"),
                     "--device", "cpu"]) == 0
    assert any("1 file skipped" in r.getMessage() and "f.png" in r.getMessage() for r in caplog.records)
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())["splits"]["val"]
    assert metrics["skipped"] == 1 and metrics["images"] == 1 and "f.png" in metrics["skipped_files"][0]
    table = (tmp_path / "ev" / "metrics.md").read_text()
    assert "skipped" in table.splitlines()[2]  # the table's header row names the column


def test_evaluate_refuses_a_dataset_whose_classes_differ_from_the_checkpoints(tmp_path, capsys):
    from conftest import write_lines

    root = _folder(tmp_path / "d")  # classes inferred from labels.csv: cat, dog
    assert main(_train_args(root, tmp_path / "run")) == 0
    capsys.readouterr()
    checkpoint = str(tmp_path / "run" / "last.pt")
    swapped = _folder(tmp_path / "swapped")
    write_lines(swapped / "classes.txt", ["dog", "cat"])  # the same classes, another order
    evaluate = ["evaluate", "--checkpoint", checkpoint, "--output", str(tmp_path / "ev"), "--device", "cpu"]
    assert main([*evaluate, "--data-root", str(swapped)]) == 2
    lines = _error_lines(capsys)
    assert lines == [f"gainet evaluate: error: {checkpoint} on split 'val': the model's classes are the dataset's in "
                     "another order (position 1: model 'cat', data 'dog'); evaluate with the class list it was "
                     "trained on"], lines
    assert not (tmp_path / "ev" / "metrics.json").exists()
    write_lines(swapped / "classes.txt", ["cat", "dog", "emu"])
    assert main([*evaluate, "--data-root", str(swapped)]) == 2
    assert _error_lines(capsys) == [f"gainet evaluate: error: {checkpoint} on split 'val': the model's 2 classes "
                                    "differ from the dataset's 3: only the data has emu"]
    assert main([*evaluate, "--data-root", str(root)]) == 0
    assert (tmp_path / "ev" / "metrics.json").exists()


def test_check_same_classes_passes_equal_lists_only():
    from gainet.evaluation.evaluate import check_same_classes

    check_same_classes(["a", "b"], ("a", "b"), "x")
    with pytest.raises(ValueError, match=r"^x: the model's 2 classes differ from the dataset's 2: only the model has "
                                         r"b; only the data has c$"):
        check_same_classes(["a", "b"], ["a", "c"], "x")
