"""Choosing the device a step trains on (``training.device``) and its CPU threads
(``training.threads``)."""

from __future__ import annotations

import os

import torch

from shieldtune.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first GPU if torch sees one, else the CPU; ``cuda[:N]`` must exist.

    Checked where the step runs (a controller without a GPU may hand steps to pods with one),
    before anything is trained there.
    """
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"training.device={name} but torch sees no GPU on this machine "
                "(torch.cuda.is_available() is False); use training.device=auto or cpu"
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"training.device={name} but this machine has {torch.cuda.device_count()} GPU(s); "
                f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
        return torch.device("cuda", index)
    return device


def auto_threads(cpus: int | None = None) -> int:
    """Torch threads for this process when ``training.threads`` is unset: half the cores
    this process may use, at most 4. shieldtune's models are small; more threads than that
    mostly wait on each other, and on a busy machine torch's default (every core) ran a job
    2.7 times slower than one thread, with the same results."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cpus or 1) // 2))


def apply_threads(threads: int | None) -> int:
    """Set this process's torch threads: ``training.threads`` when given, else the user's
    ``OMP_NUM_THREADS`` when set, else :func:`auto_threads`; returns the number used."""
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        threads = int(env) if env.isdigit() and int(env) > 0 else auto_threads()
    torch.set_num_threads(threads)
    return threads
