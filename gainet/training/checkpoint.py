"""Checkpoint files: atomic writes (a crash never leaves a truncated file behind), safe loading
(``weights_only=True``: opening a checkpoint cannot run code from it) and the checks every load
makes (a gainet checkpoint, finite weights and buffers)."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

logger = logging.getLogger(__name__)

# Opt-out of the safe loader for old checkpoints that pickled Python objects (numpy RNG states).
UNSAFE_LOAD_ENV = "GAINET_UNSAFE_LOAD"
TEMPORARY_SUFFIX = ".tmp"


def unsafe_load_requested() -> bool:
    """Whether ``GAINET_UNSAFE_LOAD`` (set by ``--unsafe-load``) asks for full-pickle loading."""
    return os.environ.get(UNSAFE_LOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def fsync_directory(directory: str | Path) -> None:
    """Flush a directory entry (a rename into it) to disk; a no-op where directories cannot be opened."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _write_atomic(path: str | Path, write: Callable[[Any], None], mode: str) -> Path:
    """Write through ``write(file)`` to a temporary file beside ``path``, fsync, rename over
    ``path`` and fsync the directory: ``path`` is either the old or the new complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(handle, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same directory, fsync, rename over ``path``,
    fsync the directory."""
    return _write_atomic(path, lambda file: torch.save(state, file), "wb")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace a text file (metrics.csv, final.json) atomically, like :func:`save_atomic`."""
    return _write_atomic(path, lambda file: file.write(text), "w")


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files that writes killed mid-way left in ``directory``.

    Call only while holding the directory's lock (:mod:`gainet.training.lock`): another run's
    temporaries are then not in flight."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir()
             if p.is_file() and p.name.startswith(".") and p.name.endswith(TEMPORARY_SUFFIX) and p.name.count(".") >= 3]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d temporary file(s) left by an interrupted write in %s", len(stale), directory)
    return stale


def non_finite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict holding NaN or inf (weights or buffers
    such as BatchNorm's ``running_var``)."""
    return [name for name, value in tensors.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    unsafe: bool | None = None) -> dict[str, Any]:
    """Load a gainet checkpoint, with a one-line error naming the file when it is not one.

    Loads with ``torch.load(weights_only=True)``: tensors and plain Python values only, so a
    checkpoint from anyone cannot run code. ``unsafe=True`` (default: ``GAINET_UNSAFE_LOAD``,
    i.e. ``--unsafe-load``) falls back to full unpickling, for trusted old files only. A
    checkpoint whose model holds NaN or inf is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    unsafe = unsafe_load_requested() if unsafe is None else unsafe
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same to the user
        if not unsafe:
            raise ValueError(_unreadable(path, error)) from None
        logger.warning("UNSAFE LOAD of %s: full unpickling runs any code the file holds (%s=1 / --unsafe-load)",
                       path, UNSAFE_LOAD_ENV)
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as unsafe_error:  # noqa: BLE001
            raise ValueError(_unreadable(path, unsafe_error)) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path}: not a gainet checkpoint (no 'model'/'config' entries)")
    bad = non_finite_tensors(state["model"])
    if bad:
        raise ValueError(f"{path}: refusing a checkpoint with non-finite values (NaN/inf) in {len(bad)} model "
                         f"tensor(s), first {bad[0]!r} (a diverged run)")
    return state


def _unreadable(path: Path, error: Exception) -> str:
    """One line for a failed load; names the opt-out when the file holds more than tensors and plain values."""
    text = str(error)
    found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, flags=re.IGNORECASE)
    if found:
        return (f"{path}: refusing to load: the file holds Python objects ({found.group(1)}), which could run "
                f"code; if you trust it, rerun with --unsafe-load (or {UNSAFE_LOAD_ENV}=1)")
    return f"{path}: not a readable checkpoint ({type(error).__name__}: {text.splitlines()[0] if text else ''})"


def resolve_resume(resume: str | None, output_dir: str | Path) -> str | None:
    """``--resume`` value to a checkpoint path: ``"auto"`` means ``output_dir/last.pt`` if it exists."""
    if resume != "auto":
        return resume
    last = Path(output_dir) / "last.pt"
    return str(last) if last.is_file() else None


def load_init_weights(gain: torch.nn.Module, path: str | Path) -> str:
    """Load ``TrainConfig.init_weights`` into a freshly built :class:`~gainet.core.GAIN` model.

    ``path`` is a gainet checkpoint (its ``model`` entry fills the whole wrapper) or a plain state
    dict of the wrapped classifier (``gain.model``); both read with ``weights_only=True``. Returns
    ``"checkpoint"`` or ``"state_dict"``; weights that do not fit are a one-line ``ValueError``.
    """
    from gainet.models import read_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: init_weights file not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise ValueError(_unreadable(path, error)) from None
    if isinstance(raw, dict) and "model" in raw and "config" in raw:
        state, target, kind = load_checkpoint(path)["model"], gain, "checkpoint"
    else:
        state, target, kind = read_state_dict(path), getattr(gain, "model", gain), "state_dict"
    result = target.load_state_dict(state, strict=False)
    stray = [k for k in result.missing_keys + result.unexpected_keys if not k.startswith("backbone.linear_head.")]
    if stray:
        raise ValueError(f"{path}: init_weights do not fit the model ({len(result.missing_keys)} missing, "
                         f"{len(result.unexpected_keys)} unexpected keys, e.g. {stray[0]!r})")
    return kind
