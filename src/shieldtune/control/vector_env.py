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

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shieldtune.control.env import HyperparamEnv
from shieldtune.executors.base import StepExecutor
from shieldtune.training.step import StepRequest, StepResult


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


class _Round:
    """One round's requests on the executor, trained in a thread until :meth:`wait`."""

    def __init__(
        self,
        commands: dict[int, Reset | int],
        executor: StepExecutor,
        requests: list[StepRequest],
    ) -> None:
        self.commands = commands
        self._results: list[StepResult] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(executor, requests), name="shieldtune-round", daemon=True
        )
        self._thread.start()

    def _run(self, executor: StepExecutor, requests: list[StepRequest]) -> None:
        try:
            self._results = executor.run_many(requests)
        except BaseException as exc:  # re-raised by wait(), in the caller's thread
            self._error = exc

    def wait(self) -> list[StepResult]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._results is not None
        return self._results


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
        self._round: _Round | None = None

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
        named sit this round out. The executor starts on the round at once, in a thread, so
        the caller may work (learn) while it trains. ``selection_bar``: the validation
        accuracy a state must beat to be selectable (the job's best certified so far)."""
        if self._round is not None:
            raise RuntimeError("step_wait() the previous round before starting another")
        for i in commands:
            if not 0 <= i < self.num_envs:
                raise IndexError(f"env index {i} is not in [0, {self.num_envs})")
        for env in self.envs:
            env.selection_bar = selection_bar
        requests: list[StepRequest] = []
        for i, command in commands.items():
            env = self.envs[i]
            if isinstance(command, Reset):
                requests.append(env.prepare_reset(seed=command.seed))
            else:
                requests.append(env.prepare_step(command))
        self._round = _Round(dict(commands), self._executor or self.envs[0].executor, requests)

    def step_wait(self) -> dict[int, Outcome]:
        """Wait for every segment of the round; the outcome of each env that was named."""
        if self._round is None:
            raise RuntimeError("step_async() must come before step_wait()")
        round_, self._round = self._round, None
        results = round_.wait()
        outcomes: dict[int, Outcome] = {}
        for (i, command), result in zip(round_.commands.items(), results, strict=True):
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
