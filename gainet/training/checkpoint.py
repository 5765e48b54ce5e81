"""Atomic checkpoints: a crash while writing never leaves a truncated file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a gainet checkpoint, with a one-line error naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise ValueError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})".splitlines()[0]) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path}: not a gainet checkpoint (no 'model'/'config' entries)")
    return state


def resolve_resume(resume: str | None, output_dir: str | Path) -> str | None:
    """``--resume`` value to a checkpoint path: ``"auto"`` means ``output_dir/last.pt`` if it exists."""
    if resume != "auto":
        return resume
    last = Path(output_dir) / "last.pt"
    return str(last) if last.is_file() else None
