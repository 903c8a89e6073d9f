"""The step-executor interface: who trains and evaluates environment steps.

The environment hands "train this segment from this state with these
hyperparameters, then evaluate it" to a :class:`StepExecutor`. Backends:

* ``local``: :class:`shieldtune.executors.local.LocalStepExecutor`, in this process;
* ``process``: :class:`shieldtune.executors.process.ProcessStepExecutor`, a pool of
  worker processes on this machine;
* ``kubernetes``: :class:`shieldtune.executors.kubernetes.executor.KubernetesStepExecutor`,
  one Kubernetes Job running ``shieldtune step`` per step.

All take a batch (``run_many``) so ``tuner.num_envs`` environments step at once;
neither the environment nor the agent changes when the backend does. Every
backend runs a step the same way, with :class:`shieldtune.training.step.StepRunner`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shieldtune.training.step import StepRequest, StepResult


class StepExecutor(Protocol):
    def run(self, request: StepRequest) -> StepResult: ...

    def run_many(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        """Run independent steps (one per environment), concurrently where the backend can."""
        ...

    def close(self) -> None: ...
