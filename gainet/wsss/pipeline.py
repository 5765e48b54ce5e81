"""All five WSSS stages in a row for one classifier checkpoint (the benchmark's and the tests'
driver; the CLI runs each stage on its own)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from gainet.wsss.cams import eval_cams, make_cams
from gainet.wsss.config import DEFAULT_SCALES
from gainet.wsss.pseudo_labels import make_pseudo_labels
from gainet.wsss.seg_trainer import SegConfig, evaluate_segmentation, train_seg


def run_pipeline(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    cam_split: str | None = None,
    cam_images: int | None = None,
    eval_split: str = "val",
    eval_images: int | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = False,
    band: float = 0.1,
    crf: bool = False,
    seg: dict[str, Any] | None = None,
    eval_scales: Sequence[float] = (1.0,),
    eval_flip: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """make-cams -> eval-cams -> pseudo-labels (threshold from eval-cams) -> train-seg -> eval-seg.

    Output folders under ``output_dir``: ``cams/``, ``labels/``, ``seg/``, ``eval/``. Every stage
    resumes what is already there. ``seg``: :class:`SegConfig` fields. Returns each stage's
    result and the seconds it took.
    """
    out = Path(output_dir)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    make_cams(checkpoint, out / "cams", split=cam_split, limit=cam_images, scales=scales, flip=flip,
              device=device, progress=progress)
    cams = eval_cams(out / "cams", progress=progress)
    timings["cams"] = time.perf_counter() - started
    started = time.perf_counter()
    labels = make_pseudo_labels(out / "cams", out / "labels", band=band, crf=crf, progress=progress)
    timings["labels"] = time.perf_counter() - started
    started = time.perf_counter()
    config = SegConfig(**{"labels_dir": str(out / "labels"), "output_dir": str(out / "seg"), "device": device,
                          "progress": progress, "resume": "auto", **(seg or {})})
    train_seg(config)
    timings["train_seg"] = time.perf_counter() - started
    started = time.perf_counter()
    evaluation = evaluate_segmentation(out / "seg" / "last.pt", out / "eval", split=eval_split, limit=eval_images,
                                       scales=eval_scales, flip=eval_flip, crf=crf, device=device, progress=progress)
    timings["eval_seg"] = time.perf_counter() - started
    return {"cams": cams, "labels": labels, "seg": evaluation, "seconds": timings}
