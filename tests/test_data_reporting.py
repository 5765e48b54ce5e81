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
    return ["train", "--dataset", "folder", "--data-root", str(root), "--output-dir", str(output), "--method", "cam",
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
