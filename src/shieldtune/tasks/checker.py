"""Checking a task against the contract, the way ``gymnasium``'s ``check_env`` checks an env.

Two depths:

* :func:`load_task_data` runs the cheap checks every job runs before it trains
  anything: the data loads, every split yields ``(float tensor, int64 label)``
  pairs with labels in range, and the model's output fits ``num_classes``;
* :func:`check_task` (``shieldtune task-check``) adds what costs a little more:
  seeded models are reproducible, the loss is a finite scalar, a short training
  segment runs, sample inputs
  lie in the input domain, an attack stays in it, and every extra metric and
  hyperparameter hook works.

Every failure is a one-line :class:`~shieldtune.errors.TaskError` naming the task
and what to fix.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from shieldtune.config import DataConfig
from shieldtune.errors import ShieldtuneError, TaskError, first_line
from shieldtune.tasks.batches import by_indices, head, iterate
from shieldtune.tasks.contract import MetricInput, Task, TaskData, build_model

#: Samples per split whose types the quick check inspects.
_PROBE = 4


def _guard(task: Task, what: str, call: Callable):
    """``call()``, with anything the user's code raises turned into one line."""
    try:
        return call()
    except ShieldtuneError:
        raise
    except Exception as exc:
        raise TaskError(
            f"task {task.name!r}: {what} raised {type(exc).__name__}: {first_line(exc, 160)}"
        ) from None


def load_task_data(task: Task, cfg: DataConfig) -> TaskData:
    """The task's splits, after the cheap contract checks."""
    data = _guard(task, "load_data()", lambda: task.load_data(cfg))
    if not isinstance(data, TaskData):
        raise TaskError(
            f"task {task.name!r}: load_data() returned {type(data).__name__}; return a "
            "shieldtune.tasks.TaskData(train=..., val=..., test=...)"
        )
    for name in ("train", "val", "test"):
        check_split(task, name, getattr(data, name))
    if data.input_domain is not None and task.input_domain is None:
        raise TaskError(
            f"task {task.name!r}: load_data() gives the data an input_domain, but the task "
            "declares none (not attackable); set Task.input_domain too"
        )
    return data


def check_split(task: Task, name: str, split: Dataset) -> None:
    """The split is a non-empty Dataset of ``(float tensor, int64 label)`` pairs."""
    if not isinstance(split, Dataset):
        raise TaskError(
            f"task {task.name!r}: the {name} split is a {type(split).__name__}, not a "
            "torch.utils.data.Dataset"
        )
    n = _guard(task, f"len() of the {name} split", lambda: len(split))  # type: ignore[arg-type]
    if not isinstance(n, int) or n < 1:
        raise TaskError(f"task {task.name!r}: the {name} split is empty")
    x, y = _guard(
        task,
        f"reading the {name} split",
        lambda: next(by_indices(split, [range(min(n, _PROBE))], torch.device("cpu"))),
    )
    if not isinstance(x, torch.Tensor):
        raise TaskError(
            f"task {task.name!r}: the {name} split yields inputs of type {type(x).__name__}; "
            "inputs must be tensors"
        )
    if task.input_domain is not None and not torch.is_floating_point(x):
        raise TaskError(
            f"task {task.name!r}: the {name} split yields {x.dtype} inputs, but the task is "
            "attackable (it has an input_domain); attacks need floating-point inputs, or set "
            "input_domain = None (e.g. for token ids)"
        )
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise TaskError(
            f"task {task.name!r}: the {name} split yields labels of dtype "
            f"{getattr(y, 'dtype', '?')} and batch shape {shape}; labels must be int64 class "
            "indices, one per sample"
        )
    if int(y.min()) < 0 or int(y.max()) >= task.num_classes:
        raise TaskError(
            f"task {task.name!r}: the {name} split has label {int(y.max())} outside "
            f"[0, {task.num_classes - 1}] (num_classes = {task.num_classes})"
        )


def check_model(task: Task, model: object, data: TaskData) -> nn.Module:
    """The model is an ``nn.Module`` whose output on two inputs is ``(2, num_classes)``."""
    if not isinstance(model, nn.Module):
        raise TaskError(
            f"task {task.name!r}: build_model() returned {type(model).__name__}, not a "
            "torch.nn.Module"
        )
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x, _ = next(by_indices(data.train, [range(min(2, len(data.train)))], device))  # type: ignore[arg-type]
    model.eval()
    with torch.no_grad():
        out = _guard(task, "the model's forward pass", lambda: model(x))
    expected = (len(x), task.num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TaskError(
            f"task {task.name!r}: the model maps {len(x)} inputs to output {shape}; expected "
            f"{expected} = (batch, num_classes)"
        )
    return model


def check_task(
    task: Task, cfg: DataConfig, seed: int = 0, data: TaskData | None = None
) -> list[str]:
    """The full contract check (on ``data`` when already loaded); what was checked, a line
    each."""
    from shieldtune.safety.attacks import fgsm

    lines = []
    start = time.perf_counter()
    data = data if data is not None else load_task_data(task, cfg)
    sizes = ", ".join(f"{n} {len(getattr(data, n))}" for n in ("train", "val", "test"))
    lines.append(f"data: {sizes} samples ({time.perf_counter() - start:.1f} s to load)")
    device = torch.device("cpu")
    model = check_model(task, build_model(task, seed, device), data)
    again = build_model(task, seed, device)
    same = all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    if not same:
        raise TaskError(
            f"task {task.name!r}: two models built from seed {seed} differ; initialise only "
            "from torch's global generator (shieldtune seeds it) or from the seed argument"
        )
    params = sum(p.numel() for p in model.parameters())
    lines.append(
        f"model: {type(model).__name__}, {params} parameters, output (batch, "
        f"{task.num_classes}), reproducible from a seed"
    )
    x, y = next(iterate(head(data.train, 8), device))
    hp = {h.name: h.default for h in task.hyperparameters}
    model.train()
    loss = _guard(task, "loss()", lambda: task.loss(model(x), y, hp))
    scalar = isinstance(loss, torch.Tensor) and loss.dim() == 0
    if not scalar or not math.isfinite(float(loss.detach())):
        raise TaskError(
            f"task {task.name!r}: loss() must return a finite scalar tensor (the batch mean)"
        )
    loss.backward()
    lines.append(f"loss: {float(loss.detach()):.4f} on 8 training samples, differentiable")
    stats = _guard(task, "a training segment", lambda: _short_segment(task, model, data, hp))
    if stats.diverged:
        raise TaskError(f"task {task.name!r}: a 64-sample training segment diverged")
    lines.append(
        f"training: 64 samples in {stats.batches} batches, mean loss {stats.mean_loss:.4f}"
    )
    domain = data.attack_domain(task)
    if domain is None:
        lines.append("input domain: none (not attackable; FGSM/PGD constraints are refused)")
    else:
        inside = torch.equal(domain.clip(x), x)
        if not inside:
            raise TaskError(
                f"task {task.name!r}: training inputs lie outside its input_domain; widen the "
                "bounds or clip the data"
            )
        adv = fgsm(model, x, y, 0.5, domain)
        if not torch.equal(domain.clip(adv), adv):  # pragma: no cover - clip is idempotent
            raise TaskError(f"task {task.name!r}: an attack left the input domain")
        lines.append("input domain: sample inputs inside it, FGSM stays inside it")
    for extra in task.hyperparameters:
        if extra.apply is not None:
            _guard(
                task,
                f"hyperparameter {extra.name!r} apply()",
                lambda e=extra: e.apply(model, e.default),
            )
    if task.hyperparameters:
        lines.append(f"hyperparameters: {', '.join(h.name for h in task.hyperparameters)}")
    model.eval()
    val = head(data.val, 64)
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb, _ in iterate(val, device)]).float()
    targets = torch.cat([yb for _, yb in iterate(val, device)])
    for metric in task.metrics:
        value = _guard(
            task,
            f"metric {metric.name!r}",
            lambda m=metric: m.fn(MetricInput(model, "val", val, logits, targets)),
        )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise TaskError(
                f"task {task.name!r}: metric {metric.name!r} returned {value!r}; return a "
                "finite float"
            )
        lines.append(f"metric {metric.name}: {float(value):.4f} on {len(val)} validation samples")
    return lines


def _short_segment(task: Task, model: nn.Module, data: TaskData, extras: dict[str, float]):
    from shieldtune.config import TrainingConfig
    from shieldtune.training.hyperparameters import fixed_hyperparameters
    from shieldtune.training.segment import make_optimizer, train_segment

    training = TrainingConfig(batch_size=16)
    hp = fixed_hyperparameters(training, task)
    return train_segment(
        model,
        make_optimizer(model, training),
        data.train,
        hp,
        64,
        torch.Generator().manual_seed(0),
        loss=lambda logits, y: task.loss(logits, y, hp),
    )
