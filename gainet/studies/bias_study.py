"""``gainet bias-study``: does a little box supervision move a classifier off a context shortcut?

The paper's dataset-bias experiment (METHOD.md, "Biased boats"), on the built-in bias world (or
any dataset with a biased and a decorrelated test split): in the training split every class
shares a background context with probability ``bias_p`` (0.95), so a classifier can learn the
context instead of the object. Trained with the same budget, per seed:

- ``reference``: the plain classifier (``cam``) on ``train_unbiased`` (context independent of the
  class): what the architecture and budget reach without the shortcut;
- ``cam``: the plain classifier on the biased ``train`` split (the Grad-CAM baseline);
- ``gain``: GAIN's self-guidance (L_cl + L_am) on ``train``;
- ``gain-ext``: GAIN_ext (L_ext with L_e on boxes) on ``train`` with boxes on N images, for each N
  of the list (``N = 0`` is ``gain``: L_e sees nothing);
- guided runs (``guidance``, issue 13): the same boxes used by a guidance mode of
  :mod:`gainet.core.guidance` (``context-swap``, ``context-only``, ``actdiff``, ``rrr``,
  ``upweight``, ``l_e`` or a ``+``-combination), on top of ``guidance_method`` (default ``cam``),
  with ``supervised_share`` of every batch drawn from the supervised images, for each N > 0.

Each model is evaluated on ``test_biased`` (the training distribution) and ``test_decorrelated``
(context uniform over the classes): accuracy, accuracy on the decorrelated images whose context
belongs to another class (where the shortcut points the wrong way), and the share of attention
energy inside the object's box; and, where the dataset has one, on a context-only split
(``test_context``: contexts without any object): the share of images whose top class is the
context's class (lower is better) and the mean probability of that class. Output in ``runs/bias-study/``: ``results.json`` (every run, the
mean and std over seeds), ``table.md`` (the paper's table layout) and
``accuracy_vs_supervision.png``.

Finished runs are cached (``runs/seed<k>/<run>/result.json``, keyed by their full config), so an
interrupted study continues where it stopped.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from gainet.training.config import TrainConfig
from gainet.training.data import parse_supervision

# The budget was fixed from the reference alone, never from GAIN's results: the reference (cam on
# train_unbiased, seed 0) reached test_decorrelated accuracy 0.29 with 1000 images (width 16 or
# 32, 8 or 16 epochs: chance is 0.25), 0.59 / 0.78 (seeds 0 / 1) with 2000 images, width 16 and
# 8 epochs, and 0.97 with 2000 images, width 16 and 12 epochs: the cheapest budget measured at
# which the reference learns the shapes. The world is the default bias world (4 classes,
# bias_p 0.95). GAIN's hyperparameters are METHOD.md's values, pinned here (the study in
# docs/bias_study.md was run with them; TrainConfig's own defaults follow docs/ablation.md).
STUDY_CONFIG = TrainConfig(
    alpha=1.0,
    omega_e=10.0,
    sigma=0.5,
    omega=10.0,
    am_gradient="all",
    erased_batchnorm="batch",
    dataset="bias",
    image_size=64,
    train_images=None,  # the world's 2000
    model="small-cnn",
    model_width=16,
    epochs=12,
    warmup_epochs=3,
    batch_size=32,
    optimizer="adamw",
    lr=2e-3,
    schedule="cosine",
    supervision="boxes",
    eval_every=1000,  # validate once, at the end (the study evaluates the test splits itself)
    eval_batches=2,
    progress=False,
    tensorboard=False,
)
DEFAULT_SUPERVISION = ("0", "1%", "2%", "5%", "10%")
TARGET_SHARE = 0.9  # GAIN_ext (5%) decorrelated accuracy >= 90% of the reference's
TARGET_FRACTION = 0.05
TARGET_FRACTION_MASKS = 0.01  # issue 13: "with masks on 1%, the same"
TARGET_BIASED_DROP = 0.02  # guided runs: biased accuracy within 2 points of cam's (issue 13)
# Guided runs: share of each batch drawn from the supervised images, fixed before any guided run
# (8 of 32: with 100 supervised images each is seen ~5 times per epoch).
DEFAULT_SUPERVISED_SHARE = 0.25
GUIDANCE_SETTINGS = ("guidance_weight", "swap_mask", "swap_partners", "context_target", "counterfactual_batchnorm")
METRICS = ("biased_accuracy", "decorrelated_accuracy", "conflict_accuracy", "context_rate", "context_probability",
           "decorrelated_box_energy", "biased_box_energy")
METRIC_LABELS = {
    "biased_accuracy": "accuracy, test_biased",
    "decorrelated_accuracy": "accuracy, test_decorrelated",
    "conflict_accuracy": "accuracy, decorrelated with another class's context",
    "context_rate": "context only: share named as the context's class (lower is better)",
    "context_probability": "context only: mean probability of the context's class",
    "decorrelated_box_energy": "attention energy in box, test_decorrelated",
    "biased_box_energy": "attention energy in box, test_biased",
}


def study_runs(counts: Sequence[int], reference: bool = True, guidance: Sequence[str] = (),
               guidance_method: str = "cam", gain_runs: bool = True, cam: bool = True) -> list[dict[str, Any]]:
    """The runs of one seed: ``{"run", "method", "supervised", "unbiased", "guidance"}``; N = 0 is
    ``gain``. Each ``guidance`` entry (modes joined by ``,`` or ``+``) gives one run per N > 0."""
    from gainet.core.guidance import parse_guidance

    runs = [{"run": "reference", "method": "cam", "supervised": None, "unbiased": True}] if reference else []
    runs += [{"run": "cam", "method": "cam", "supervised": None, "unbiased": False}] if cam else []
    if gain_runs:
        runs += [{"run": "gain", "method": "gain", "supervised": None, "unbiased": False}]
        runs += [{"run": f"gain-ext-{n}", "method": "gain-ext", "supervised": n, "unbiased": False}
                 for n in counts if n > 0]
    for spec in guidance:
        modes = "+".join(parse_guidance(spec))
        if not modes:
            continue
        prefix = modes if guidance_method == "cam" else f"{guidance_method}+{modes}"
        runs += [{"run": f"{prefix}-{n}", "method": guidance_method, "supervised": n, "unbiased": False,
                  "guidance": modes} for n in counts if n > 0]
    return runs


def _predictions_and_energy(gain: Any, dataset: Any, device: torch.device,
                            batch_size: int) -> tuple[list[int], list[int], list[float]]:
    """Top-1 predictions, labels and, for images with boxes, the share of the ground-truth class's
    attention inside its box (:func:`~gainet.evaluation.localization.energy_in_boxes`)."""
    from gainet.evaluation.localization import energy_in_boxes
    from gainet.training.data import eval_loader

    predicted, labels, energies = [], [], []
    was_training = gain.training
    gain.eval()
    try:
        for batch in eval_loader(dataset, batch_size):
            target = batch["labels"]
            scores, pairs, maps = gain.label_attention(batch["image"].to(device), target.to(device))
            predicted += scores.argmax(1).cpu().tolist()
            labels += (target.argmax(1) if target.dim() == 2 else target).tolist()
            pairs, maps = pairs.cpu(), maps.cpu().float()
            keep = batch["has_boxes"].bool()[pairs[:, 0]]
            if bool(keep.any()):
                boxes = batch["box_masks"][pairs[keep, 0], pairs[keep, 1]]
                energy, counted = energy_in_boxes(maps[keep], boxes)
                energies += energy[counted].tolist()
    finally:
        gain.train(was_training)
    return predicted, labels, energies


def evaluate_context_split(gain: Any, dataset: Any, device: torch.device, batch_size: int = 64) -> dict[str, Any]:
    """Context-only images (no object): ``context_rate``, the share whose top class is the
    context's class (``dataset.context(i)``; lower is better), ``context_probability``, the mean
    probability of that class (softmax; sigmoid for multi-label models), and ``context_images``."""
    from gainet.training.data import eval_loader

    hits, probabilities, position = [], [], 0
    was_training = gain.training
    gain.eval()
    try:
        with torch.no_grad():
            for batch in eval_loader(dataset, batch_size):
                scores = gain(batch["image"].to(device)).float().cpu()
                contexts = torch.tensor([dataset.context(position + i) for i in range(scores.shape[0])])
                position += scores.shape[0]
                p = torch.sigmoid(scores) if gain.multi_label else torch.softmax(scores, dim=1)
                hits += (scores.argmax(1) == contexts).tolist()
                probabilities += p[torch.arange(scores.shape[0]), contexts].tolist()
    finally:
        gain.train(was_training)
    if not hits:
        return {"context_rate": math.nan, "context_probability": math.nan, "context_images": 0}
    return {"context_rate": sum(hits) / len(hits), "context_probability": statistics.fmean(probabilities),
            "context_images": len(hits)}


def evaluate_split(gain: Any, dataset: Any, device: torch.device, batch_size: int = 64) -> dict[str, Any]:
    """Accuracy and the other ``evaluate_gain`` metrics on one split, plus:

    - ``box_energy`` where ``evaluate_gain`` gives none (datasets with boxes but no masks): mean
      share of each ground-truth class's normalised attention inside that class's boxes;
    - for datasets that know each image's context (the bias world): the accuracy on the images
      whose context is another class's (``conflict_accuracy``) and on those whose context
      matches (``match_accuracy``).
    """
    from gainet.evaluation.evaluate import evaluate_gain
    from gainet.training.data import eval_loader

    metrics = evaluate_gain(gain, eval_loader(dataset, batch_size), device=device)
    metrics = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    predicted, labels, energies = _predictions_and_energy(gain, dataset, device, batch_size)
    if "box_energy" not in metrics and energies:
        metrics["box_energy"] = statistics.fmean(energies)
    context = getattr(dataset, "context", None)
    if callable(context):
        contexts = [context(i) for i in range(len(dataset))]
        for name, keep in (("conflict", lambda c, y: c != y), ("match", lambda c, y: c == y)):
            chosen = [p == y for p, y, c in zip(predicted, labels, contexts) if keep(c, y)]
            metrics[f"{name}_accuracy"] = sum(chosen) / len(chosen) if chosen else math.nan
            metrics[f"{name}_images"] = len(chosen)
    return metrics


def _run_config(base: TrainConfig, run: dict[str, Any], seed: int, output_dir: Path,
                train_split: str, unbiased_split: str, supervised_share: float | None = None) -> TrainConfig:
    guidance = run.get("guidance", "")
    config = base.replace(
        method=run["method"], seed=seed, train_split=unbiased_split if run["unbiased"] else train_split,
        supervised_count=run["supervised"], output_dir=str(output_dir / "runs" / f"seed{seed}" / run["run"]),
        guidance=guidance, supervised_share=supervised_share if guidance else None,
    )
    if not guidance:  # settings of the guidance terms do not touch (or re-key) the other runs
        config = config.replace(**{name: getattr(TrainConfig, name) for name in GUIDANCE_SETTINGS})
    if not run["supervised"]:  # nor does the kind of supervision: studies with boxes and with masks share them
        config = config.replace(supervision=STUDY_CONFIG.supervision)
    return config


def train_and_evaluate(config: TrainConfig, test_sets: dict[str, Any],
                       context_sets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one run (cached by its config) and evaluate it on each test split (and each
    context-only split, :func:`evaluate_context_split`)."""
    from gainet.training.trainer import Trainer

    cache = Path(config.output_dir) / "result.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if _cache_key(cached.get("config", {})) == _cache_key(config.to_dict()):
            return cached
    config = _continue_or_refuse(config)
    started = time.perf_counter()
    trainer = Trainer(config)
    trainer.fit()
    seconds = time.perf_counter() - started
    splits = {name: evaluate_split(trainer.gain, dataset, trainer.device) for name, dataset in test_sets.items()}
    splits.update({name: evaluate_context_split(trainer.gain, dataset, trainer.device)
                   for name, dataset in (context_sets or {}).items()})
    result = {"config": config.to_dict(), "train_seconds": seconds, "splits": splits}
    cache.write_text(json.dumps(result, indent=2, default=_json_default))
    return result


def _cache_key(values: dict[str, Any]) -> dict[str, Any]:
    """What a run's result depends on (not threads, progress bars, logs, where it was written or
    how it was started)."""
    return {k: v for k, v in values.items()
            if k not in ("threads", "progress", "tensorboard", "num_workers", "output_dir", "resume", "overwrite")}


def _continue_or_refuse(config: TrainConfig) -> TrainConfig:
    """How to train a run whose evaluation is not cached: afresh into an empty directory; resumed
    (``resume="auto"``) where an interrupted run with the same settings left its files; and where
    the directory holds a run with other settings, retrained only with ``--overwrite`` (which
    deletes its files), else refused in one line: a study re-run with one option changed never
    replaces the runs it had."""
    from gainet.io.outputs import existing_outputs
    from gainet.training.config import load_yaml
    from gainet.training.trainer import RUN_MARKERS

    directory = Path(config.output_dir)
    found = existing_outputs(directory, (*RUN_MARKERS, "result.json"))
    if not found or config.overwrite:
        return config
    recorded_file = directory / "config.yaml"
    recorded = _cache_key(load_yaml(recorded_file)) if recorded_file.is_file() else {}
    wanted = _cache_key(config.to_dict())
    if recorded == wanted and (directory / "last.pt").is_file():
        return config.replace(resume="auto")
    changed = [k for k in wanted if k in recorded and recorded[k] != wanted[k]]
    what = (f"{changed[0]}={recorded[changed[0]]!r}, asked {wanted[changed[0]]!r}" if changed
            else f"{found[0].name}, other settings")
    raise ValueError(f"{directory}: holds a bias-study run trained with other settings ({what}); rerun with "
                     "--overwrite to retrain such runs (their files are deleted) or choose another --output-dir")


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _flat(result: dict[str, Any], biased: str, decorrelated: str, context: str | None = None) -> dict[str, float]:
    b, d = result["splits"][biased], result["splits"][decorrelated]
    c = result["splits"].get(context, {}) if context else {}
    return {
        "context_rate": c.get("context_rate", math.nan),
        "context_probability": c.get("context_probability", math.nan),
        "biased_accuracy": b.get("accuracy", math.nan),
        "decorrelated_accuracy": d.get("accuracy", math.nan),
        "conflict_accuracy": d.get("conflict_accuracy", math.nan),
        "decorrelated_box_energy": d.get("box_energy", math.nan),
        "biased_box_energy": b.get("box_energy", math.nan),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per run (``<metric>`` and ``<metric>_std``), in run order."""
    order: list[str] = []
    for row in rows:
        if row["run"] not in order:
            order.append(row["run"])
    summary = []
    for name in order:
        group = [r for r in rows if r["run"] == name]
        entry = {k: group[0].get(k, "") for k in ("run", "method", "supervised", "train_split", "guidance",
                                                  "supervision", "swap_mask")}
        entry["seeds"] = len(group)
        for metric in METRICS:
            entry[metric], entry[f"{metric}_std"] = _mean_std([r.get(metric, math.nan) for r in group])
        entry["train_minutes"] = statistics.fmean(r["train_seconds"] for r in group) / 60.0
        summary.append(entry)
    return summary


def _cell(entry: dict[str, Any], metric: str) -> str:
    mean, std = entry.get(metric, math.nan), entry.get(f"{metric}_std", math.nan)
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if entry["seeds"] > 1 else f"{mean:.3f}"


def _column_name(entry: dict[str, Any], train_size: int) -> str:
    if entry.get("label"):  # set by callers that combine studies (benchmarks/combine_bias_studies.py)
        return entry["label"]
    if entry["run"] == "reference":
        return "reference (cam, unbiased data)"
    if entry["run"] == "cam":
        return "CAM"
    if entry["run"] == "gain":
        return "GAIN (= GAIN_ext N=0)"
    n = entry["supervised"]
    if entry.get("guidance"):
        base = "" if entry["method"] == "cam" else f"{entry['method']} + "
        return f"{base}{entry['guidance']} N={n} ({100.0 * n / train_size:.0f}%)"
    return f"GAIN_ext N={n} ({100.0 * n / train_size:.0f}%)"


def target_check(summary: list[dict[str, Any]], train_size: int, supervision: str = "boxes") -> dict[str, Any] | None:
    """GAIN_ext at 5% of the training images vs. ``TARGET_SHARE`` x the reference (decorrelated),
    and the guided runs at their target's N: boxes on 5%, masks on 1% (a run's own
    ``supervision``, else ``supervision``); a masks run on 5% meets neither."""
    reference = next((e for e in summary if e["run"] == "reference"), None)
    wanted = round(TARGET_FRACTION * train_size)
    ext = next((e for e in summary if e["method"] == "gain-ext" and e["supervised"] == wanted
                and not e.get("guidance")), None)
    targets = {"boxes": wanted, "masks": round(TARGET_FRACTION_MASKS * train_size)}
    guided = [e for e in summary if e.get("guidance")
              and e["supervised"] == targets.get(e.get("supervision") or supervision)]
    if reference is None or (ext is None and not guided):
        return None
    target: dict[str, Any] = {"supervised": wanted, "reference_decorrelated": reference["decorrelated_accuracy"],
                              "required_ratio": TARGET_SHARE}
    if ext is not None:
        ratio = ext["decorrelated_accuracy"] / reference["decorrelated_accuracy"]
        target.update({"gain_ext_decorrelated": ext["decorrelated_accuracy"], "ratio": ratio,
                       "met": bool(ratio >= TARGET_SHARE)})
    cam = next((e for e in summary if e["run"] == "cam"), None)
    if cam is not None:
        # A world whose plain classifier already reaches the bar shows no shortcut worth fixing:
        # a guided run "meeting" the target there proves nothing, and the report says so.
        target["cam_ratio"] = cam["decorrelated_accuracy"] / reference["decorrelated_accuracy"]
        target["cam_meets"] = bool(target["cam_ratio"] >= TARGET_SHARE)
    if guided and cam is not None:
        # Issue 13's target: decorrelated accuracy >= 0.9 x the reference's, biased accuracy
        # within 2 points of cam's.
        target["guided"] = []
        for entry in guided:
            ratio = entry["decorrelated_accuracy"] / reference["decorrelated_accuracy"]
            drop = cam["biased_accuracy"] - entry["biased_accuracy"]
            target["guided"].append({
                "run": entry["run"], "guidance": entry["guidance"], "supervised": entry["supervised"],
                "supervision": entry.get("supervision") or supervision, "swap_mask": entry.get("swap_mask") or "mask",
                "decorrelated": entry["decorrelated_accuracy"], "ratio": ratio,
                "biased": entry["biased_accuracy"], "cam_biased": cam["biased_accuracy"], "biased_drop": drop,
                "met": bool(ratio >= TARGET_SHARE and drop <= TARGET_BIASED_DROP),
            })
    return target


# Cost per training step relative to cam, cheapest first (benchmarks/guidance_cost.py; docs/bias_study.md):
# the order in which a mode that met the target is recommended.
COST_ORDER = ("upweight", "l_e", "context-swap", "context-only", "actdiff", "rrr")
# What a swap pastes, cheapest first: the box or mask itself, or GrabCut inside the box (a
# one-time estimate per annotated image).
SWAP_MASK_ORDER = ("mask", "grabcut")


def recommend(target: dict[str, Any] | None) -> dict[str, Any] | None:
    """The cheapest guided run that met the target: fewest annotated images first (annotation is
    the user's cost), then fewest modes, then :data:`COST_ORDER` of its costliest mode, then
    :data:`SWAP_MASK_ORDER`; ``None`` where none did or where cam alone meets it (nothing to fix)."""
    from gainet.core.guidance import parse_guidance

    if not target or target.get("cam_meets"):
        return None
    met = [check for check in target.get("guided", []) if check["met"]]
    if not met:
        return None

    def cost(check: dict[str, Any]) -> tuple[int, int, int, int]:
        modes = parse_guidance(check["guidance"])
        ranks = [COST_ORDER.index(m) if m in COST_ORDER else len(COST_ORDER) for m in modes]
        mask = check.get("swap_mask") or "mask"
        mask_rank = SWAP_MASK_ORDER.index(mask) if mask in SWAP_MASK_ORDER else len(SWAP_MASK_ORDER)
        return check["supervised"], len(modes), max(ranks), mask_rank

    return min(met, key=cost)


def markdown_report(summary: list[dict[str, Any]], train_size: int, target: dict[str, Any] | None,
                    seeds: Sequence[int], kind: str = "boxes") -> str:
    """The paper's table layout: one column per model, one row per test measure."""
    names = [_column_name(e, train_size) for e in summary]
    lines = ["| measure | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for metric in METRICS:
        if all(not math.isfinite(e.get(metric, math.nan)) for e in summary):
            continue
        lines.append(f"| {METRIC_LABELS[metric]} | " + " | ".join(_cell(e, metric) for e in summary) + " |")
    text = "\n".join(lines)
    note = (f"\n\nMean ± std over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); "
            f"{train_size} training images; N = images with {kind} (supervision={kind}).")
    if target is not None and "gain_ext_decorrelated" in target:
        verdict = "met" if target["met"] else "MISSED"
        note += (f"\nTarget: GAIN_ext with boxes on {target['supervised']} images reaches "
                 f"{target['gain_ext_decorrelated']:.3f} decorrelated accuracy = {target['ratio']:.2f} x the "
                 f"reference's {target['reference_decorrelated']:.3f} (required >= {TARGET_SHARE:.2f}): {verdict}.")
    for check in (target or {}).get("guided", []):
        verdict = "met" if check["met"] else "MISSED"
        note += (f"\nTarget, {check['run']}: decorrelated {check['decorrelated']:.3f} = {check['ratio']:.2f} x the "
                 f"reference's (required >= {TARGET_SHARE:.2f}); biased {check['biased']:.3f} vs cam's "
                 f"{check['cam_biased']:.3f} (drop {100 * check['biased_drop']:.1f} points, allowed "
                 f"{100 * TARGET_BIASED_DROP:.0f}): {verdict}.")
    best = recommend(target)
    if best is not None:
        note += (f"\nRecommended here: {best['run']} (the cheapest guided run that met the target; "
                 f"decorrelated {best['decorrelated']:.3f}).")
    elif (target or {}).get("guided") and not target.get("cam_meets"):
        note += "\nNo guided run met the target here: none is recommended."
    if (target or {}).get("cam_meets"):
        note += (f"\nNo shortcut to fix: cam alone reaches {target['cam_ratio']:.2f} x the reference's decorrelated "
                 f"accuracy (>= {TARGET_SHARE:.2f}), so the target says nothing about the guided runs here; "
                 "read the context-only rows, or use a world where cam fails.")
    return text + note + "\n"


def plot(summary: list[dict[str, Any]], path: Path, train_size: int, chance: float | None = None,
         kind: str = "boxes") -> Path:
    """Accuracy (biased, decorrelated) and box energy vs. the number of supervised images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_run = {e["run"]: e for e in summary}
    curve = sorted([e for e in summary if e["method"] == "gain-ext" and not e.get("guidance")]
                   + ([by_run["gain"]] if "gain" in by_run else []),
                   key=lambda e: e["supervised"] or 0)
    xs = [e["supervised"] or 0 for e in curve]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5.6))
    for metric, style, colour, label in (
            ("biased_accuracy", "o-", "tab:blue", "test_biased"),
            ("decorrelated_accuracy", "s-", "tab:orange", "test_decorrelated"),
            ("conflict_accuracy", "^--", "tab:purple", "decorrelated, other class's context")):
        if curve and all(math.isfinite(e[metric]) for e in curve):
            left.errorbar(xs, [e[metric] for e in curve], yerr=[e[f"{metric}_std"] for e in curve], fmt=style,
                          color=colour, capsize=3, label=f"GAIN_ext ({label})")
    specs = sorted({e["guidance"] for e in summary if e.get("guidance")})
    for k, spec in enumerate(specs):  # guided runs: decorrelated accuracy against N
        points = sorted([e for e in summary if e.get("guidance") == spec], key=lambda e: e["supervised"])
        left.errorbar([e["supervised"] for e in points], [e["decorrelated_accuracy"] for e in points],
                      yerr=[e["decorrelated_accuracy_std"] for e in points], fmt="D-", capsize=3,
                      color=matplotlib.colormaps["tab10"](k % 10), alpha=0.8,
                      label=f"{spec} (test_decorrelated)")
    colours = {"cam": "tab:red", "reference": "tab:green"}
    for run, colour in colours.items():
        if run not in by_run:
            continue
        entry = by_run[run]
        name = "CAM" if run == "cam" else "reference (unbiased data)"
        left.axhline(entry["decorrelated_accuracy"], color=colour, linestyle="-", alpha=0.8,
                     label=f"{name}, test_decorrelated")
        if run == "cam":
            left.axhline(entry["biased_accuracy"], color=colour, linestyle=":", alpha=0.8, label=f"{name}, test_biased")
        if run == "reference":
            left.axhline(TARGET_SHARE * entry["decorrelated_accuracy"], color=colour, linestyle="--", alpha=0.6,
                         label=f"target: {TARGET_SHARE:.0%} of reference")
    if chance:
        left.axhline(chance, color="grey", linestyle=":", alpha=0.8, label=f"chance ({chance:.2f})")
    left.set_ylim(0.0, 1.05)
    left.set_xlabel(f"images with {kind} (of {train_size})")
    left.set_ylabel("accuracy")
    left.set_title("accuracy vs. supervised images (N=0: GAIN)")
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    for metric, style, colour, label in (("biased_box_energy", "o-", "tab:blue", "test_biased"),
                                         ("decorrelated_box_energy", "s-", "tab:orange", "test_decorrelated")):
        if curve and all(math.isfinite(e[metric]) for e in curve):
            right.errorbar(xs, [e[metric] for e in curve], yerr=[e[f"{metric}_std"] for e in curve], fmt=style,
                           color=colour, capsize=3, label=f"GAIN_ext ({label})")
    for run, colour in colours.items():
        if run in by_run and math.isfinite(by_run[run]["decorrelated_box_energy"]):
            right.axhline(by_run[run]["decorrelated_box_energy"], color=colour, alpha=0.8,
                          label=f"{'CAM' if run == 'cam' else 'reference'}, test_decorrelated")
    right.set_xlabel(f"images with {kind} (of {train_size})")
    right.set_ylabel("share of attention energy inside the box")
    right.set_title("attention energy in the object box")
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def run_bias_study(
    output_dir: str | Path = "runs/bias-study",
    *,
    supervised_counts: Sequence[str | int | float] = DEFAULT_SUPERVISION,
    seeds: int = 1,
    first_seed: int = 0,
    threads: int | None = None,
    progress: bool = False,
    reference: bool = True,
    train_split: str = "train",
    unbiased_split: str = "train_unbiased",
    biased_split: str = "test_biased",
    decorrelated_split: str = "test_decorrelated",
    context_split: str | None = "test_context",
    test_images: int | None = None,
    guidance: Sequence[str] = (),
    guidance_method: str = "cam",
    supervised_share: float | None = DEFAULT_SUPERVISED_SHARE,
    gain_runs: bool = True,
    cam: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Train and evaluate every run for ``seeds`` seeds; write results.json, table.md and the plot.

    ``overrides`` replace fields of :data:`STUDY_CONFIG` (``epochs``, ``train_images``,
    ``dataset``, ``data_root``, ...). ``test_images`` caps each test split (generated worlds).
    ``context_split``: the context-only split, used when the dataset has it (``None``: none).
    ``guidance``: guided runs (see :func:`study_runs`) on ``guidance_method`` with
    ``supervised_share`` of each batch supervised; ``gain_runs=False`` skips gain and gain-ext.
    Returns ``{"runs", "summary", "target", "table", "output"}``.
    """
    from gainet.data import build_dataset
    from gainet.data.factory import WORLDS
    from gainet.training.data import build_datasets

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    base = STUDY_CONFIG.replace(threads=threads, progress=progress, **overrides)
    if base.dataset in ("parts", "garments"):
        raise ValueError("the bias study needs a dataset with a biased and a decorrelated test split (bias, voc or folder)")
    train_size = len(build_datasets(base.replace(method="cam"))[0])
    counts = parse_supervision(supervised_counts, train_size)
    seed_list = list(range(first_seed, first_seed + seeds))
    sized = {"num_images": test_images} if test_images and base.dataset in WORLDS else {}
    test_sets = {
        split: build_dataset(base.dataset, split, root=base.data_root, image_size=base.image_size,
                             train_transforms=False, **base.dataset_options, **sized)
        for split in (biased_split, decorrelated_split)
    }
    context_sets = {}
    if context_split and context_split in getattr(type(test_sets[decorrelated_split]), "splits", {}):
        context_sets[context_split] = build_dataset(
            base.dataset, context_split, root=base.data_root, image_size=base.image_size, train_transforms=False,
            **base.dataset_options, **sized)
    runs = study_runs(counts, reference=reference, guidance=guidance, guidance_method=guidance_method,
                      gain_runs=gain_runs, cam=cam)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed in seed_list:
        for run in runs:
            config = _run_config(base, run, seed, output, train_split, unbiased_split, supervised_share)
            print(f"[bias-study] seed {seed}: {run['run']} ({config.method} on {config.train_split}"
                  + (f", {config.supervision} on {run['supervised']} images" if run["supervised"] else "")
                  + (f", guidance {config.guidance}" if config.guidance else "") + ") ...", flush=True)
            result = train_and_evaluate(config, test_sets, context_sets)
            row = {"run": run["run"], "method": run["method"], "supervised": run["supervised"] or 0,
                   "guidance": run.get("guidance", ""),
                   "supervision": config.supervision if run["supervised"] else "",
                   "swap_mask": config.swap_mask if run.get("guidance") else "",
                   "train_split": config.train_split, "seed": seed, "train_seconds": result["train_seconds"],
                   **_flat(result, biased_split, decorrelated_split, next(iter(context_sets), None))}
            rows.append(row)
            print(f"[bias-study]   biased {row['biased_accuracy']:.3f} decorrelated {row['decorrelated_accuracy']:.3f} "
                  f"conflict {row['conflict_accuracy']:.3f} context {row['context_rate']:.3f} "
                  f"box energy {row['decorrelated_box_energy']:.3f} ({result['train_seconds']:.0f} s)", flush=True)
    summary = summarise(rows)
    target = target_check(summary, train_size, base.supervision)
    table = markdown_report(summary, train_size, target, seed_list, kind=base.supervision)
    (output / "table.md").write_text("# Bias study\n\n" + table)
    num_classes = len(getattr(test_sets[decorrelated_split], "classes", []))
    figure = plot(summary, output / "accuracy_vs_supervision.png", train_size,
                  chance=1.0 / num_classes if num_classes else None, kind=base.supervision)
    seconds = time.perf_counter() - started
    results = {
        "config": base.to_dict(), "train_size": train_size, "supervision": counts, "seeds": seed_list,
        "splits": {"biased": biased_split, "decorrelated": decorrelated_split, "train": train_split,
                   "unbiased": unbiased_split},
        "runs": rows, "summary": summary, "target": target, "seconds": seconds,
        "train_seconds_total": sum(r["train_seconds"] for r in rows),
    }
    (output / "results.json").write_text(json.dumps(_finite(results), indent=2))
    print(table)
    print(f"[bias-study] {len(rows)} runs in {seconds / 60:.1f} min; wrote {output / 'results.json'}, "
          f"{output / 'table.md'}, {figure}")
    return {"runs": rows, "summary": summary, "target": target, "table": table, "output": str(output)}


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
