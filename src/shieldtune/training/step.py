"""One environment step: build (or restore) the model, train one segment, evaluate it.

This is the one way a step is run, whoever runs it: the ``local`` executor
calls :meth:`StepRunner.run` in the controller, ``process`` workers and
Kubernetes step pods build their own runner from the job's config. A step
never mutates the state it started from (a rollback returns to it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shieldtune.checkpoint import MODEL_KIND, safe_load
from shieldtune.config import Config, SafetyConfig, TrainingConfig, config_from_dict
from shieldtune.errors import CheckpointError, ConfigError
from shieldtune.safety.suite import MetricSuite, test_report
from shieldtune.tasks.batches import to_device
from shieldtune.tasks.checker import check_model, load_task_data
from shieldtune.tasks.contract import Task, TaskData
from shieldtune.tasks.registry import make_task
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


def build_model(task: Task, seed: int, device: torch.device) -> nn.Module:
    """A fresh model of ``task``, initialised from ``seed`` without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.build_model(seed)
    return model.to(device) if isinstance(model, nn.Module) else model


def load_model(model_path: Path) -> tuple[torch.nn.Module, dict[str, Any], Config]:
    """A checkpoint's model (on the CPU, eval mode), the checkpoint and the job's config."""
    ckpt = safe_load(model_path, MODEL_KIND)
    try:
        cfg = config_from_dict(ckpt["config"])
    except ConfigError as exc:
        raise CheckpointError(
            f"'{model_path}' carries a config this shieldtune cannot use ({exc})"
        ) from None
    model = build_model(make_task(cfg.task), 0, torch.device("cpu"))
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"'{model_path}' does not fit the model it describes: {first}"
        ) from None
    model.eval()
    return model, ckpt, cfg


def checkpoint_report(path: Path, cfg: Config, data: TaskData) -> dict[str, float]:
    """The test report of a checkpoint's model on ``data`` under ``cfg``'s spec: the current
    champion re-measured on the challenger's split (see shieldtune.tracking.registry)."""
    model, _, theirs = load_model(path)
    if theirs.task.entry_point != cfg.task.entry_point:
        raise CheckpointError(
            f"it is a model of task {theirs.task.entry_point!r}, not {cfg.task.entry_point!r}"
        )
    task = make_task(cfg.task)
    device = resolve_device(cfg.training.device)
    return test_report(task, model, data, cfg.safety, device, cfg.tuner.seed)


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
        loader_workers: int = 0,
    ) -> None:
        self.task = task
        self.training = training
        self.device = resolve_device(training.device)
        self.data = to_device(data, self.device)
        self.workers = loader_workers
        self.suite = MetricSuite(task, safety, self.device, loader_workers)
        domain = data.attack_domain(task)
        self._adversarial = None
        if domain is not None:
            radius = safety.epsilon if training.adv_epsilon is None else training.adv_epsilon
            self._adversarial = AdversarialTraining(
                radius, domain, training.adv_attack, training.adv_pgd_steps
            )
        check_model(task, build_model(task, 0, self.device), self.data)

    @classmethod
    def from_config(cls, cfg: Config, data: TaskData | None = None) -> StepRunner:
        """A runner for the job ``cfg`` describes (loading the task's data unless given)."""
        task = make_task(cfg.task)
        if data is None:
            data = load_task_data(task, cfg.data)
        return cls(task, data, cfg.training, cfg.safety, cfg.data.loader_workers)

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
            metrics.update(self.evaluate(model, seed=request.seed))
        eval_seconds = time.perf_counter() - start
        state = TrainState(cpu_copy(model.state_dict()), cpu_copy(optimizer.state_dict()))
        return StepResult(
            state, metrics, stats.diverged, stats.samples, stats.seconds, eval_seconds
        )

    def evaluate(self, model: nn.Module, seed: int) -> dict[str, float]:
        """Per-step validation metrics (see :class:`~shieldtune.safety.suite.MetricSuite`)."""
        return self.suite.step_metrics(model, self.data, seed)
