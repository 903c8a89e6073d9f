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

    def baseline_action(self, values: dict[str, float], safe: bool) -> int:
        """The baseline schedule's action: keep every level, except that while the state is
        not certified safe each ``ramp`` dimension moves its way (when its bound allows)."""
        target = []
        for spec in self.specs:
            move = {"up": 1, "down": -1}.get(spec.ramp, 0) if not safe else 0
            if move and self._moved(spec, values[spec.name], move) == values[spec.name]:
                move = 0
            if move and not spec.low <= self._moved(spec, values[spec.name], move) <= spec.high:
                move = 0
            target.append(move)
        return self.action_of(target)

    def moves(self, action: int) -> np.ndarray:
        return self._moves[action]

    def action_of(self, moves) -> int:
        """The action making ``moves`` (-1 / 0 / +1 per dimension, in the space's order)."""
        return int(np.flatnonzero((self._moves == np.asarray(moves)).all(axis=1))[0])

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

    def scheduled(self, values: dict[str, float], progress: float) -> dict[str, float]:
        """The values a segment trains at, ``progress`` (0..1) of the way through the episode:
        the levels, with each ``cosine`` dimension decayed (``floor + (1 - floor) *
        (1 + cos(pi * progress)) / 2`` of its level)."""
        out = dict(values)
        for spec in self.specs:
            if spec.schedule == "cosine":
                decay = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
                level = values[spec.name]
                out[spec.name] = self._round(
                    spec, level * (spec.schedule_floor + (1 - spec.schedule_floor) * decay)
                )
        return out

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
