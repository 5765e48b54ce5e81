"""One round of self-training: the restricted argmax against a per-pixel loop, and a tiny trained
network's predictions written as labels that train-seg reads, checked against a forward pass of
the network done here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gainet.wsss import data as io
from gainet.wsss.self_training import image_class_argmax, self_training_labels

from test_wsss_units import _write_cams_dir


def loop_argmax(probabilities: np.ndarray, labels: list[int]) -> np.ndarray:
    """Per pixel, the best of background and 1 + each image class, the lowest index on ties."""
    allowed = [0] + sorted(1 + k for k in labels)
    out = np.zeros(probabilities.shape[1:], np.int64)
    for y in range(probabilities.shape[1]):
        for x in range(probabilities.shape[2]):
            out[y, x] = max(allowed, key=lambda c: (probabilities[c, y, x], -c))
    return out


def test_image_class_argmax_matches_a_per_pixel_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.rand(6, 7, 9, generator=generator, dtype=torch.float64).softmax(0)
    for labels in ([1, 3], [4], []):
        expected = loop_argmax(probabilities.numpy(), labels)
        assert np.array_equal(image_class_argmax(probabilities, labels), expected), labels
    # the restriction matters here: the plain argmax names classes outside the image's labels
    assert not np.array_equal(probabilities.argmax(0).numpy(), loop_argmax(probabilities.numpy(), [1, 3]))
    with pytest.raises(ValueError, match="beyond the 5 classes"):
        image_class_argmax(probabilities, [5])


def test_self_training_labels_are_the_networks_restricted_predictions(tmp_path: Path) -> None:
    from gainet.wsss.config import SegConfig
    from gainet.wsss.pseudo_labels import make_pseudo_labels
    from gainet.wsss.seg_trainer import load_seg_model, train_seg
    from gainet.wsss.segmentation_model import logits

    dataset = _write_cams_dir(tmp_path / "c", 0.8, 0.3)
    make_pseudo_labels(tmp_path / "c", tmp_path / "l", fg_threshold=0.5, progress=False, evaluate=False)
    config = SegConfig(labels_dir=str(tmp_path / "l"), output_dir=str(tmp_path / "s"), epochs=1, batch_size=2,
                       threads=1, progress=False, device="cpu", crop_size=24)
    train_seg(config)
    result = self_training_labels(tmp_path / "s" / "last.pt", tmp_path / "l", tmp_path / "st", progress=False)
    assert (result["written"], result["skipped"], result["images"]) == (3, 0, 3)
    assert result["eval"] is not None and result["eval"]["ignored_fraction"] == 0.0

    model, state = load_seg_model(tmp_path / "s" / "last.pt", torch.device("cpu"))
    mean, std = torch.tensor(state["mean"]).view(3, 1, 1), torch.tensor(state["std"]).view(3, 1, 1)
    for _, item in io.iterate(dataset):
        image = (torch.from_numpy(item.image).permute(2, 0, 1).float() / 255 - mean) / std
        with torch.no_grad():
            probabilities = logits(model, image[None]).double().softmax(1)[0].numpy()
        saved = io.load_index_png(io.item_path(tmp_path / "st" / "labels", item.image_id, ".png"))
        assert np.array_equal(saved, loop_argmax(probabilities, list(item.labels))), item.image_id
        assert set(np.unique(saved)) <= {0, *(1 + k for k in item.labels)}

    meta = json.loads((tmp_path / "st" / "meta.json").read_text())
    assert meta["stage"] == "pseudo-labels" and meta["self_training"]["source_labels"] == str((tmp_path / "l").resolve())
    again = self_training_labels(tmp_path / "s" / "last.pt", tmp_path / "l", tmp_path / "st", progress=False,
                                 evaluate=False)
    assert (again["written"], again["skipped"]) == (0, 3)
    # the folder is a labels folder like any other: train-seg trains on it
    assert train_seg(config.replace(labels_dir=str(tmp_path / "st"), output_dir=str(tmp_path / "s2")))["epoch"] == 1
