"""Errors raised for bad input data, and the skip-or-raise policy shared by the datasets."""

from __future__ import annotations

import re
from typing import Literal

OnError = Literal["raise", "skip"]


# The last line of a traceback that torch's DataLoader hands back from a worker:
# "gainet.data.errors.DataError: <file>: <problem>".
_TRACEBACK_LAST_LINE = re.compile(r"^(?:[\w.]+\.)?DataError: (?P<message>.*)$")


class DataError(ValueError):
    """Bad input data: the message is one line naming the file and the problem.

    Pickling keeps ``file`` and ``problem``. A DataLoader worker's error reaches the main process as
    ``DataError(<whole worker traceback>)`` (torch rebuilds the exception from its formatted
    traceback); the file and problem are recovered from its last line, so the message stays
    one line there too.
    """

    def __init__(self, file: object, problem: str | None = None) -> None:
        if problem is None:
            # Rebuilt from a message alone: unpickled from an old pickle, or re-raised by torch.
            file, problem = _split_message(str(file))
        self.file = str(file)
        self.problem = " ".join(str(problem).split())  # keep the message on one line
        super().__init__(f"{self.file}: {self.problem}" if self.file else self.problem)


def _split_message(text: str) -> tuple[str, str]:
    """(file, problem) of a ``"<file>: <problem>"`` message, or of a worker traceback ending in one."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1:
        match = _TRACEBACK_LAST_LINE.match(lines[-1].strip())
        text = match.group("message") if match else lines[-1]
    file, separator, problem = text.partition(": ")
    return (file, problem) if separator else ("", text)


def check_on_error(on_error: str) -> OnError:
    """Return ``on_error`` if it is ``"raise"`` or ``"skip"``, else raise ``ValueError``."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error  # type: ignore[return-value]


class SkipLog:
    """Applies the ``on_error`` policy: re-raise a ``DataError`` or record it as ``(file, reason)``."""

    def __init__(self, on_error: str) -> None:
        self.on_error = check_on_error(on_error)
        self.skipped: list[tuple[str, str]] = []

    def handle(self, error: DataError) -> None:
        if self.on_error == "raise":
            raise error
        self.skipped.append((error.file, error.problem))


# How many skipped files a log line or a results file names (all are counted).
SKIP_EXAMPLES = 5


def skip_summary(dataset: object, limit: int = SKIP_EXAMPLES) -> dict:
    """``{"count": n, "first": [{"file", "reason"}, ...]}``: the items ``dataset`` dropped under
    ``on_error="skip"`` (its ``skipped`` list), the first ``limit`` named; count 0 for datasets
    that never skip (the generated worlds)."""
    skipped = list(getattr(dataset, "skipped", None) or [])
    return {"count": len(skipped), "first": [{"file": str(f), "reason": str(r)} for f, r in skipped[:limit]]}


def skip_line(name: str, summary: dict) -> str:
    """One log line for a ``skip_summary``: ``train: 2 files skipped (on_error=skip): a.png: ...; b.png: ...``."""
    count, first = summary["count"], summary["first"]
    shown = "; ".join(f"{item['file']}: {item['reason']}" for item in first)
    more = f"; and {count - len(first)} more" if count > len(first) else ""
    return f"{name}: {count} file{'s' if count != 1 else ''} skipped (on_error=skip): {shown}{more}"
