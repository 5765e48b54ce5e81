"""Progress bars that are drawn only on a terminal: piped to a file, a bar's every refresh would
be a line of the log (the trainer logs one line per epoch instead)."""

from __future__ import annotations

import sys
from typing import Any, Iterable

from tqdm.auto import tqdm


def on_terminal() -> bool:
    """Whether standard error (where bars go) is an interactive terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **options: Any) -> tqdm:
    """``tqdm(iterable, **options)``, disabled unless ``enabled`` and standard error is a terminal."""
    return tqdm(iterable, disable=not (enabled and on_terminal()), **options)
