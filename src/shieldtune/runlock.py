"""One process per tuning run: an exclusive lock on the run's folder.

Two processes continuing the same run (a second ``--resume``, a retried pipeline
task next to a live one) would both log every metric after the resume point and
both register a model. The lock is an advisory ``flock`` on ``<run>/.lock``,
released by the kernel when its holder exits, however it exits; the file holds
the holder's pid so the refusal can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from shieldtune.errors import ShieldtuneError, StorageError


class RunLockedError(ShieldtuneError):
    """Another live process holds the run."""


class RunLock:
    def __init__(self, run_dir: Path, run_label: str) -> None:
        self.path = Path(run_dir) / ".lock"
        self.run_label = run_label
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot create {str(self.path)!r}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(
                f"run {self.run_label} is already running in process {holder} (it holds "
                f"{str(self.path)!r}); wait for it to end or stop it, then resume"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
