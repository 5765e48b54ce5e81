"""Training with --guidance and --supervised-share (issue 13): the sampler, every mode end to end,
bad input counted, exact resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from gainet.cli import main
from gainet.training.checkpoint import load_checkpoint
from gainet.training.config import TrainConfig
from gainet.training.data import SupervisedShareBatchSampler
from gainet.training.trainer import train

TINY = dict(
    dataset="bias", image_size=32, train_images=48, val_images=16, model="small-cnn", model_width=8,
    epochs=2, warmup_epochs=1, batch_size=16, lr=3e-3, progress=False, tensorboard=False, threads=1,
    method="cam", supervision="boxes",
)
ALL = "context-swap,context-only,actdiff,rrr,upweight,l_e"


def tiny(tmp_path: Path, **changes) -> TrainConfig:
    return TrainConfig(**{**TINY, "output_dir": str(tmp_path / "run"), **changes})


def _rows(config: TrainConfig) -> list[dict[str, str]]:
    with open(Path(config.output_dir) / "metrics.csv") as file:
        return list(csv.DictReader(file))


def test_share_sampler_puts_the_share_in_every_batch_and_ranks_split_the_global_batch() -> None:
    supervised = [3, 10, 11, 40, 57]
    sampler = SupervisedShareBatchSampler(100, supervised, 16, 0.25, seed=1, epoch=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6
    for batch in batches:
        assert len(batch) == 16 and len(set(batch)) == 16
        assert sum(i in supervised for i in batch) == 4
    assert batches == list(SupervisedShareBatchSampler(100, supervised, 16, 0.25, seed=1, epoch=2))
    assert batches != list(SupervisedShareBatchSampler(100, supervised, 16, 0.25, seed=1, epoch=3))
    ranks = [list(SupervisedShareBatchSampler(100, supervised, 16, 0.25, seed=1, epoch=2, rank=r, world_size=2))
             for r in range(2)]
    for step, batch in enumerate(batches):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
    # Fewer supervised images than the share asks for: all of them, every batch.
    assert all(sum(i in (5,) for i in b) == 1 for b in SupervisedShareBatchSampler(40, [5], 8, 0.5, seed=0, epoch=0))


@pytest.mark.parametrize("dataset", ["bias", "parts"])
def test_every_guidance_mode_trains_with_finite_logged_terms(tmp_path: Path, dataset: str) -> None:
    config = tiny(tmp_path, dataset=dataset, guidance=ALL, supervised_count=8, supervised_share=0.25, augment=True)
    final = train(config)
    rows = _rows(config)
    for name in ("context_swap", "context_only", "actdiff", "rrr", "upweight"):
        values = [float(r[f"train/guide_{name}"]) for r in rows]
        assert all(v > 0 and v == v for v in values), (name, values)
    # --guidance l_e runs from the first step, like every guidance mode (cam has no warm-up).
    assert float(rows[0]["train/loss_e"]) > 0 and float(rows[1]["train/loss_e"]) > 0
    for key in ("swaps", "context_images", "counterparts"):
        assert float(rows[1][f"guidance/{key}"]) > 0, key
    assert final["val"]["images"] == 16


def test_bad_supervision_is_skipped_and_counted_never_nan(tmp_path: Path) -> None:
    # One supervised image: no second image to swap with, every batch; ActDiff's counterpart and
    # the context-only image need none.
    config = tiny(tmp_path, guidance="context-swap,actdiff,context-only", supervised_count=1, supervised_share=0.25,
                  epochs=1, warmup_epochs=0)
    train(config)
    row = _rows(config)[0]
    assert float(row["guidance/no_partner"]) == 3 and float(row["guidance/swaps"]) == 0
    assert float(row["guidance/counterparts"]) == 3 and float(row["guidance/context_images"]) == 3
    assert float(row["train/guide_context_swap"]) == 0.0 and float(row["train/guide_actdiff"]) > 0
    assert float(row["train/loss"]) == float(row["train/loss"])
    # Boxes on no image at all: nothing to guide, still a clean run.
    config = tiny(tmp_path, guidance="context-swap,rrr", supervised_count=0, supervised_share=0.25, epochs=1,
                  warmup_epochs=0, output_dir=str(tmp_path / "none"))
    train(config)
    assert float(_rows(config)[0]["guidance/no_supervised"]) == 3


def test_guided_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    full = tiny(tmp_path, guidance="context-swap,rrr", supervised_count=8, supervised_share=0.25,
                keep_epoch_checkpoints=True, output_dir=str(tmp_path / "full"))
    train(full)
    train(full.replace(output_dir=str(tmp_path / "resumed"), resume=str(tmp_path / "full" / "epoch-1.pt"),
                       keep_epoch_checkpoints=False))
    expected, actual = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    for key, value in expected["model"].items():
        assert torch.equal(actual["model"][key], value), key


def test_unknown_guidance_mode_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="unknown guidance mode 'swap'"):
        tiny(tmp_path, guidance="context-swap,swap")
    with pytest.raises(ValueError, match="supervised_share"):
        tiny(tmp_path, supervised_share=1.5)
    code = main(["train", "--dataset", "bias", "--guidance", "swap", "--output-dir", str(tmp_path / "x")])
    assert code != 0
    assert "unknown guidance mode 'swap'" in capsys.readouterr().err


def test_grabcut_runs_once_per_image_is_cached_and_moves_with_the_augmentation(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    cache = tmp_path / "cache"
    config = tiny(tmp_path, guidance="context-swap", supervised_count=8, supervised_share=0.5, swap_mask="grabcut",
                  swap_partners=3, grabcut_cache=str(cache), augment=True)
    train(config)
    rows = _rows(config)
    # 8 supervised images per batch of 16, each pasted on 3 contexts (the world's 4 classes give
    # enough other-class partners in almost every batch): far more swaps than supervised images.
    assert all(float(r["guidance/swaps"]) > 8 * 3 for r in rows)
    assert all(torch.isfinite(torch.tensor(float(r["train/guide_context_swap"]))) for r in rows)
    first = json.loads((tmp_path / "run" / "final.json").read_text())["grabcut"]
    assert first["estimated"] == 8 and first["cached"] == 0 and len(list(cache.glob("*.png"))) == 8
    # A second run (another output directory) reads every estimate back instead of running GrabCut.
    train(config.replace(output_dir=str(tmp_path / "again"), epochs=1))
    again = json.loads((tmp_path / "again" / "final.json").read_text())["grabcut"]
    assert again["estimated"] == 0 and again["cached"] == 8 and again["kept_box"] == first["kept_box"]
    # The paste mask is moved by the same random crop and flip as the image: inside its box.
    from gainet.training.data import build_datasets

    train_set, _ = build_datasets(config)
    for index in sorted(train_set.supervised)[:4]:
        sample = train_set[index]
        paste, box = sample["paste_mask"], sample["box_masks"].amax(0)
        assert bool((paste <= box).all()) and bool(paste.any())
    with pytest.raises(ValueError, match="swap_mask=attention was removed"):
        tiny(tmp_path, swap_mask="attention")
    with pytest.raises(ValueError, match="swap_partners"):
        tiny(tmp_path, swap_partners=0)


def test_one_supervised_image_at_32_px_into_resnet18_trains(tmp_path: Path) -> None:
    """Issue 18: the separate guidance forward normalised 1-2 images and raised "Expected more than
    1 value per channel when training" where the feature map is 1x1; the rows now share the batch."""
    single = tiny(tmp_path, model="resnet18", guidance="context-only", supervised_count=1, supervised_share=0.25,
                  epochs=1, warmup_epochs=0, output_dir=str(tmp_path / "single"))
    train(single)  # one context-only image per batch: the case that raised
    assert float(_rows(single)[0]["guidance/context_images"]) == 3
    config = tiny(tmp_path, model="resnet18", guidance="context-swap,context-only,actdiff,rrr", supervised_count=1,
                  supervised_share=0.25, epochs=1, warmup_epochs=0)
    train(config)
    row = _rows(config)[0]
    assert float(row["guidance/context_images"]) == 3 and float(row["guidance/counterparts"]) == 3
    for name in ("context_only", "actdiff", "rrr"):
        value = float(row[f"train/guide_{name}"])
        assert value == value and value > 0, name
