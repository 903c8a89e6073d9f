"""A scripted step executor: pre-set metrics per call, for testing env and tuner logic."""

from __future__ import annotations

import torch

from shieldtune.training.step import StepRequest, StepResult, TrainState


class ScriptedExecutor:
    """Returns pre-set metrics per call, and records the requests it received."""

    def __init__(self, outcomes: list[dict]) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[StepRequest] = []

    def run(self, request: StepRequest) -> StepResult:
        self.requests.append(request)
        out = self.outcomes.pop(0)
        marker = torch.tensor([float(len(self.requests))])
        return StepResult(
            TrainState({"marker": marker}),
            out.get("metrics", {}),
            out.get("diverged", False),
            request.budget_samples,
            0.0,
            0.0,
        )

    def run_many(self, requests: list[StepRequest]) -> list[StepResult]:
        return [self.run(r) for r in requests]

    def close(self) -> None:
        pass


def metrics(acc: float, fgsm: float = 0.9, mia: float = 0.01) -> dict:
    return {
        "metrics": {
            "val_acc": acc,
            "fgsm_robust_acc": fgsm,
            "mia_advantage": mia,
            "mia_tpr_at_1fpr": 0.0,
            "train_loss": 0.1,
        }
    }
