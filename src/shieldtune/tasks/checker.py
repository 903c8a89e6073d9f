"""Checking a task against the contract, the way ``gymnasium``'s ``check_env`` checks an env.

Two depths:

* :func:`load_task_data` runs the cheap checks every job runs before it trains
  anything: the data loads, every split yields ``(float tensor, int64 label)``
  pairs, every label is in ``[0, num_classes)`` and every input is finite (all of an
  in-memory split: one pass over tensors already in memory; a spread sample of a
  streamed one); :func:`check_model` adds that a fresh model's output on a sample of
  every split is finite and fits ``num_classes``; :func:`check_inputs` (every job, with
  its spec) that every extra metric returns an ``Estimate`` or a float, and that no
  constraint names a float metric (it could never be certified);
* :func:`check_task` (``shieldtune task-check``) adds what costs a little more:
  seeded models are reproducible, the loss is a finite scalar, a short training
  segment runs, sample inputs
  lie in the input domain, an attack stays in it, and every extra metric and
  hyperparameter hook works.

Every failure is a one-line :class:`~shieldtune.errors.TaskError` naming the task,
the split, the problem and what to fix: bad data found here costs one line, not a
traceback from deep inside training or a job that "finds no safe model".

The checks read data through DataLoaders and run the model; they do it under a forked
torch RNG, so a valid job's random state, and so its results, stay as they were.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import Dataset

from shieldtune.config import DataConfig
from shieldtune.errors import ConfigError, ShieldtuneError, TaskError, first_line
from shieldtune.tasks.batches import by_indices, head, iterate
from shieldtune.tasks.contract import (
    Estimate,
    MetricInput,
    Task,
    TaskData,
    TaskMetric,
    TensorSplit,
    build_model,
    metric_value,
)

if TYPE_CHECKING:
    from shieldtune.safety.spec import Constraint

#: Samples per split whose types the quick check inspects.
_PROBE = 4
#: Samples of a streamed split whose labels and inputs are checked (spread over the split).
_SAMPLE = 256
#: Samples of each split a fresh model is run on, to see that its outputs are finite.
_FORWARD_SAMPLE = 64
#: Validation samples the metrics are probed on.
_METRIC_SAMPLE = 64
_CPU = torch.device("cpu")


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
    _check_values(task, name, split, n)


def _spread(n: int, k: int) -> list[int]:
    """Up to ``k`` sample indices spread evenly over ``range(n)`` (all of them if n <= k),
    the first and the last included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _check_values(task: Task, name: str, split: Dataset, n: int) -> None:
    """Every label in ``[0, num_classes)`` and every input finite: the whole of an in-memory
    split, a spread sample of a streamed one (reading all of it could cost an epoch)."""
    if isinstance(split, TensorSplit):
        x, y, index = split.x, split.y, list(range(n))
        if x.shape[0] != n:
            raise TaskError(
                f"task {task.name!r}: the {name} split has {x.shape[0]} inputs but {n} labels; "
                "fix load_data() to give one label per input"
            )
    else:
        index = _spread(n, _SAMPLE)
        with torch.random.fork_rng(devices=[]):
            x, y = _guard(
                task,
                f"reading the {name} split",
                lambda: next(by_indices(split, [index], _CPU)),
            )
    bad = ((y < 0) | (y >= task.num_classes)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise TaskError(
            f"task {task.name!r}: the {name} split has label {int(y[i])} at sample {index[i]}, "
            f"outside [0, {task.num_classes - 1}] (num_classes = {task.num_classes}); fix the "
            "labels load_data() returns (int64 class indices from 0) or Task.num_classes"
        )
    if torch.is_floating_point(x):
        i = _first_not_finite(x)
        if i is not None:
            raise TaskError(
                f"task {task.name!r}: the {name} split's inputs are not finite (NaN or inf) at "
                f"sample {index[i]}; fix load_data() (impute, clip or drop such samples)"
            )


def _first_not_finite(x: torch.Tensor, chunk: int = 8192) -> int | None:
    """The first sample (along the first axis) with a NaN or inf, in chunks to bound memory."""
    for start in range(0, x.shape[0], chunk):
        ok = torch.isfinite(x[start : start + chunk].reshape(min(chunk, x.shape[0] - start), -1))
        rows = (~ok.all(dim=1)).nonzero()
        if len(rows):
            return start + int(rows[0])
    return None


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
    for name in ("train", "val", "test"):
        _check_outputs(task, model, name, getattr(data, name), device)
    return model


def _check_outputs(
    task: Task, model: nn.Module, name: str, split: Dataset, device: torch.device
) -> None:
    """A fresh model's logits on a spread sample of ``split`` are finite (its inputs are, by
    :func:`load_task_data`): NaN logits come from the model, and would end every segment as
    "diverged" or every metric as NaN."""
    index = _spread(len(split), _FORWARD_SAMPLE)  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        x, _ = next(by_indices(split, [index], device))
        out = _guard(task, "the model's forward pass", lambda: model(x))
    i = _first_not_finite(out) if isinstance(out, torch.Tensor) else None
    if i is not None:
        raise TaskError(
            f"task {task.name!r}: a freshly built model's output on the {name} split is not "
            f"finite (NaN or inf) at sample {index[i]}, though its inputs are; fix "
            "build_model() or the model's forward()"
        )


def check_inputs(
    task: Task,
    data: TaskData,
    constraints: Sequence[Constraint],
    confidence: float,
    seed: int = 0,
) -> None:
    """What every job checks before it trains, with its spec: a freshly built model fits the
    data (:func:`check_model`) and every extra metric returns an :class:`Estimate` or a float
    on it. A float carries no uncertainty, so a constraint on it could never be certified:
    such a spec is refused here, in one line, instead of spending the budget."""
    model = check_model(task, build_model(task, seed, _CPU), data)
    alpha = (1.0 - confidence) / max(len(constraints), 1)
    bare = {m.name for m, _, est in probe_metrics(task, model, data, alpha) if est is None}
    unbounded = [(i, c) for i, c in enumerate(constraints) if c.metric in bare]
    if unbounded:
        i, c = unbounded[0]
        raise ConfigError(
            f"config key 'safety.constraints[{i}]' ({c}) can never be certified: task "
            f"metric {c.metric!r} returns a float, which carries no uncertainty; return "
            "shieldtune.tasks.Estimate(value, low, high, n) with bounds at MetricInput.alpha "
            "(for a share of samples: shieldtune.tasks.proportion_estimate(k, n, "
            "seen.alpha)), or drop the constraint"
        )


def probe_metrics(
    task: Task, model: nn.Module, data: TaskData, alpha: float
) -> list[tuple[TaskMetric, float, Estimate | None]]:
    """Each extra metric called once on the first validation samples: its value and, for an
    :class:`Estimate`, its bounds (a one-line error for anything else, or bounds that do not
    contain the value)."""
    if not task.metrics:
        return []
    val = head(data.val, _METRIC_SAMPLE)
    model.eval()
    with torch.random.fork_rng(devices=[]):
        with torch.no_grad():
            batches = list(iterate(val, _CPU))
            logits = torch.cat([model(xb) for xb, _ in batches]).float()
        targets = torch.cat([yb for _, yb in batches])
        seen = MetricInput(model, "val", val, logits, targets, alpha)
        return [_probe(task, m, seen) for m in task.metrics]


def _probe(
    task: Task, metric: TaskMetric, seen: MetricInput
) -> tuple[TaskMetric, float, Estimate | None]:
    raw = _guard(task, f"metric {metric.name!r}", lambda: metric.fn(seen))
    try:
        value, est = metric_value(raw)
    except TypeError:
        raise TaskError(
            f"task {task.name!r}: metric {metric.name!r} returned {type(raw).__name__}; return "
            "a shieldtune.tasks.Estimate (certifiable) or a float (reported only)"
        ) from None
    if est is not None and not math.isnan(value) and not est.low <= value <= est.high:
        raise TaskError(
            f"task {task.name!r}: metric {metric.name!r} returned {est}, whose bounds do not "
            "contain its value; return Estimate(value, low, high, n) with low <= value <= high"
        )
    return metric, value, est


def check_task(
    task: Task,
    cfg: DataConfig,
    seed: int = 0,
    data: TaskData | None = None,
    alpha: float = 0.05,
) -> list[str]:
    """The full contract check (on ``data`` when already loaded); what was checked, a line
    each. ``alpha``: the level the metrics' bounds are asked for."""
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
    lines += _metric_lines(task, model, data, alpha)
    return lines


def _metric_lines(task: Task, model: nn.Module, data: TaskData, alpha: float) -> list[str]:
    """One line per extra metric: its value, and the bounds of an Estimate (a float is
    reported, never certified). Both must be finite here, on a model that trained a little."""
    lines = []
    n = min(len(data.val), _METRIC_SAMPLE)  # type: ignore[arg-type]
    for metric, value, est in probe_metrics(task, model, data, alpha):
        finite = math.isfinite(value) and (est is None or math.isfinite(est.high - est.low))
        if not finite:
            raise TaskError(
                f"task {task.name!r}: metric {metric.name!r} returned {value!r} (bounds "
                f"{est and (est.low, est.high)}) on {n} validation samples; return finite "
                "numbers"
            )
        if est is None:
            lines.append(
                f"metric {metric.name}: {value:.4f} on {n} validation samples (a float: "
                "reported, never certified; return an Estimate to constrain it)"
            )
        else:
            lines.append(
                f"metric {metric.name}: {value:.4f} [{est.low:.4f}, {est.high:.4f}] on {n} "
                f"validation samples (an Estimate, one-sided bounds at level {alpha:g})"
            )
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
