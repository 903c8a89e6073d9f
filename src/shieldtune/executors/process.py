"""``process`` backend: environment steps in a pool of worker processes on this machine.

Each worker builds one :class:`~shieldtune.training.step.StepRunner` (the job's
step spec + data splits, sent once when the worker starts) and trains the steps
it is handed, so ``tuner.num_envs`` environments train at the same time. The
cores are split between workers (``torch.set_num_threads``), because torch
threads of concurrent processes competing for the same cores slow all of them
down many times over.

Workers are started with ``spawn`` (forking a process that already runs torch
threads can deadlock). A step whose worker raises or dies is retried on a
fresh pool up to ``tuner.step_retries`` times, then reported as a
:class:`~shieldtune.errors.StepFailedError`. Workers end with the controller,
even a SIGKILLed one (they watch their parent process).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

from shieldtune.errors import StepFailedError
from shieldtune.job import StepSpec
from shieldtune.tasks.contract import TaskData, TensorSplit
from shieldtune.training.step import StepRequest, StepResult, StepRunner

_worker: StepRunner | None = None


#: How often a worker checks that the process that started it still runs (seconds).
PARENT_POLL_SECONDS = 0.5


def _exit_with_parent(parent: int) -> None:
    """End this worker when ``parent`` (the controller) is gone, even if it was SIGKILLed:
    a worker holds a copy of the splits (about 1 GB on MNIST) and would otherwise wait on
    its pipe forever. A thread polls ``os.getppid()`` (an orphan is re-parented); Linux's
    PR_SET_PDEATHSIG does not fit, as it fires when the *thread* that started the worker
    ends, and rounds run on a thread of their own."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    if os.getppid() != parent:  # the parent died before this worker got this far
        os._exit(1)
    threading.Thread(target=watch, name="shieldtune-parent-watch", daemon=True).start()


def _init_worker(
    steps: dict[str, Any], data: TaskData | None, threads: int, parent: int | None = None
) -> None:
    import torch

    global _worker
    if parent is not None:
        _exit_with_parent(parent)
    torch.set_num_threads(threads)
    _worker = StepSpec.from_dict(steps).runner(data)


def _run_in_worker(request: StepRequest) -> StepResult:
    assert _worker is not None, "worker was not initialised"
    return _worker.run(request)


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """An equal share of this machine's cores for each worker (at least one)."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) // workers)


class ProcessStepExecutor:
    def __init__(
        self,
        steps: StepSpec,
        data: TaskData,
        workers: int,
        *,
        retries: int = 2,
        threads: int | None = None,
    ) -> None:
        self.workers = workers
        self.retries = retries
        threads = threads or threads_per_worker(self.workers)
        # In-memory splits are sent to each worker once; a streamed dataset is reopened by
        # each worker through its task (it may not pickle, and need not fit in memory).
        in_memory = all(isinstance(s, TensorSplit) for s in (data.train, data.val, data.test))
        self._initargs = (steps.to_dict(), data if in_memory else None, threads, os.getpid())
        self._pool: ProcessPoolExecutor | None = None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=self._initargs,
            )
        return self._pool

    def _restart_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def run(self, request: StepRequest) -> StepResult:
        return self.run_many([request])[0]

    def run_many(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        results: list[StepResult | None] = [None] * len(requests)
        attempts = [0] * len(requests)
        errors: list[str] = [""] * len(requests)
        pending = list(range(len(requests)))
        while pending:
            futures: dict[int, Future] = {}
            for i in pending:
                attempts[i] += 1
                futures[i] = self._ensure_pool().submit(_run_in_worker, requests[i])
            broken = False
            for i, future in futures.items():
                try:
                    results[i] = replace(future.result(), attempts=attempts[i])
                except BrokenProcessPool as exc:
                    broken = True
                    errors[i] = f"worker process died ({exc})"
                except Exception as exc:
                    errors[i] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            if broken:
                self._restart_pool()
            pending = [i for i in pending if results[i] is None]
            exhausted = [i for i in pending if attempts[i] > self.retries]
            if exhausted:
                i = exhausted[0]
                raise StepFailedError(
                    f"step with seed {requests[i].seed} failed {attempts[i]} times "
                    f"(tuner.step_retries={self.retries}); last error: {errors[i]}"
                )
        return [r for r in results if r is not None]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
