"""Helpers the benchmark scripts share (``speed.py`` and ``executors.py``).

The scripts run as ``python benchmarks/<name>.py``, so this folder is ``sys.path[0]`` and they
import these with ``from common import ...``. One copy of the progress log, the machine
description, the CPU accounting that tells a contended measurement from a clean one, the
medians and the Markdown tables keeps their reports consistent with each other.

Only torch and the standard library are imported here: the process pool's spawned workers
re-import ``executors.py`` and with it this module, so it must stay light (no mlflow).
"""

from __future__ import annotations

import os
import platform
import resource
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

#: A measured part counts as contended when other processes used more than this many cores on
#: average during it.
CONTENDED_CORES = 0.25
#: Clock ticks per second, the unit of the CPU times in ``/proc``.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def stderr_logger(name: str) -> Callable[[str], None]:
    """A ``log(msg)`` printing ``[name   12.3s] msg`` to stderr, seconds counted from this call."""
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{name} {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return log


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return float(statistics.median(values)) if values else float("nan")


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str]
) -> str:
    """A Markdown table; ``align`` holds one separator cell (``---``, ``---:``, ...) a column."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- machine + contention


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def base_machine_info() -> dict[str, Any]:
    """The keys every script reports first; each script adds its own after them."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def system_busy_seconds() -> float:
    """CPU seconds all processes on the machine used so far (user+nice+system+irq+steal)."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (e.g. a process pool's workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# --------------------------------------------------------------------------- signals


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_term_and_hup() -> None:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, so the scripts' cleanup runs."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
