"""Output directories that never lose a finished result silently.

A command that writes a run (``train``, ``train-seg``, a ``bias-study`` run, ``explain``'s overlays)
into a directory that already holds one refuses with one line, unless the user asks to continue
it (``--resume auto``, where the command has it) or to start afresh (``--overwrite``, which
deletes the old run's files first). Re-running a command with one option changed then never
replaces the run a user had. ``make-cams`` / ``pseudo-labels`` / ``eval-seg`` resume per file
(their meta file refuses different settings) and do not use this.

No torch import: the CLI and every command can call it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable, Sequence

def existing_outputs(directory: str | Path, patterns: Iterable[str]) -> list[Path]:
    """The files or folders of ``directory`` matching the glob ``patterns``, sorted, no duplicates."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = {path for pattern in patterns for path in directory.glob(pattern)}
    return sorted(found)


def refuse_existing_run(
    directory: str | Path,
    markers: Sequence[str],
    *,
    what: str = "a finished run",
    resume: str | None = "--resume auto",
    overwrite: str = "deletes its files",
) -> None:
    """Raise a one-line ``ValueError`` if ``directory`` holds any of ``markers`` (glob patterns of
    the files a run leaves, e.g. ``final.json``, ``last.pt``), naming how to go on: ``resume``
    (the option that continues the run; ``None`` for commands without one), ``--overwrite`` and
    another ``--output-dir``; ``overwrite`` says what ``--overwrite`` does there."""
    found = existing_outputs(directory, markers)
    if not found:
        return
    ways = [f"continue it with {resume}"] if resume else []
    ways += [f"start afresh with --overwrite ({overwrite})", "choose another --output-dir"]
    raise ValueError(f"{directory}: holds {what} ({found[0].name}); {', '.join(ways[:-1])} or {ways[-1]}")


def remove_outputs(directory: str | Path, patterns: Iterable[str]) -> list[Path]:
    """Delete what ``patterns`` match in ``directory`` (files, and folders such as ``tensorboard/``);
    return what was removed. Only the named run files go: anything else a user keeps there stays."""
    removed = existing_outputs(directory, patterns)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return removed
