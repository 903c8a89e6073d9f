"""One environment step: build (or restore) the model, train one segment, evaluate it.

This is the one way a step is run, whoever runs it: the ``local`` executor
calls :meth:`StepRunner.run` in the controller, ``process`` workers and
Kubernetes step pods build their own runner from the job's step spec
(:class:`shieldtune.job.StepSpec`). A step never mutates the state it started
from (a rollback returns to it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from shieldtune.config import SafetyConfig, TrainingConfig
from shieldtune.safety.spec import Constraint
from shieldtune.safety.suite import MetricSuite
from shieldtune.tasks.batches import to_device
from shieldtune.tasks.checker import check_model
from shieldtune.tasks.contract import Task, TaskData, build_model
from shieldtune.training.device import resolve_device
from shieldtune.training.hyperparameters import apply_to_model
from shieldtune.training.segment import AdversarialTraining, make_optimizer, train_segment

StateDict = dict[str, torch.Tensor]


@dataclass
class TrainState:
    """Everything needed to continue training: model and optimizer state (on the CPU)."""

    model: StateDict
    optimizer: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StepRequest:
    #: ``None`` starts a fresh model initialised from ``seed`` (episode start).
    state: TrainState | None
    hyperparameters: dict[str, float]
    budget_samples: int
    seed: int
    #: The job's best certified validation accuracy so far: a state at or below it cannot be
    #: selected, so with a PGD constraint it gets one look (see MetricSuite.step_metrics).
    certify_above: float = float("-inf")


@dataclass(frozen=True)
class StepResult:
    state: TrainState
    #: val_acc, mia_advantage, mia_tpr_at_1fpr, train_loss, fgsm_robust_acc (attackable
    #: tasks), pgd_robust_acc (when constrained) and the task's own metrics.
    metrics: dict[str, float]
    diverged: bool
    samples: int
    train_seconds: float
    eval_seconds: float
    #: How many times the backend started this step (retries of failed/evicted workers + 1).
    attempts: int = 1


def cpu_copy(obj: Any) -> Any:
    """A detached CPU copy of a state dict (tensors nested in dicts and lists)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [cpu_copy(v) for v in obj]
    return obj


class StepRunner:
    """Trains and evaluates steps of one task on one device, data loaded once."""

    def __init__(
        self,
        task: Task,
        data: TaskData,
        training: TrainingConfig,
        safety: SafetyConfig,
        constraints: list[Constraint],
        loader_workers: int = 0,
    ) -> None:
        self.task = task
        self.training = training
        self.device = resolve_device(training.device)
        self.data = to_device(data, self.device)
        self.workers = loader_workers
        self.suite = MetricSuite(task, safety, constraints, self.device, loader_workers)
        domain = data.attack_domain(task)
        self._adversarial = None
        if domain is not None:
            radius = safety.epsilon if training.adv_epsilon is None else training.adv_epsilon
            self._adversarial = AdversarialTraining(
                radius, domain, training.adv_attack, training.adv_pgd_steps
            )
        check_model(task, build_model(task, 0, self.device), self.data)

    def new_model(self, seed: int) -> nn.Module:
        return build_model(self.task, seed, self.device)

    def run(self, request: StepRequest) -> StepResult:
        model = self.new_model(request.seed)
        optimizer = make_optimizer(model, self.training)
        if request.state is not None:
            model.load_state_dict(request.state.model)
            if request.state.optimizer:
                # A copy: torch's load_state_dict keeps the given momentum buffers and steps
                # them in place, which would corrupt the state a rollback returns to.
                optimizer.load_state_dict(cpu_copy(request.state.optimizer))
        hp = request.hyperparameters
        apply_to_model(self.task, model, hp)
        stats = train_segment(
            model,
            optimizer,
            self.data.train,
            hp,
            request.budget_samples,
            torch.Generator().manual_seed(request.seed),
            loss=lambda logits, y: self.task.loss(logits, y, hp),
            adversarial=self._adversarial,
            max_loss=self.training.max_loss,
            device=self.device,
            amp=self.training.amp,
            loader_workers=self.workers,
        )
        start = time.perf_counter()
        metrics = {"train_loss": stats.mean_loss}
        if not stats.diverged:
            metrics.update(self.evaluate(model, request.seed, request.certify_above))
        eval_seconds = time.perf_counter() - start
        state = TrainState(cpu_copy(model.state_dict()), cpu_copy(optimizer.state_dict()))
        return StepResult(
            state, metrics, stats.diverged, stats.samples, stats.seconds, eval_seconds
        )

    def evaluate(
        self, model: nn.Module, seed: int, certify_above: float = float("-inf")
    ) -> dict[str, float]:
        """Per-step validation metrics (see :class:`~shieldtune.safety.suite.MetricSuite`)."""
        return self.suite.step_metrics(model, self.data, seed, certify_above)
