"""Errors raised for bad input data, and the skip-or-raise policy shared by the datasets."""

from __future__ import annotations

from typing import Literal

OnError = Literal["raise", "skip"]


class DataError(ValueError):
    """Bad input data: the message is one line naming the file and the problem."""

    def __init__(self, file: object, problem: str | None = None) -> None:
        if problem is None:
            # Rebuilt from its message alone: unpickling, or a DataLoader worker re-raising it.
            self.file, self.problem = "", str(file)
            super().__init__(str(file))
            return
        self.file = str(file)
        self.problem = " ".join(str(problem).split())  # keep the message on one line
        super().__init__(f"{self.file}: {self.problem}")


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
