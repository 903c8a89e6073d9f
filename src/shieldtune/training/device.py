"""Choosing the device a step trains on (``training.device``)."""

from __future__ import annotations

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
