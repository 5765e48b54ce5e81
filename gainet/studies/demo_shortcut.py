"""The first part of ``gainet demo``: a pretrained classifier that reads the background, diagnosed,
fixed with boxes on 5% of its training images, and diagnosed again, beside the same model trained
on unbiased data.

The world is step 4's of docs/bias_study.md (the bias world with small objects and a context that
predicts the class on 99% of the training images; its parameters were chosen from the plain
classifiers alone), at a smaller budget so that the whole demo fits in minutes on a laptop CPU.
Every stage is cached in its output directory: a second ``gainet demo`` reuses what is there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gainet.training.config import TrainConfig

SHORTCUT_CONFIG = TrainConfig(
    method="cam",
    dataset="bias",
    dataset_options={"object_size": [0.07, 0.1], "bias_p": 0.99},
    image_size=64,
    train_images=1000,
    model="efficientnet-lite0",
    pretrained="imagenet",
    lr=1e-3,
    epochs=3,
    warmup_epochs=0,
    batch_size=32,
    tensorboard=False,
)
FIX_COUNT = "5%"
# gainet fix --way auto: a quarter of the 50 annotated images held out to choose among DFR, fine-tuning
# with the counterfactual guidance for 1 or 2 epochs, and both (docs/shortcuts.md); 2 epochs at most
# keep the demo within its minutes on a laptop CPU.
FIX_WAY = "auto"
FIX_EPOCHS = 2
TEST_IMAGES = 300  # per split, diagnosis and accuracy alike
ROWS = (("reference", "trained on unbiased data (the reference)"), ("cam", "trained on the biased data"),
        ("fixed", "the biased model, fixed with boxes on 5%"))
VERDICT_WORDS = {"reads_context": "reads the context", "object_decides": "the object decides",
                 "uncertain": "uncertain", "no_verdict": "no verdict"}


def shortcut_available() -> bool:
    """Whether EfficientNet-Lite0 and its offline ImageNet weights are installed (``[all]``)."""
    from gainet.training.defaults import offline_weights_available

    return offline_weights_available()


def _train(name: str, out: Path, *, seed: int, threads: int | None, progress: bool, overrides: dict[str, Any],
           **changes: Any) -> Path:
    from gainet.training.trainer import train

    run = out / name
    config = SHORTCUT_CONFIG.replace(output_dir=str(run), seed=seed, threads=threads, progress=progress,
                                     resume="auto" if (run / "last.pt").is_file() else None, **changes, **overrides)
    print(f"[demo] training {name}: pretrained EfficientNet-Lite0, {config.epochs} epochs on "
          f"{config.train_images} images of split {config.train_split!r} ...", flush=True)
    train(config)
    return run / "best.pt"


def _cached(path: Path, make) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return make()


def _accuracy(checkpoint: Path, out: Path, test_images: int) -> dict[str, float]:
    from gainet.evaluation.jobs import evaluate_checkpoint

    def make() -> dict[str, float]:
        batch = min(100, test_images)
        result = evaluate_checkpoint(checkpoint, splits=["test_biased", "test_decorrelated"], output_dir=out,
                                     batch_size=batch, max_batches=max(1, test_images // batch))
        accuracy = {split: float(m["accuracy"]) for split, m in result["splits"].items()}
        (out / "accuracy.json").write_text(json.dumps(accuracy, indent=2))
        return accuracy

    return _cached(out / "accuracy.json", make)


def run_shortcut_demo(output_dir: str | Path, *, seed: int = 0, threads: int | None = None,
                      progress: bool = True, overrides: dict[str, Any] | None = None,
                      test_images: int = TEST_IMAGES) -> dict[str, Any]:
    """Train the reference and the biased model, diagnose both, fix the biased one (``gainet fix``'s
    --way dfr, boxes on 5%), diagnose and score all three on ``test_images`` images per split.
    ``overrides`` replace fields of :data:`SHORTCUT_CONFIG` (quick runs). Returns ``{"rows",
    "sections", "seconds"}`` (``sections``: the report's, paths relative to ``output_dir``'s parent)."""
    from gainet.shortcuts.jobs import DEFAULT_WAY, run_diagnose, run_fix

    out = Path(output_dir)
    started = time.perf_counter()
    common = dict(seed=seed, threads=threads, progress=progress, overrides=dict(overrides or {}))
    config = SHORTCUT_CONFIG.replace(**common["overrides"])
    reference = _train("reference", out, train_split="train_unbiased", **common)
    biased = _train("cam", out, **common)
    diagnoses = {}
    for name, checkpoint in (("reference", reference), ("cam", biased)):
        print(f"[demo] diagnosing {name} ...", flush=True)
        diagnoses[name] = _cached(out / f"diagnose-{name}" / "diagnosis.json", lambda c=checkpoint, n=name: run_diagnose(
            checkpoint=str(c), output_dir=out / f"diagnose-{n}", limit=test_images, seed=seed, progress=progress))
    print(f"[demo] fixing cam with boxes on {FIX_COUNT} of its training images (gainet fix --way {FIX_WAY}) ...",
          flush=True)
    fix = _cached(out / "fix" / "fix.json", lambda: run_fix(
        way=FIX_WAY, checkpoint=str(biased), supervised_count=FIX_COUNT, epochs=FIX_EPOCHS, output_dir=out / "fix",
        limit=test_images, seed=seed, threads=threads, progress=progress))
    diagnoses["fixed"] = json.loads((out / "fix" / "after" / "diagnosis.json").read_text())
    rows = []
    for name, label in ROWS:
        checkpoint = {"reference": reference, "cam": biased, "fixed": out / "fix" / "fixed.pt"}[name]
        accuracy = _accuracy(checkpoint, out / f"accuracy-{name}", test_images)
        diagnosis = diagnoses[name]
        low, high = diagnosis["intervals"]["gap"]
        rows.append({"model": label, "accuracy, test_biased": accuracy["test_biased"],
                     "accuracy, test_decorrelated": accuracy["test_decorrelated"],
                     "mixed-rand": diagnosis["mixed_rand"], "background gap": diagnosis["gap"],
                     "gap, 95% interval": f"[{low:.2f}, {high:.2f}]",
                     "context only: named as its class": diagnosis["context_rate"],
                     "diagnosis": VERDICT_WORDS.get(diagnosis["verdict_code"], diagnosis["verdict_code"]),
                     "verdict": diagnosis["verdict"]})
    seconds = time.perf_counter() - started
    parent = out.parent
    table = [{k: v for k, v in row.items() if k != "verdict"} for row in rows]
    sections = [
        {"title": "1. A classifier that reads the background: diagnosed, fixed with a few boxes, verified", "items": [
            f"A classifier ({config.model}, pretrained: {config.pretrained or 'no'}) fine-tuned on a world where the "
            f"background predicts the class on 99% of the training images ({config.train_images} images, {config.epochs} "
            "epochs), beside the same model trained on unbiased data. `gainet diagnose` pastes each annotated "
            "object onto a context of its own class (mixed-same) and of another class (mixed-rand) and shows the "
            "contexts alone (contexts from the biased training images, where the model learned them; 95% "
            "intervals by bootstrap); `gainet fix --way auto` then uses boxes on 5% of the training images: a "
            "quarter of them held out to choose among last-layer retraining (DFR), fine-tuning with the "
            f"counterfactual guidance for up to {FIX_EPOCHS} epochs, and both; it chose "
            f"{(fix.get('details') or {}).get('chosen', fix.get('way'))} ({fix['fix_seconds']:.0f} s here; "
            f"`gainet fix`'s default is {DEFAULT_WAY}). test_decorrelated: the context is random, "
            f"so only the object tells the class. {test_images} test images per split; one seed "
            "(docs/shortcuts.md has the 3-seed measurements).",
            {"table": table, "columns": list(table[0])},
            *[f"{label}: {row['verdict']}" for (_, label), row in zip(ROWS, rows)],
            {"link": out.relative_to(parent) / "diagnose-cam" / "index.html",
             "text": "the biased model's diagnosis, with example images and its answers"},
            {"link": out.relative_to(parent) / "fix" / "after" / "index.html",
             "text": "the fixed model's diagnosis"},
        ]},
    ]
    (out / "results.json").write_text(json.dumps({"rows": rows, "fix": fix, "seconds": seconds}, indent=2,
                                                 default=str))
    return {"rows": rows, "sections": sections, "seconds": seconds}
