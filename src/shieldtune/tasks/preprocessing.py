"""Input transforms that ship with a model: raw features in, the tensor the model eats out.

A task whose model expects transformed inputs (standardised features, series
resampled to a fixed length) declares the transform with its data
(``TaskData.transform``); its splits are built through it, and it is logged as
``preprocessing.json`` next to ``best_model.pt`` in the registered model, so a
server needs neither ``load_data`` nor the training split's statistics::

    transform = load_preprocessing(json.loads(Path("preprocessing.json").read_text()))
    logits = model(transform(raw_features))

A transform is plain data (numbers, no code): :func:`load_preprocessing` builds
only the kinds defined here, so a preprocessing file is as safe to load as JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from shieldtune.errors import CheckpointError, first_line

#: The file a registered model carries its transform in (next to ``best_model.pt``).
PREPROCESSING_FILE = "preprocessing.json"


class Transform:
    """Raw features -> the float32 tensor the model eats.

    Subclasses implement :meth:`apply` (float64 numpy in the middle, so that steps
    compose without rounding) and :meth:`to_dict` (JSON-able, with ``kind``).
    """

    kind: ClassVar[str] = ""

    def apply(self, raw: Any) -> np.ndarray:
        """The transformed inputs as a float64 array (first axis: samples)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description that :func:`load_preprocessing` turns back into this."""
        raise NotImplementedError

    def __call__(self, raw: Any) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.apply(raw)).astype(np.float32))


class Standardize(Transform):
    """``(x - mean) / std`` per feature; ``mean`` and ``std`` broadcast against the inputs
    (shape ``(features,)`` for tables, ``(1, channels, 1)`` for series)."""

    kind = "standardize"

    def __init__(self, mean: Any, std: Any) -> None:
        self.mean = np.array(mean, dtype=np.float64)
        self.std = np.array(std, dtype=np.float64)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"mean {self.mean.shape} and std {self.std.shape} differ in shape")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.std).all()):
            raise ValueError("mean and std must be finite")
        if (self.std <= 0).any():
            raise ValueError("std must be positive")

    def apply(self, raw: Any) -> np.ndarray:
        return (np.asarray(raw, dtype=np.float64) - self.mean) / self.std

    def to_dict(self) -> dict[str, Any]:
        # Python floats round-trip float64 exactly through JSON.
        return {"kind": self.kind, "mean": self.mean.tolist(), "std": self.std.tolist()}


def resample(series: np.ndarray, frames: int) -> np.ndarray:
    """A (channels, length) series linearly interpolated to (channels, frames)."""
    length = series.shape[1]
    old = np.linspace(0.0, 1.0, length)
    new = np.linspace(0.0, 1.0, frames)
    return np.stack([np.interp(new, old, channel) for channel in series])


class Resample(Transform):
    """A sequence of (channels, length) series, lengths free, each linearly interpolated to
    (channels, frames): the batch ``(N, channels, frames)``."""

    kind = "resample"

    def __init__(self, frames: int) -> None:
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be a positive integer, got {frames!r}")
        self.frames = frames

    def apply(self, raw: Sequence[Any]) -> np.ndarray:
        return np.stack([resample(np.asarray(s, dtype=np.float64), self.frames) for s in raw])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "frames": self.frames}


class Compose(Transform):
    """The steps in order, each on the previous one's output."""

    kind = "compose"

    def __init__(self, steps: Sequence[Transform]) -> None:
        if not all(isinstance(s, Transform) for s in steps):
            raise ValueError("every step must be a Transform")
        self.steps = tuple(steps)

    def apply(self, raw: Any) -> np.ndarray:
        out = raw
        for step in self.steps:
            out = step.apply(out)
        return np.asarray(out, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "steps": [s.to_dict() for s in self.steps]}


def _build(d: Any) -> Transform:
    if not isinstance(d, dict):
        raise ValueError(f"a step is {type(d).__name__}, not an object")
    kind = d.get("kind")
    if kind == Standardize.kind:
        return Standardize(d["mean"], d["std"])
    if kind == Resample.kind:
        return Resample(d["frames"])
    if kind == Compose.kind:
        if not isinstance(d["steps"], list):
            raise ValueError("'steps' must be a list")
        return Compose([_build(s) for s in d["steps"]])
    known = ", ".join(k.kind for k in (Standardize, Resample, Compose))
    raise ValueError(f"unknown kind {kind!r} (known: {known})")


def load_preprocessing(d: dict[str, Any]) -> Transform:
    """The transform a :meth:`Transform.to_dict` describes (e.g. a model's
    ``preprocessing.json``); only the kinds defined here are built."""
    try:
        return _build(d)
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else first_line(exc)
        raise CheckpointError(f"invalid preprocessing spec: {detail}") from None
