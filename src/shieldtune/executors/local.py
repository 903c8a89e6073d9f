"""``local`` backend: every step runs in the controller process."""

from __future__ import annotations

from collections.abc import Sequence

from shieldtune.training.step import StepRequest, StepResult, StepRunner


class LocalStepExecutor:
    """Runs each step in this process with one :class:`StepRunner` (data loaded once)."""

    def __init__(self, runner: StepRunner) -> None:
        self.runner = runner

    def run(self, request: StepRequest) -> StepResult:
        return self.runner.run(request)

    def run_many(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        """One after another: a single process has nothing to overlap."""
        return [self.runner.run(r) for r in requests]

    def close(self) -> None:
        """Nothing to release in process."""
