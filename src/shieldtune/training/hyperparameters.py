"""The hyperparameters a training segment understands: built-in ones and a task's extras.

Built-in: learning rate, batch size, weight decay, momentum (beta1 for Adam) and
``adv_mix``, the share of each batch replaced by adversarial examples. A task
adds its own (dropout, label smoothing, ...) with :class:`TaskHyperparameter`.
Any of them may be tuned (``env.search_space``); the rest keep fixed values
(``training.*``, ``training.task_hyperparameters`` or the task's defaults).
"""

from __future__ import annotations

import dataclasses

import torch

from shieldtune.config import TrainingConfig
from shieldtune.tasks.contract import Task

BUILTIN_HYPERPARAMETERS = ("learning_rate", "batch_size", "weight_decay", "momentum", "adv_mix")


def bounds(task: Task) -> dict[str, tuple[float, float]]:
    """Allowed range of every hyperparameter: the config's for built-ins, the task's for extras."""
    fields = {f.name: f for f in dataclasses.fields(TrainingConfig)}
    out = {name: fields[name].metadata["range"] for name in BUILTIN_HYPERPARAMETERS}
    out.update({hp.name: (hp.low, hp.high) for hp in task.hyperparameters})
    return out


def fixed_hyperparameters(cfg: TrainingConfig, task: Task) -> dict[str, float]:
    """Values for every hyperparameter; the search space overrides the tuned ones."""
    values = {name: float(getattr(cfg, name)) for name in BUILTIN_HYPERPARAMETERS}
    for hp in task.hyperparameters:
        values[hp.name] = float(cfg.task_hyperparameters.get(hp.name, hp.default))
    return values


def apply_to_optimizer(optimizer: torch.optim.Optimizer, hp: dict[str, float]) -> None:
    """Set this segment's optimizer hyperparameters in place (state such as momentum stays)."""
    for group in optimizer.param_groups:
        group["lr"] = float(hp["learning_rate"])
        group["weight_decay"] = float(hp["weight_decay"])
        if "momentum" in group:
            group["momentum"] = float(hp["momentum"])
        elif "betas" in group:
            group["betas"] = (float(hp["momentum"]), group["betas"][1])


def apply_to_model(task: Task, model: torch.nn.Module, hp: dict[str, float]) -> None:
    """Call each task hyperparameter's ``apply`` hook with this segment's value."""
    for extra in task.hyperparameters:
        if extra.apply is not None:
            extra.apply(model, float(hp[extra.name]))
