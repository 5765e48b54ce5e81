"""The demo's attention part reports faithfulness for each method's maps and its class-agnostic map.

The rows are checked against a computation of their own here: the maps of every class recomputed
from the saved weights, the class map (first label) and the plain mean of all class maps scored by
:func:`faithfulness_summary` (itself checked against loops in test_evaluation_faithfulness.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gainet.evaluation.faithfulness import faithfulness_summary

pytest.importorskip("matplotlib")

IMAGES = 4


def test_demo_reports_faithfulness_of_class_maps_beside_the_class_agnostic_map(tmp_path: Path) -> None:
    from gainet.data import build_dataset
    from gainet.studies.demo import run_demo
    from gainet.training.checkpoint import load_checkpoint
    from gainet.training.config import TrainConfig
    from gainet.training.trainer import build_gain

    torch.set_num_threads(1)
    result = run_demo(tmp_path / "demo", epochs=4, threads=1, progress=False, parts=["attention"], methods=["cam"],
                      faithfulness_images=IMAGES, train_images=128, val_images=8, image_size=32, model_width=8)
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"cam", "cam (class-agnostic)"}

    state = load_checkpoint(tmp_path / "demo" / "cam" / "last.pt")
    config = TrainConfig.from_dict(state["config"])
    gain = build_gain(config, len(state["classes"]), state["multi_label"])
    gain.load_state_dict(state["model"])
    gain.eval()
    dataset = build_dataset(config.dataset, config.val_split, image_size=config.image_size, train_transforms=False,
                            num_images=IMAGES, **config.dataset_options)
    samples = [dataset[i] for i in range(IMAGES)]
    images = torch.stack([s["image"] for s in samples])
    first = torch.tensor([int(s["labels"].nonzero()[0]) for s in samples])
    every = torch.arange(len(dataset.classes))
    # all class maps, one explain call per class: (B, K, H, W)
    maps = torch.stack([gain.explain(images, [int(c)] * IMAGES)[1] for c in every], dim=1)
    class_maps = maps[torch.arange(IMAGES), first]
    mean_maps = maps.mean(dim=1)  # the order of the mean is all the metrics read (a rescaling keeps it)
    score = "sigmoid" if state["multi_label"] else "softmax"
    expected = {"cam": faithfulness_summary(gain.model, images, class_maps, first, score=score),
                "cam (class-agnostic)": faithfulness_summary(gain.model, images, mean_maps, first, score=score)}
    for label, values in expected.items():
        for key in ("deletion_auc", "insertion_auc", "road_morf", "road_lerf", "road"):
            assert rows[label][key] == pytest.approx(values[key], abs=1e-5), (label, key)
    # the two rows score different maps: a row copied from the other would not pass the loop above
    assert expected["cam"]["road"] != pytest.approx(expected["cam (class-agnostic)"]["road"], abs=1e-4)
    html = (tmp_path / "demo" / "report.html").read_text()
    for column in ("deletion_auc", "insertion_auc", "road"):
        assert f"<th>{column}</th>" in html
