"""N tuning environments stepping together through one executor.

Gymnasium's vector envs split a step into ``step_async`` (hand every env its
action) and ``step_wait`` (collect every result); here the split is what lets
one executor train all N segments at once (``run_many``: N worker processes or
N Kubernetes Jobs in flight). Each env may be told to start a new episode
instead of stepping (:class:`Reset`), or be left out of a round when it has no
episode to run, so a population of training runs and a queue of episodes step
through the same call.

The controller sees only what Gymnasium's API shows: observations, rewards,
``terminated``/``truncated``, ``info`` and ``action_masks()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shieldtune.control.env import HyperparamEnv
from shieldtune.executors.base import StepExecutor
from shieldtune.training.step import StepRequest


@dataclass(frozen=True)
class Reset:
    """Start a new episode of this env, seeded so (a crash-resumed job re-seeds the same)."""

    seed: int


@dataclass
class Outcome:
    """What one env returned this round: a reset's (obs, info) or a step's transition."""

    obs: np.ndarray
    info: dict[str, Any]
    reset: bool
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    #: Training samples the step spent.
    samples: int = 0
    #: Train / evaluation seconds and attempts of the step (outside ``info``, which stays a
    #: deterministic function of seeds and actions).
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


class HyperparamVectorEnv:
    """``num_envs`` :class:`HyperparamEnv` sharing one executor; see the module docstring."""

    def __init__(self, envs: list[HyperparamEnv], executor: StepExecutor | None = None) -> None:
        if not envs:
            raise ValueError("a vector env needs at least one env")
        self.envs = envs
        self.num_envs = len(envs)
        self.single_observation_space = envs[0].observation_space
        self.single_action_space = envs[0].action_space
        self._executor = executor
        self._pending: dict[int, Reset | int] | None = None

    def attach_executor(self, executor: StepExecutor) -> None:
        """The executor every env's steps run on (a job starts it late: it can take seconds)."""
        self._executor = executor
        for env in self.envs:
            env.attach_executor(executor)

    def action_masks(self, index: int) -> np.ndarray:
        """The actions env ``index``'s hard bounds allow now (sb3-contrib's convention)."""
        return self.envs[index].action_masks()

    def step_async(
        self, commands: Mapping[int, Reset | int], selection_bar: float = float("-inf")
    ) -> None:
        """Give env ``i`` an action, or :class:`Reset` to start its next episode; envs not
        named sit this round out. ``selection_bar``: the validation accuracy a state must
        beat to be selectable (the job's best certified so far; see ``StepRequest``)."""
        if self._pending is not None:
            raise RuntimeError("step_wait() the previous round before starting another")
        for i in commands:
            if not 0 <= i < self.num_envs:
                raise IndexError(f"env index {i} is not in [0, {self.num_envs})")
        self._pending = dict(commands)
        for env in self.envs:
            env.selection_bar = selection_bar

    def step_wait(self) -> dict[int, Outcome]:
        """Train every segment of the round at once; the outcome of each env that was named."""
        if self._pending is None:
            raise RuntimeError("step_async() must come before step_wait()")
        commands, self._pending = self._pending, None
        requests: list[StepRequest] = []
        for i, command in commands.items():
            env = self.envs[i]
            if isinstance(command, Reset):
                requests.append(env.prepare_reset(seed=command.seed))
            else:
                requests.append(env.prepare_step(command))
        executor = self._executor or self.envs[0].executor
        results = executor.run_many(requests)
        outcomes: dict[int, Outcome] = {}
        for (i, command), result in zip(commands.items(), results, strict=True):
            env = self.envs[i]
            if isinstance(command, Reset):
                obs, info = env.complete_reset(result)
                outcomes[i] = Outcome(obs, info, reset=True)
            else:
                obs, reward, terminated, truncated, info = env.complete_step(result)
                outcomes[i] = Outcome(
                    obs,
                    info,
                    False,
                    reward,
                    terminated,
                    truncated,
                    result.samples,
                    dict(env.last_timing),
                )
        return outcomes

    def snapshot(self) -> list[dict[str, Any]]:
        """Every env between rounds, for a crash-safe checkpoint."""
        return [env.snapshot() for env in self.envs]

    def restore(self, snaps: list[dict[str, Any]]) -> None:
        for env, snap in zip(self.envs, snaps, strict=True):
            env.restore(snap)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
