"""``gainet bias-study`` end to end on a tiny bias world: every run, the files, the table, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_lines, write_voc_xml
from gainet.studies.bias_study import markdown_report, parse_supervision, recommend, study_runs, summarise, target_check
from gainet.cli import main
from gainet.data.worlds import BiasWorld


def test_parse_supervision_counts_fractions_and_percentages() -> None:
    assert parse_supervision(["0", "1%", "0.02", "5%", "10%"], 2000) == [0, 20, 40, 100, 200]
    assert parse_supervision(["3", "3", 0.5], 10) == [3, 5]
    with pytest.raises(ValueError, match="outside 0..10"):
        parse_supervision(["11"], 10)
    with pytest.raises(ValueError, match="expected a count"):
        parse_supervision(["lots"], 10)
    assert [r["run"] for r in study_runs([0, 4])] == ["reference", "cam", "gain", "gain-ext-4"]


def test_summary_is_mean_and_std_over_seeds() -> None:
    rows = [{"run": "cam", "method": "cam", "supervised": 0, "train_split": "train", "seed": s, "train_seconds": 6.0,
             "biased_accuracy": a, "decorrelated_accuracy": 0.5, "conflict_accuracy": 0.4,
             "decorrelated_box_energy": float("nan"), "biased_box_energy": 0.3} for s, a in enumerate((0.8, 0.9, 1.0))]
    (entry,) = summarise(rows)
    assert entry["seeds"] == 3 and entry["biased_accuracy"] == pytest.approx(0.9)
    assert entry["biased_accuracy_std"] == pytest.approx(0.1)
    assert entry["decorrelated_box_energy"] != entry["decorrelated_box_energy"]  # NaN when no seed has it


def test_bias_study_cli_writes_results_table_and_plot(tmp_path: Path, capsys) -> None:
    output = tmp_path / "study"
    args = ["bias-study", "--output", str(output), "--supervised-count", "0", "25%", "--seeds", "2",
            "--train-images", "32", "--test-images", "16", "--image-size", "32", "--model-width", "8", "--epochs", "2",
            "--options", "warmup_epochs=1,batch_size=16,val_images=16", "--threads", "1", "--no-progress"]
    assert main(args) == 0
    results = json.loads((output / "results.json").read_text())
    assert results["supervision"] == [0, 8] and results["seeds"] == [0, 1]
    assert [(r["run"], r["seed"]) for r in results["runs"]] == [
        (name, seed) for seed in (0, 1) for name in ("reference", "cam", "gain", "gain-ext-8")]
    by_run = {e["run"]: e for e in results["summary"]}
    assert by_run["reference"]["train_split"] == "train_unbiased" and by_run["gain-ext-8"]["supervised"] == 8
    for entry in results["summary"]:
        for metric in ("biased_accuracy", "decorrelated_accuracy", "conflict_accuracy", "decorrelated_box_energy"):
            assert 0.0 <= entry[metric] <= 1.0 and entry[f"{metric}_std"] >= 0.0
    # the 25% run supervised 8 images, the others none
    config = json.loads((output / "runs" / "seed0" / "gain-ext-8" / "result.json").read_text())["config"]
    assert config["method"] == "gain-ext" and config["supervision"] == "boxes" and config["supervised_count"] == 8
    target = results["target"]
    assert target is None or set(target) >= {"ratio", "met"}
    table = (output / "table.md").read_text()
    assert "| accuracy, test_decorrelated |" in table and "GAIN_ext N=8 (25%)" in table and " ± " in table
    assert (output / "accuracy_vs_supervision.png").stat().st_size > 10_000
    assert "| measure |" in capsys.readouterr().out

    # finished runs are cached: a second call trains nothing and gives the same table
    stamp = (output / "runs" / "seed1" / "gain" / "last.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (output / "runs" / "seed1" / "gain" / "last.pt").stat().st_mtime_ns == stamp
    assert (output / "table.md").read_text() == table


def _bias_folder(root: Path, box_format: str, per_split: int = 16) -> None:
    """The bias world's splits exported as a folder dataset: PNGs, labels.csv with a split column,
    classes.txt, and the object boxes as COCO JSON (``coco``) or VOC XML files (``voc``)."""
    rows, images, annotations = ["image,labels,split"], [], []
    classes = None
    for split in ("train", "train_unbiased", "val", "test_biased", "test_decorrelated"):
        world = BiasWorld(split, image_size=32, num_images=per_split, stats_images=8)
        classes = world.classes
        for index in range(per_split):
            item = world.rendered(index)
            name = f"{split}-{index:03d}"
            (root / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(item.image).save(root / "images" / f"{name}.png")
            label = classes[int(item.box_labels[0])]
            rows.append(f"{name}.png,{label},{split}")
            x0, y0, x1, y1 = (float(v) for v in item.boxes[0])
            if box_format == "coco":
                images.append({"id": len(images) + 1, "file_name": f"{name}.png", "width": 32, "height": 32})
                annotations.append({"id": len(annotations) + 1, "image_id": len(images),
                                    "category_id": classes.index(label) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0]})
            else:  # VOC corners: 1-based, inclusive
                write_voc_xml(root / "boxes" / f"{name}.xml", 32, 32,
                              [(label, (int(x0) + 1, int(y0) + 1, int(np.ceil(x1)), int(np.ceil(y1))))])
    write_lines(root / "classes.txt", classes)
    write_lines(root / "labels.csv", rows)
    if box_format == "coco":
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
        (root / "boxes.json").write_text(json.dumps({"images": images, "categories": categories,
                                                     "annotations": annotations}))


@pytest.mark.parametrize("box_format", ["coco", "voc"])
def test_bias_study_runs_on_a_folder_dataset_with_coco_or_voc_boxes(tmp_path: Path, box_format: str) -> None:
    root = tmp_path / "data"
    _bias_folder(root, box_format)
    output = tmp_path / "study"
    assert main(["bias-study", "--dataset", "folder", "--data-root", str(root), "--output", str(output),
                 "--supervised-count", "4", "--image-size", "32", "--model-width", "8", "--epochs", "2",
                 "--options", "warmup_epochs=1,batch_size=8,augment=false", "--threads", "1", "--no-progress"]) == 0
    results = json.loads((output / "results.json").read_text())
    assert results["train_size"] == 16 and [e["run"] for e in results["summary"]] == [
        "reference", "cam", "gain", "gain-ext-4"]
    ext = next(e for e in results["summary"] if e["run"] == "gain-ext-4")
    # boxes were read (box energy needs them); no context ids on disk, so no conflict accuracy
    assert 0.0 <= ext["decorrelated_box_energy"] <= 1.0 and ext["conflict_accuracy"] is None
    run = json.loads((output / "runs" / "seed0" / "gain-ext-4" / "result.json").read_text())
    assert run["config"]["dataset"] == "folder" and run["config"]["supervised_count"] == 4


def test_bias_study_guided_runs_context_split_and_target(tmp_path: Path) -> None:
    output = tmp_path / "guided"
    args = ["bias-study", "--output", str(output), "--supervised-count", "5%", "--train-images", "32",
            "--test-images", "16", "--image-size", "32", "--model-width", "8", "--epochs", "2",
            "--options", "warmup_epochs=1,batch_size=16,val_images=16", "--threads", "1", "--no-progress",
            "--guidance", "context-swap", "rrr,upweight", "--no-gain"]
    assert main(args) == 0
    results = json.loads((output / "results.json").read_text())
    assert [r["run"] for r in results["runs"]] == ["reference", "cam", "context-swap-2", "rrr+upweight-2"]
    config = json.loads((output / "runs" / "seed0" / "rrr+upweight-2" / "result.json").read_text())["config"]
    assert config["guidance"] == "rrr+upweight" and config["supervised_share"] == 0.25
    assert config["method"] == "cam" and config["supervised_count"] == 2
    cam_config = json.loads((output / "runs" / "seed0" / "cam" / "result.json").read_text())["config"]
    assert cam_config["guidance"] == "" and cam_config["supervised_share"] is None
    for row in results["runs"]:  # the context-only split is scored for every run
        assert 0.0 <= row["context_rate"] <= 1.0 and 0.0 < row["context_probability"] < 1.0
    checks = {c["run"]: c for c in results["target"]["guided"]}
    assert set(checks) == {"context-swap-2", "rrr+upweight-2"}
    by_run = {r["run"]: r for r in results["runs"]}
    check = checks["context-swap-2"]
    assert check["biased_drop"] == pytest.approx(by_run["cam"]["biased_accuracy"] - by_run["context-swap-2"]["biased_accuracy"])
    assert check["met"] == (check["ratio"] >= 0.9 and check["biased_drop"] <= 0.02)
    table = (output / "table.md").read_text()
    assert "context-swap N=2 (6%)" in table and "context only: share named as the context's class" in table
    assert "Target, rrr+upweight-2" in table


def test_guidance_settings_only_reach_guided_runs() -> None:
    from gainet.studies.bias_study import STUDY_CONFIG, _run_config

    base = STUDY_CONFIG.replace(swap_mask="grabcut", guidance_weight=3.0)
    cam = _run_config(base, {"run": "cam", "method": "cam", "supervised": None, "unbiased": False}, 0, Path("x"),
                      "train", "train_unbiased", 0.25)
    assert (cam.swap_mask, cam.guidance_weight, cam.guidance, cam.supervised_share) == ("mask", 1.0, "", None)
    guided = _run_config(base, {"run": "s", "method": "cam", "supervised": 5, "unbiased": False,
                                "guidance": "context-swap"}, 0, Path("x"), "train", "train_unbiased", 0.25)
    assert (guided.swap_mask, guided.guidance_weight, guided.supervised_share) == ("grabcut", 3.0, 0.25)


def test_study_runs_guided_names_and_optional_baselines() -> None:
    from gainet.studies.bias_study import study_runs

    runs = study_runs([0, 100], reference=False, guidance=["context-swap,l_e"], gain_runs=False, cam=False)
    assert [(r["run"], r["method"], r["supervised"], r["guidance"]) for r in runs] == [
        ("context-swap+l_e-100", "cam", 100, "context-swap+l_e")]
    names = [r["run"] for r in study_runs([100], guidance=["rrr"], guidance_method="gain")]
    assert names == ["reference", "cam", "gain", "gain-ext-100", "gain+rrr-100"]


def test_bias_study_supervision_takes_masks_like_train(tmp_path: Path) -> None:
    """``--supervision`` means what it means in ``gainet train`` (boxes or masks); the N list is
    ``--supervised-count``."""
    output = tmp_path / "study"
    args = ["bias-study", "--output", str(output), "--supervised-count", "4", "--supervision", "masks",
            "--no-reference", "--no-gain", "--guidance", "context-swap", "--train-images", "16", "--test-images", "8",
            "--image-size", "32", "--model-width", "8", "--epochs", "1",
            "--options", "warmup_epochs=0,batch_size=8,val_images=8", "--dataset-options", "bias_p=0.5",
            "--threads", "1", "--no-progress"]
    assert main(args) == 0
    config = json.loads((output / "runs" / "seed0" / "context-swap-4" / "result.json").read_text())["config"]
    assert config["supervision"] == "masks" and config["supervised_count"] == 4
    assert config["dataset_options"] == {"bias_p": 0.5}
    # Unsupervised runs are keyed without the kind of supervision: a box study can reuse them.
    cam = json.loads((output / "runs" / "seed0" / "cam" / "result.json").read_text())["config"]
    assert cam["supervision"] == "boxes" and cam["guidance"] == ""
    assert "images with masks" in (output / "table.md").read_text()


def test_bias_study_supervision_refuses_a_count_with_a_hint(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bias-study", "--supervision", "5%"])
    assert "--supervised-count" in capsys.readouterr().err


def test_target_check_says_when_cam_alone_already_meets_it() -> None:
    def entry(run: str, decorrelated: float, biased: float = 0.99, guidance: str = "", supervised: int = 0) -> dict:
        return {"run": run, "method": "cam", "guidance": guidance, "supervised": supervised, "seeds": 1,
                "decorrelated_accuracy": decorrelated, "biased_accuracy": biased}

    shortcut = [entry("reference", 0.98), entry("cam", 0.30), entry("context-swap-5", 0.95, 0.985, "context-swap", 5)]
    target = target_check(shortcut, 100)
    assert target["cam_ratio"] == pytest.approx(0.30 / 0.98) and not target["cam_meets"]
    assert target["guided"][0]["met"]
    easy = [entry("reference", 0.99), entry("cam", 0.96), entry("context-swap-5", 0.99, 0.99, "context-swap", 5)]
    target = target_check(easy, 100)
    assert target["cam_meets"] and target["guided"][0]["met"]
    assert "No shortcut to fix" in markdown_report(easy, 100, target, [0])
    assert "No shortcut to fix" not in markdown_report(shortcut, 100, target_check(shortcut, 100), [0])


def test_recommend_picks_the_cheapest_mode_that_met_the_target() -> None:
    def entry(run: str, decorrelated: float, guidance: str = "", supervised: int = 0, biased: float = 0.99) -> dict:
        return {"run": run, "method": "cam", "guidance": guidance, "supervised": supervised, "seeds": 1,
                "decorrelated_accuracy": decorrelated, "biased_accuracy": biased}

    summary = [entry("reference", 0.98), entry("cam", 0.40),
               entry("actdiff-5", 0.95, "actdiff", 5), entry("context-swap-5", 0.93, "context-swap", 5),
               entry("context-swap+l_e-5", 0.97, "context-swap+l_e", 5), entry("upweight-5", 0.45, "upweight", 5),
               entry("rrr-5", 0.96, "rrr", 5, biased=0.90)]  # rrr: costs 9 points of biased accuracy
    target = target_check(summary, 100)
    assert recommend(target)["run"] == "context-swap-5"
    assert "Recommended here: context-swap-5" in markdown_report(summary, 100, target, [0])
    missed = [entry("reference", 0.98), entry("cam", 0.40), entry("upweight-5", 0.45, "upweight", 5)]
    assert recommend(target_check(missed, 100)) is None
    assert "none is recommended" in markdown_report(missed, 100, target_check(missed, 100), [0])


def test_the_target_is_boxes_on_5_percent_or_masks_on_1_percent_and_the_cheapest_setting_is_recommended() -> None:
    def entry(run: str, decorrelated: float, guidance: str = "", supervised: int = 0, supervision: str = "",
              swap_mask: str = "", biased: float = 0.99) -> dict:
        return {"run": run, "method": "cam", "guidance": guidance, "supervised": supervised, "seeds": 1,
                "supervision": supervision, "swap_mask": swap_mask,
                "decorrelated_accuracy": decorrelated, "biased_accuracy": biased}

    base = [entry("reference", 0.98), entry("cam", 0.40)]
    # Masks on 5% is neither target (boxes on 5%, masks on 1%): not checked, never met.
    masks_at_5 = base + [entry("context-swap-5 (masks)", 0.95, "context-swap", 5, "masks")]
    assert target_check(masks_at_5, 100) is None
    summary = base + [
        entry("context-swap-5 (boxes, GrabCut)", 0.95, "context-swap", 5, "boxes", "grabcut"),
        entry("context-swap-5 (boxes, crop)", 0.93, "context-swap", 5, "boxes", "mask"),
        entry("context-swap-1 (masks)", 0.92, "context-swap", 1, "masks", "mask"),
        entry("context-swap-1 (boxes)", 0.99, "context-swap", 1, "boxes", "mask"),  # boxes on 1%: no target
    ]
    target = target_check(summary, 100)
    assert [c["run"] for c in target["guided"]] == ["context-swap-5 (boxes, GrabCut)", "context-swap-5 (boxes, crop)",
                                                   "context-swap-1 (masks)"]
    assert all(c["met"] for c in target["guided"])
    # Fewest annotated images first, then (at equal N and modes) the box crop before GrabCut.
    assert recommend(target)["run"] == "context-swap-1 (masks)"
    boxes_only = target_check(summary[:4], 100)
    assert recommend(boxes_only)["run"] == "context-swap-5 (boxes, crop)"
    # A run without its own supervision kind takes the study's.
    assert target_check(base + [entry("context-swap-1", 0.95, "context-swap", 1)], 100, "masks")["guided"][0]["met"]
    assert target_check(base + [entry("context-swap-1", 0.95, "context-swap", 1)], 100, "boxes") is None
