"""Turning SIGTERM into an orderly shutdown.

Kubernetes stops a pod (the KFP ``tune`` task, a controller deleted by its
owner) with SIGTERM and kills it after a grace period. Raised as
``KeyboardInterrupt`` in the main thread, SIGTERM unwinds the tuning job like
Ctrl-C: ``finally`` blocks delete the step Jobs it started and close the MLflow
runs as FAILED instead of leaving them running.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
