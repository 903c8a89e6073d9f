"""The discrete action space over the tunable hyperparameters.

For each of the ``d`` tunable hyperparameters an action says decrease / keep /
increase; the joint action space has ``3**d`` actions, so several
hyperparameters can move in one step.  The space comes from config, so adding
weight decay or the adversarial-training mix needs no code change.
"""

from __future__ import annotations

import math

import numpy as np

from shieldtune.config import HyperparameterSpec

_MOVE_NAMES = {-1: "down", 0: "keep", 1: "up"}
_BOUND_TOLERANCE = 1e-9


class SearchSpace:
    def __init__(self, specs: list[HyperparameterSpec]) -> None:
        self.specs = list(specs)
        self.names = [s.name for s in self.specs]
        self.n_actions = 3 ** len(self.specs)
        self._moves = np.array(
            [[(a // 3**i) % 3 - 1 for i in range(len(self.specs))] for a in range(self.n_actions)],
            dtype=np.int64,
        )
        self.keep_action = int(np.flatnonzero((self._moves == 0).all(axis=1))[0])

    def moves(self, action: int) -> np.ndarray:
        return self._moves[action]

    def initial(self) -> dict[str, float]:
        return {s.name: self._round(s, s.init) for s in self.specs}

    @staticmethod
    def _round(spec: HyperparameterSpec, value: float) -> float:
        return float(round(value)) if spec.integer else float(value)

    def _moved(self, spec: HyperparameterSpec, value: float, move: int) -> float:
        if spec.scale == "log":
            return self._round(spec, value * spec.factor**move)
        return self._round(spec, value + spec.factor * move)

    def apply(self, values: dict[str, float], action: int) -> dict[str, float]:
        """Hyperparameters after ``action``; moves that would leave the bounds are clipped."""
        out = dict(values)
        for spec, move in zip(self.specs, self.moves(action), strict=True):
            out[spec.name] = min(
                max(self._moved(spec, values[spec.name], int(move)), spec.low), spec.high
            )
        return out

    def valid_mask(self, values: dict[str, float]) -> np.ndarray:
        """Actions whose every move stays inside the configured bounds (the hard bounds)."""
        ok = np.ones(self.n_actions, dtype=bool)
        for i, spec in enumerate(self.specs):
            span = _BOUND_TOLERANCE * max(abs(spec.low), abs(spec.high), 1.0)
            for move in (-1, 1):
                v = self._moved(spec, values[spec.name], move)
                if v < spec.low - span or v > spec.high + span:
                    ok &= self._moves[:, i] != move
        return ok

    def normalise(self, values: dict[str, float]) -> np.ndarray:
        """Each hyperparameter mapped to [0, 1] within its bounds (log-scaled where configured)."""
        out = []
        for spec in self.specs:
            v = values[spec.name]
            if spec.scale == "log":
                z = (math.log(v) - math.log(spec.low)) / (math.log(spec.high) - math.log(spec.low))
            else:
                z = (v - spec.low) / (spec.high - spec.low)
            out.append(min(max(z, 0.0), 1.0))
        return np.asarray(out, dtype=np.float32)

    def describe(self, action: int) -> str:
        return " ".join(
            f"{name}:{_MOVE_NAMES[int(m)]}"
            for name, m in zip(self.names, self.moves(action), strict=True)
        )
