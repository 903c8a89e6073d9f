"""Saving and restoring numpy generators inside weights-only checkpoints."""

from __future__ import annotations

import json

import numpy as np


def rng_state(rng: np.random.Generator) -> str:
    """The generator's state as JSON: its 128-bit integers do not fit a tensor, and a string
    loads under ``torch.load(weights_only=True)``."""
    return json.dumps(rng.bit_generator.state)


def set_rng_state(rng: np.random.Generator, state: str) -> None:
    rng.bit_generator.state = json.loads(state)
