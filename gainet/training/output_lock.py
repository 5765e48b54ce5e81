"""An exclusive lock on a run's output directory: two trainings into one directory would
interleave their checkpoints and logs, and a resume could pick up the other run's files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".gainet.lock"


class OutputDirLock:
    """``fcntl.flock`` on ``<directory>/.gainet.lock``, held from :meth:`acquire` to :meth:`release`.

    The kernel drops the lock when the process dies (kill -9 included), so a stale lock file never
    blocks a later run; the file itself stays (removing it would let two runs lock two different
    files). Acquiring a lock another process holds raises a one-line ``ValueError``.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> "OutputDirLock":
        if self._file is not None or fcntl is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip()
            file.close()
            raise ValueError(
                f"{self.directory}: another gainet run is writing to this output directory"
                f"{f' (process {holder})' if holder else ''}; wait for it to end or choose another --output-dir"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(str(os.getpid()))
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
