"""Step executors: who trains and evaluates one environment step.

The environment hands "train this segment from this state with these
hyperparameters, then evaluate it" to a :class:`StepExecutor`. Backends:

* ``local``: :class:`LocalStepExecutor`, in this process;
* ``process``: :class:`shieldtune.executors.process.ProcessStepExecutor`, a pool of
  worker processes on this machine;
* ``kubernetes``: :class:`shieldtune.executors.kubernetes.executor.KubernetesStepExecutor`, one
  Kubernetes Job running ``shieldtune step`` per step.

All take a batch (``run_many``) so ``tuner.num_envs`` environments step at once;
neither the environment nor the agent changes when the backend does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from shieldtune.config import Config
from shieldtune.data import MnistSplits
from shieldtune.model import build_model
from shieldtune.safety.attacks import accuracy, fgsm_robust_accuracy, pgd_robust_accuracy
from shieldtune.safety.privacy import membership_inference
from shieldtune.safety.spec import needs_pgd, parse_constraints
from shieldtune.training.segment import make_optimizer, train_segment

StateDict = dict[str, torch.Tensor]


@dataclass
class TrainState:
    """Everything needed to continue training: model and optimizer state."""

    model: StateDict
    optimizer: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StepRequest:
    #: ``None`` starts a fresh model initialised from ``seed`` (episode start).
    state: TrainState | None
    hyperparameters: dict[str, float]
    budget_samples: int
    seed: int


@dataclass(frozen=True)
class StepResult:
    state: TrainState
    #: val_acc, fgsm_robust_acc, mia_advantage, mia_tpr_at_1fpr, train_loss (+ pgd_robust_acc).
    metrics: dict[str, float]
    diverged: bool
    samples: int
    train_seconds: float
    eval_seconds: float
    #: How many times the backend started this step (retries of failed/evicted workers + 1).
    attempts: int = 1


class StepExecutor(Protocol):
    def run(self, request: StepRequest) -> StepResult: ...

    def run_many(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        """Run independent steps (one per environment), concurrently where the backend can."""
        ...

    def close(self) -> None: ...


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj


class LocalStepExecutor:
    """Runs each step in this process on in-memory tensors."""

    def __init__(self, cfg: Config, splits: MnistSplits) -> None:
        self.cfg = cfg
        self.splits = splits
        self._pgd = needs_pgd(parse_constraints(cfg.safety.constraints))
        s = cfg.safety
        self._attack_set = splits.val.head(s.eval_samples)
        self._members = splits.train.head(s.mia_samples)
        self._nonmembers = splits.val.head(s.mia_samples)

    def run(self, request: StepRequest) -> StepResult:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(request.seed)
            model = build_model(self.cfg.model)
        optimizer = make_optimizer(model, self.cfg.training)
        if request.state is not None:
            model.load_state_dict(request.state.model)
            if request.state.optimizer:
                # A clone: torch's load_state_dict keeps the given momentum buffers and steps
                # them in place, which would corrupt the state a rollback returns to.
                optimizer.load_state_dict(_clone(request.state.optimizer))
        gen = torch.Generator().manual_seed(request.seed)
        stats = train_segment(
            model,
            optimizer,
            self.splits.train,
            request.hyperparameters,
            request.budget_samples,
            gen,
            self.cfg.safety.epsilon,
            self.cfg.training.max_loss,
        )
        start = time.perf_counter()
        metrics = {"train_loss": stats.mean_loss}
        if not stats.diverged:
            metrics.update(self.evaluate(model, seed=request.seed))
        state = TrainState(_clone(model.state_dict()), _clone(optimizer.state_dict()))
        return StepResult(
            state,
            metrics,
            stats.diverged,
            stats.samples,
            stats.seconds,
            time.perf_counter() - start,
        )

    def run_many(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        """One after another: a single process has nothing to overlap."""
        return [self.run(r) for r in requests]

    def evaluate(self, model: torch.nn.Module, seed: int) -> dict[str, float]:
        """Per-step validation metrics: accuracy, FGSM, membership inference (+ PGD if needed)."""
        s = self.cfg.safety
        val, atk = self.splits.val, self._attack_set
        mia = membership_inference(
            model, (self._members.x, self._members.y), (self._nonmembers.x, self._nonmembers.y)
        )
        metrics = {
            "val_acc": accuracy(model, val.x, val.y),
            "fgsm_robust_acc": fgsm_robust_accuracy(model, atk.x, atk.y, s.epsilon),
            "mia_advantage": mia.advantage,
            "mia_tpr_at_1fpr": mia.tpr_at_1fpr,
        }
        if self._pgd:
            metrics["pgd_robust_acc"] = pgd_robust_accuracy(
                model, atk.x, atk.y, s.epsilon, s.pgd_steps, s.pgd_restarts, seed
            )
        return metrics

    def close(self) -> None:
        """Nothing to release in process."""
