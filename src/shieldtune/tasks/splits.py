"""Seeded train / val / test splits of one pool of samples, shared by the built-in tasks."""

from __future__ import annotations

import numpy as np

from shieldtune.config import DataConfig
from shieldtune.errors import DataError


def split_sizes(cfg: DataConfig, defaults: tuple[int, int, int]) -> tuple[int, int, int]:
    """``data.train_size`` / ``val_size`` / ``test_size``, each defaulting to the task's own."""
    given = (cfg.train_size, cfg.val_size, cfg.test_size)
    return tuple(d if g is None else g for g, d in zip(given, defaults, strict=True))  # type: ignore[return-value]


def seeded_split(
    n: int, sizes: tuple[int, int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint index sets of the given sizes from one permutation of ``range(n)``."""
    train, val, test = sizes
    check_size("train_size + data.val_size + data.test_size", train + val + test, n)
    perm = rng.permutation(n)
    return perm[:train], perm[train : train + val], perm[train + val : train + val + test]


def check_size(what: str, need: int, have: int) -> None:
    if need > have:
        raise DataError(
            f"data.{what} = {need} exceeds the {have} samples available; lower the split sizes"
        )
