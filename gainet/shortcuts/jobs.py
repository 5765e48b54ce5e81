"""The jobs behind ``gainet diagnose`` and ``gainet fix``: load the model and the split, run, write.

Sits above :mod:`gainet.shortcuts.diagnose` / :mod:`~gainet.shortcuts.fix` / the trainer and below the CLI.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from gainet.data import build_dataset
from gainet.data.factory import DEFAULT_IMAGE_SIZE
from gainet.shortcuts.diagnose import AnnotatedImages, diagnose, load_annotated, resolve_swap_mask
from gainet.shortcuts.report import OUTPUT_FILES, markdown, write_report
from gainet.shortcuts.subject import Subject, checkpoint_subject, model_subject
from gainet.training.checkpoint import save_atomic, write_text_atomic
from gainet.training.config import TrainConfig

logger = logging.getLogger(__name__)

# The held-out split diagnosed by default: the biased worlds' test split of the training
# distribution; otherwise the model's validation split.
DEFAULT_SPLIT = {"bias": "test_biased", "garments-bias": "test_biased"}
# Where the contexts come from (default_context_split), and at most how many.
DEFAULT_CONTEXT_SPLIT = {"bias": "train", "garments-bias": "train"}
CONTEXT_LIMIT = 500
MIN_FIX_IMAGES = 8
# gainet fix's default, from docs/shortcuts.md's 3-seed measurements with boxes on 2%: DFR tied
# guidance on garments-bias (decorrelated 0.902 against 0.911) but fell 7 points short of it on the
# pretrained bias world (0.822 against 0.894), so it is not the default; it stays the fast way.
DEFAULT_WAY = "guidance"
WAYS = ("auto", "guidance", "dfr", "guidance-dfr", "dfr-l2")
FIX_FILES = ("fix.json", "fix.md", "fixed.pt")
GUIDANCE_MODES = "context-swap,context-only"


def _device(name: str) -> torch.device:
    from gainet.training.distributed import DistributedContext
    from gainet.training.trainer import resolve_device

    return resolve_device(name, DistributedContext())


def refuse_overwrite(output_dir: str | Path, names: tuple[str, ...], overwrite: bool) -> None:
    """A finished output is never replaced silently: one line unless ``overwrite``."""
    for name in names:
        if (Path(output_dir) / name).exists() and not overwrite:
            raise ValueError(f"{Path(output_dir) / name} exists: a finished output is not overwritten "
                             "(use --overwrite or another --output-dir)")


def load_subject(*, checkpoint: str | None, model: str | None, weights: str | None, multi_label: bool,
                 dataset: str | None, data_root: str | None, dataset_options: dict | None, image_size: int | None,
                 device: torch.device, normalize: str = "imagenet") -> Subject:
    """The model to diagnose or fix, with a config naming its dataset (checkpoint: its own, overridable).

    A checkpoint's images are normalised as it was trained. A ``--model``'s with ImageNet's
    statistics (``normalize="imagenet"``: what torchvision's and timm's pretrained models expect,
    and what ``gainet explain --model`` uses; a timm model's own ``pretrained_cfg`` wins) or with
    the dataset's (``"dataset"``); the choice goes into the config's ``dataset_options``, so the
    fix's training normalises alike.
    """
    if normalize not in ("imagenet", "dataset"):
        raise ValueError(f"--normalize must be imagenet or dataset, got {normalize!r}")
    if (checkpoint is None) == (model is None):
        raise ValueError("give --checkpoint FILE or --model NAME --weights FILE")
    if checkpoint is not None:
        if weights:
            raise ValueError("--weights goes with --model (a checkpoint holds its own weights)")
        subject = checkpoint_subject(checkpoint, device)
        changes: dict[str, Any] = {}
        if dataset and dataset != subject.config.dataset:
            changes.update(dataset=dataset, dataset_options=dict(dataset_options or {}))
        elif dataset_options:
            changes["dataset_options"] = {**subject.config.dataset_options, **dataset_options}
        if data_root:
            changes["data_root"] = data_root
        if image_size:
            changes["image_size"] = image_size
        subject.config = subject.config.replace(**changes)
        return subject
    if not weights:
        raise ValueError(f"--model {model} needs --weights FILE (a local state-dict file)")
    if not dataset:
        raise ValueError("--model needs --dataset (and --data-root for folder / voc): the split to test it on")
    size = image_size or DEFAULT_IMAGE_SIZE.get(dataset, 224)
    options = dict(dataset_options or {})
    if normalize == "imagenet" and "mean" not in options:
        options.update(zip(("mean", "std"), _imagenet_statistics(model)))
    config = TrainConfig(method="cam", model=model, dataset=dataset, data_root=data_root,
                         dataset_options=options, image_size=size, pretrained=None,
                         progress=False, tensorboard=False)
    # The dataset says what the model's outputs mean: its classes and whether they are multi-label
    # (VOC too: read as `gainet train` reads it, so a --model on VOC is scored as multi-label, the way
    # `fix --way guidance` then trains it).
    probe = build_dataset(dataset, "all" if dataset == "folder" else config.train_split, root=data_root, image_size=size,
                          train_transforms=False, **config.dataset_options)
    classes = list(probe.classes)
    multi = multi_label or bool(getattr(probe, "multi_label", False))
    return model_subject(model, weights, classes=classes, multi_label=multi, config=config, device=device,
                         mean=tuple(probe.mean), std=tuple(probe.std))


def _imagenet_statistics(model: str) -> tuple[list[float], list[float]]:
    """(mean, std) a model trained elsewhere expects: ImageNet's, or a timm model's ``pretrained_cfg``."""
    from gainet.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    if model.startswith("timm:"):
        try:
            import timm

            config = timm.get_pretrained_cfg(model.removeprefix("timm:"))
            if config is not None:
                mean, std = list(config.mean), list(config.std)
        except Exception:  # noqa: BLE001 - unknown to timm's registry: ImageNet's statistics
            pass
    return [float(m) for m in mean], [float(s) for s in std]


def _split_dataset(subject: Subject, split: str) -> Any:
    config = subject.config
    options = dict(config.dataset_options)
    # A generated world's training / validation split has the size the model was trained with.
    sizes = {config.train_split: config.train_images, config.val_split: config.val_images}
    if sizes.get(split) and "num_images" not in options:
        options["num_images"] = sizes[split]
    data = build_dataset(config.dataset, split, root=config.data_root, image_size=config.image_size,
                         train_transforms=False, **options)
    if list(data.classes) != list(subject.classes):
        raise ValueError(f"{subject.source}: the model's classes {subject.classes[:6]} differ from split {split!r}'s "
                         f"{list(data.classes)[:6]}")
    if not subject.mean:
        subject.mean, subject.std = tuple(data.mean), tuple(data.std)
    return data


def default_split(subject: Subject) -> str:
    return DEFAULT_SPLIT.get(subject.config.dataset, subject.config.val_split)


def default_context_split(subject: Subject) -> str:
    """Where class-typical contexts come from: the data the model learned from. A built-in bias
    world's biased training split (also for a model trained on its unbiased split: the contexts
    that go with the classes in the data the user has), otherwise the model's training split."""
    return DEFAULT_CONTEXT_SPLIT.get(subject.config.dataset, subject.config.train_split)


def image_ids(dataset: Any, indices: Any = None) -> set[str]:
    """The ids of ``dataset``'s images (all, or at ``indices``); empty if it names none."""
    namer = getattr(dataset, "image_id", None)
    if not callable(namer):
        return set()
    return {str(namer(int(i))) for i in (range(len(dataset)) if indices is None else indices)}


def refuse_shared_images(train: Any, train_split: str, held_out: Any, split: str) -> None:
    """A fixed model is judged on images it was not fine-tuned on: one line if the two splits share
    images (``--split all``, or split files that overlap), compared by image id, not split name."""
    shared = sorted(image_ids(train) & image_ids(held_out))
    if shared:
        raise ValueError(f"--split {split!r} shares {len(shared)} images with the training split {train_split!r} "
                         f"(e.g. {shared[0]}): the fixed model must be diagnosed on images it was not trained on; "
                         "give a held-out --split")


def load_contexts(subject: Subject, context_split: str | None, *, test: AnnotatedImages, test_split: str,
                  swap_mask: str, limit: int | None, seed: int, progress: bool) -> tuple[AnnotatedImages | None, str]:
    """The annotated images whose contexts the test pastes and shows alone, and where they came from.

    ``context_split`` (default :func:`default_context_split`) is read with the test's annotation
    source. ``"same"``, or a context split without enough annotated images (logged), falls back to
    the split under test: ``(None, ...)``, and the result says so (on a clean split whose
    backgrounds are random the probe then finds no class in them and the verdict says why).
    """
    name = context_split or default_context_split(subject)
    if name in ("same", test_split):
        return None, f"split {test_split!r} (the split under test)"
    try:
        dataset = _split_dataset(subject, name)
        contexts = load_annotated(dataset, source=test.source, limit=limit or CONTEXT_LIMIT, seed=seed + 7,
                                  where=f"--context-split {name!r}", progress=progress)
    except ValueError as error:
        if context_split:  # asked for by name: say why it cannot be used
            raise
        logger.warning("%s; the contexts come from the split under test", error)
        return None, f"split {test_split!r} (the split under test: {name!r} has too few annotated images)"
    return contexts, f"split {name!r}"


def diagnose_subject(subject: Subject, data: AnnotatedImages, output_dir: str | Path, *, split: str, seed: int,
                     batch_size: int, progress: bool, examples: int = 4, title: str = "Background test",
                     contexts: AnnotatedImages | None = None, context_split: str | None = None) -> dict[str, Any]:
    """Diagnose ``subject`` on ``data`` (contexts from ``contexts``) and write the three files into ``output_dir``."""
    started = time.perf_counter()
    result, splits, scores = diagnose(subject.gain, data, multi_label=subject.multi_label, classes=subject.classes,
                                      contexts=contexts, context_split=context_split, seed=seed, batch_size=batch_size,
                                      device=subject.device, progress=progress)
    result.update(model=subject.source, split=split, dataset=subject.config.dataset,
                  seconds=time.perf_counter() - started)
    write_report(output_dir, result, splits, scores, data.labels, mean=subject.mean, std=subject.std,
                 examples=examples, title=title)
    return result


def run_diagnose(*, checkpoint: str | None = None, model: str | None = None, weights: str | None = None,
                 multi_label: bool = False, dataset: str | None = None, data_root: str | None = None,
                 dataset_options: dict | None = None, image_size: int | None = None, split: str | None = None,
                 supervision: str = "auto", swap_mask: str = "auto", limit: int | None = None, seed: int = 0,
                 output_dir: str | Path = "runs/diagnose", overwrite: bool = False, device: str = "auto",
                 batch_size: int = 64, progress: bool = True, examples: int = 4,
                 normalize: str = "imagenet", context_split: str | None = None) -> dict[str, Any]:
    """``gainet diagnose``: the background test on one split, contexts from ``context_split`` (default:
    the training distribution, :func:`default_context_split`); returns the result (also in ``diagnosis.json``)."""
    refuse_overwrite(output_dir, OUTPUT_FILES, overwrite)
    subject = load_subject(checkpoint=checkpoint, model=model, weights=weights, multi_label=multi_label,
                           dataset=dataset, data_root=data_root, dataset_options=dataset_options,
                           image_size=image_size, device=_device(device), normalize=normalize)
    split = split or default_split(subject)
    dataset_object = _split_dataset(subject, split)
    data = load_annotated(dataset_object, source=supervision, swap_mask=swap_mask, limit=limit,
                          where=f"split {split!r} of {subject.config.dataset}", progress=progress, seed=seed)
    contexts, where = load_contexts(subject, context_split, test=data, test_split=split, swap_mask=swap_mask,
                                    limit=None, seed=seed, progress=progress)
    return diagnose_subject(subject, data, output_dir, split=split, seed=seed, batch_size=batch_size, progress=progress,
                            examples=examples, contexts=contexts, context_split=where)


def guidance_config(subject: Subject, *, output_dir: Path, train_split: str, val_split: str, supervision: str,
                    supervised_count: int, swap_mask: str, epochs: int, lr: float, seed: int, threads: int | None,
                    device: str, progress: bool, guidance: str = GUIDANCE_MODES, **_: Any) -> TrainConfig:
    """The ``gainet train`` run that fine-tunes ``subject`` with counterfactual guidance: method
    ``cam`` plus ``guidance`` on ``supervised_count`` annotated images (a quarter of every batch),
    initialised from the subject's own weights (``init_weights``), no warm-up."""
    return subject.config.replace(
        method="cam", guidance=guidance, supervision=supervision, supervised_count=supervised_count,
        supervised_share=0.25, swap_mask="grabcut" if swap_mask == "grabcut" else "mask", epochs=epochs,
        warmup_epochs=0, lr=lr, train_split=train_split, val_split=val_split, output_dir=str(output_dir),
        init_weights=str(Path(subject.source).resolve()), pretrained=None, resume=None, seed=seed, threads=threads,
        device=device, progress=progress, tensorboard=False, eval_every=max(1, epochs), keep_epoch_checkpoints=False,
    )


def run_fix(*, way: str = DEFAULT_WAY, checkpoint: str | None = None, model: str | None = None, weights: str | None = None,
            multi_label: bool = False, dataset: str | None = None, data_root: str | None = None,
            dataset_options: dict | None = None, image_size: int | None = None, train_split: str | None = None,
            split: str | None = None, supervision: str = "boxes", supervised_count: str = "5%",
            swap_mask: str = "auto", epochs: int = 2, lr: float = 1e-3, guidance: str = GUIDANCE_MODES,
            contexts_per_class: int = 1, seed: int = 0, output_dir: str | Path = "runs/fix", overwrite: bool = False,
            device: str = "auto", batch_size: int = 64, threads: int | None = None, progress: bool = True,
            limit: int | None = None, normalize: str = "imagenet", context_split: str | None = None) -> dict[str, Any]:
    """``gainet fix``: a fixed model (``fixed.pt``, a gainet checkpoint), diagnosed before and
    after on the held-out ``split``; ``fix.json`` / ``fix.md`` hold both and the cost."""
    from gainet.training.data import choose_supervised, parse_supervision

    if way not in WAYS:
        raise ValueError(f"--way must be one of {', '.join(WAYS)}, got {way!r}")
    if supervision not in ("boxes", "masks"):
        raise ValueError(f"--supervision must be boxes or masks, got {supervision!r}")
    output = Path(output_dir)
    refuse_overwrite(output, FIX_FILES, overwrite)
    swap_mask = resolve_swap_mask(swap_mask)
    if threads:
        torch.set_num_threads(threads)
    subject = load_subject(checkpoint=checkpoint, model=model, weights=weights, multi_label=multi_label,
                           dataset=dataset, data_root=data_root, dataset_options=dataset_options,
                           image_size=image_size, device=_device(device), normalize=normalize)
    train_split = train_split or subject.config.train_split
    split = split or default_split(subject)
    if split == train_split:
        raise ValueError(f"--split {split!r} is the training split: the fixed model is diagnosed on held-out images")
    train = _split_dataset(subject, train_split)
    held_out_dataset = _split_dataset(subject, split)
    refuse_shared_images(train, train_split, held_out_dataset, split)
    count = parse_supervision([supervised_count], len(train))[0]
    chosen = choose_supervised(train, supervision, 0.0, count, seed)
    where = f"--supervised-count {supervised_count} of split {train_split!r}"
    annotated = load_annotated(train, source=supervision, swap_mask=swap_mask, indices=chosen, where=where,
                               progress=progress, min_images=MIN_FIX_IMAGES)
    held_out = load_annotated(held_out_dataset, source="auto", swap_mask=swap_mask, limit=limit,
                              where=f"split {split!r}", progress=progress, seed=seed)
    contexts, where_contexts = load_contexts(subject, context_split, test=held_out, test_split=split,
                                             swap_mask=swap_mask, limit=None, seed=seed, progress=progress)
    judged = dict(split=split, seed=seed, batch_size=batch_size, progress=progress, contexts=contexts,
                  context_split=where_contexts)
    before = diagnose_subject(subject, held_out, output / "before", title="Background test, before the fix", **judged)
    started = time.perf_counter()
    fixer = Fixer(subject, output=output, train_split=train_split, val_split=split, supervision=supervision,
                  swap_mask=swap_mask, lr=lr, seed=seed, threads=threads, device=device, progress=progress,
                  guidance=guidance, contexts_per_class=contexts_per_class, batch_size=batch_size)
    if way == "auto":
        fixed, details = fixer.choose(annotated, max_epochs=epochs)
    else:
        fixed, details = fixer.run(way, annotated, epochs=epochs)
    seconds = time.perf_counter() - started
    fixed.source = str(output / "fixed.pt")
    after = diagnose_subject(fixed, held_out, output / "after", title="Background test, after the fix", **judged)
    record = {"way": way, "chosen_way": details.get("way", way), "model": subject.source, "train_split": train_split,
              "split": split, "supervision": supervision, "supervised_count": count, "swap_mask": swap_mask,
              "annotated_ids": sorted(image_ids(train, annotated.index.tolist())), "fix_seconds": seconds,
              "details": details, "before": _headline(before), "after": _headline(after)}
    save_atomic(fixed.checkpoint_state({"fix": record}), output / "fixed.pt")
    write_text_atomic(output / "fix.json", json.dumps(record, indent=2, default=str))
    write_text_atomic(output / "fix.md", fix_markdown(record))
    return record


class Fixer:
    """The ways of ``gainet fix`` on one subject, each returning ``(fixed subject, details)``.

    - ``dfr``: DFR as its paper runs it (:func:`gainet.shortcuts.fix.fix_dfr`), the backbone frozen;
    - ``dfr-l2``: the earlier last-layer refit (L2, not group-balanced; :func:`~gainet.shortcuts.fix.fix_dfr_plain`);
    - ``guidance``: fine-tuning with ``gainet train``'s counterfactual guidance from the subject's weights;
    - ``guidance-dfr``: ``guidance``, then DFR on the fine-tuned features;
    - ``auto`` (:meth:`choose`): a quarter of the annotated images held out, every way (and every
      epoch of the fine-tuning) fit on the rest and scored on their counterfactuals
      (:mod:`gainet.shortcuts.select`); the best way is then refit on all the annotated images.
    """

    def __init__(self, subject: Subject, *, output: Path, train_split: str, val_split: str, supervision: str,
                 swap_mask: str, lr: float, seed: int, threads: int | None, device: str, progress: bool,
                 guidance: str, contexts_per_class: int, batch_size: int) -> None:
        self.subject, self.output, self.seed, self.progress = subject, output, seed, progress
        self.settings = dict(train_split=train_split, val_split=val_split, supervision=supervision,
                             swap_mask=swap_mask, lr=lr, seed=seed, threads=threads, device=device,
                             progress=progress, guidance=guidance)
        self.contexts_per_class, self.batch_size = contexts_per_class, batch_size

    def dfr(self, start: Subject, annotated: AnnotatedImages, recipe: str = "dfr") -> tuple[Subject, dict[str, Any]]:
        from gainet.shortcuts.fix import fix_dfr, fix_dfr_plain

        fixed = start.copy()
        refit = fix_dfr if recipe == "dfr" else fix_dfr_plain
        details = refit(fixed.gain, fixed.gain.model, annotated, multi_label=fixed.multi_label, seed=self.seed,
                        contexts_per_class=self.contexts_per_class, batch_size=self.batch_size, device=fixed.device,
                        progress=self.progress)
        return fixed, details

    def fine_tune(self, annotated: AnnotatedImages, epochs: int, folder: str, *, every_epoch: bool = False) -> list[Subject]:
        """``gainet train`` with the counterfactual guidance on exactly ``annotated``'s images, from the
        subject's weights; the subject after each epoch (``every_epoch``) or after the last."""
        from gainet.training.trainer import train as train_run

        run = self.output / folder
        config = guidance_config(self.subject, output_dir=run, supervised_count=len(annotated), epochs=epochs,
                                 **self.settings)
        config = config.replace(supervised_indices=annotated.index.tolist(), keep_epoch_checkpoints=every_epoch)
        train_run(config)
        files = [run / f"epoch-{e}.pt" for e in range(1, epochs + 1)] if every_epoch else [run / "last.pt"]
        subjects = []
        for file in files:
            fixed = checkpoint_subject(file, self.subject.device)
            fixed.mean, fixed.std = self.subject.mean, self.subject.std
            subjects.append(fixed)
        return subjects

    def run(self, way: str, annotated: AnnotatedImages, *, epochs: int) -> tuple[Subject, dict[str, Any]]:
        if way in ("dfr", "dfr-l2"):
            fixed, details = self.dfr(self.subject, annotated, "dfr" if way == "dfr" else "plain")
            return fixed, {"way": way, **details}
        fixed = self.fine_tune(annotated, epochs, "train")[-1]
        details: dict[str, Any] = {"way": way, "epochs": epochs, "lr": self.settings["lr"],
                                   "guidance": self.settings["guidance"], "train_output": str(self.output / "train")}
        if way == "guidance-dfr":
            fixed, refit = self.dfr(fixed, annotated)
            details["refit"] = refit
        return fixed, details

    def choose(self, annotated: AnnotatedImages, *, max_epochs: int) -> tuple[Subject, dict[str, Any]]:
        from gainet.shortcuts.select import (BOOTSTRAP_RESAMPLES, DEFAULT_RULE, MIN_HELD_OUT, SelectionSet, choose,
                                             hold_out, stability)

        fit_rows, held_rows = hold_out(annotated, seed=self.seed)
        if held_rows.numel() < MIN_HELD_OUT or fit_rows.numel() < MIN_FIX_IMAGES:
            raise ValueError(f"--way auto holds a quarter of the annotated images out to choose the fix: "
                             f"{len(annotated)} annotated images leave {held_rows.numel()} to choose on (needs "
                             f"{MIN_HELD_OUT}) and {fit_rows.numel()} to fit on (needs {MIN_FIX_IMAGES}); annotate more "
                             "images or give --way")
        fit, held = annotated.subset(fit_rows), annotated.subset(held_rows)
        selection = SelectionSet.build(held, multi_label=self.subject.multi_label, seed=self.seed)

        def scored(name: str, subject: Subject, **extra: Any) -> dict[str, Any]:
            scores = selection.score(subject.gain, batch_size=self.batch_size, device=subject.device)
            return {"name": name, "right": scores.pop("right"), "scores": scores, "subject": subject, **extra}

        baseline = scored("none (the model as it is)", self.subject)
        candidates = [scored("dfr", *self.dfr(self.subject, fit)[:1], way="dfr")]
        for epoch, tuned in enumerate(self.fine_tune(fit, max_epochs, "train", every_epoch=True), start=1):
            candidates.append(scored(f"guidance, {epoch} epochs", tuned, way="guidance", epochs=epoch))
            candidates.append(scored(f"guidance, {epoch} epochs, then dfr", self.dfr(tuned, fit)[0],
                                     way="guidance-dfr", epochs=epoch))
        best = choose(candidates, DEFAULT_RULE)
        earlier = choose(candidates, "worst-group")
        position = next(i for i, c in enumerate(candidates) if c is best)
        # How sure: the same choice on resamples of the held-out images, and the chosen candidate's
        # lead over each other one on the same resamples (paired, so a shared swing cancels).
        draws = selection.bootstrap([c["right"] for c in candidates], resamples=BOOTSTRAP_RESAMPLES, seed=self.seed)
        lead = draws[:, position:position + 1] - draws
        low, high = torch.quantile(lead, 0.025, dim=0), torch.quantile(lead, 0.975, dim=0)
        table = [{"name": baseline["name"], **baseline["scores"]}]
        table += [{"name": c["name"], **c["scores"], "lead": [float(low[i]), float(high[i])] if i != position else None}
                  for i, c in enumerate(candidates)]
        details = {"way": best["way"], "chosen": best["name"], "epochs": best.get("epochs"), "rule": DEFAULT_RULE,
                   "chosen_by_worst_group": earlier["name"],
                   "stability": stability(draws, position), "resamples": BOOTSTRAP_RESAMPLES,
                   "fit_images": len(fit),
                   "held_out_images": len(held), "selection_images": len(selection),
                   "candidates": table, "train_output": str(self.output / "train")}
        # As DFR does once its regulariser is chosen: the chosen way, refit on every annotated image
        # (the held-out quarter too), so choosing costs no annotation.
        if best["way"] == "dfr":
            fixed, refit = self.dfr(self.subject, annotated)
        else:
            fixed = self.fine_tune(annotated, best["epochs"], "final")[-1]
            refit = None
            if best["way"] == "guidance-dfr":
                fixed, refit = self.dfr(fixed, annotated)
        details.update(refit_on=len(annotated), refit=refit, final_output=str(self.output / "final"))
        return fixed, details


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("metric", "original", "only_fg", "mixed_same", "mixed_rand", "gap", "paste_cost", "context_rate",
            "context_chance", "context_confidence", "chance", "intervals", "verdict_code", "verdict")
    return {k: result[k] for k in keys if k in result}


def fix_markdown(record: dict[str, Any]) -> str:
    """Before / after table of a fix."""
    before, after = record["before"], record["after"]
    metric = before["metric"]
    rows = [("original", "original"), ("only_fg", "only-FG (object on a neutral fill)"), ("mixed_same", "mixed-same"),
            ("mixed_rand", "mixed-rand"), ("gap", "background gap"), ("paste_cost", "cost of pasting itself"),
            ("context_rate", "context only: named as its class"), ("context_confidence", "context only: confidence")]
    lines = [f"# gainet fix --way {record['way']}", "",
             f"{record['supervised_count']} annotated images ({record['supervision']}) of split "
             f"`{record['train_split']}`; diagnosed on `{record['split']}`; fix took {record['fix_seconds']:.1f} s.", "",
             f"| {metric} | before | after |", "|---|---:|---:|"]
    lines += [f"| {label} | {_with_interval(before, key)} | {_with_interval(after, key)} |" for key, label in rows
              if key in before and key in after]
    lines += ["", f"Before: {before['verdict']}", "", f"After: {after['verdict']}", ""]
    candidates = (record.get("details") or {}).get("candidates")
    if candidates:
        details = record["details"]
        lines += [f"## How the fix was chosen: {details['chosen']}", "",
                  f"{details['held_out_images']} of the annotated images held out; each candidate fit on the other "
                  f"{details['fit_images']} and scored on {details['selection_images']} counterfactuals of the held-out "
                  "ones (each object on held-out contexts of every class, each context alone). Chosen by the "
                  "group-balanced accuracy: the mean over the (object class, context class) groups and each "
                  "class's contexts alone (right when not named as their class, at most at chance)."]
        if details.get("stability") is not None:
            lines += ["", f"How sure: the chosen candidate is the best by group-balanced accuracy on "
                          f"{100 * details['stability']:.0f}% of {details.get('resamples', 'the')} resamples of the "
                          "held-out images (within each class); its lead over each other candidate on the same "
                          "resamples is the 95% interval below. DFR's rule (worst group first) would have chosen: "
                          f"{details.get('chosen_by_worst_group', 'n/a')}."]
        lines += ["", "| candidate | group-balanced | lead of the chosen, 95% | worst group | mean group | "
                      "context alone named |", "|---|---:|---|---:|---:|---:|"]
        for c in candidates:
            interval = c.get("lead")
            span = f"[{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else ""
            lines.append(f"| {c['name']} | {markdown_number(c.get('balanced'))} | {span} | "
                         f"{markdown_number(c['worst_group'])} | {markdown_number(c['mean_group'])} | "
                         f"{markdown_number(c['context_rate'])} |")
        lines.append("")
    return "\n".join(lines)


def _with_interval(result: dict[str, Any], key: str) -> str:
    low, high = (result.get("intervals") or {}).get(key, (None, None))
    text = markdown_number(result[key])
    return text if low is None or low != low else f"{text} [{low:.3f}, {high:.3f}]"


def markdown_number(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


__all__ = ["run_diagnose", "run_fix", "markdown"]
