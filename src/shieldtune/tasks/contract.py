"""The task contract: what shieldtune needs from a model it tunes, and nothing more.

A *task* is a user's model, data, loss, input domain, extra metrics and extra
hyperparameters, in the spirit of Gymnasium's env contract: subclass
:class:`Task`, fill in :meth:`Task.build_model` and :meth:`Task.load_data`,
name the factory in the config (``task: {entry_point: "my_pkg.tasks:make_task",
kwargs: {...}}``) and check it with ``shieldtune task-check``. Everything else
(the environment, the shield, the executors, the pipeline) is task-agnostic.

The factory must be cheap: it runs when a config is validated (to know the
task's metric and hyperparameter names), in every worker process and in every
step pod. Heavy work (reading data) belongs in :meth:`Task.load_data`, which
runs once per process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from shieldtune.safety.stats import Estimate, proportion
from shieldtune.tasks.preprocessing import Transform

if TYPE_CHECKING:
    from shieldtune.config import DataConfig


@dataclass(frozen=True)
class InputDomain:
    """The box ``low <= x <= high`` that valid inputs live in and attacks clip to.

    ``low``/``high`` are numbers (pixels in [0, 1]) or tensors shaped like one input
    (per-feature bounds of tabular data). Attack radii (``safety.epsilon``) are in
    the same units as the inputs, so a task that standardises its features states
    its bounds in the standardised space.
    """

    low: float | torch.Tensor
    high: float | torch.Tensor

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.low, float | int) and isinstance(self.high, float | int):
            return x.clamp(float(self.low), float(self.high))
        low = torch.as_tensor(self.low, dtype=x.dtype, device=x.device)
        high = torch.as_tensor(self.high, dtype=x.dtype, device=x.device)
        return torch.max(torch.min(x, high), low)


#: Images with pixel values in [0, 1].
PIXELS = InputDomain(0.0, 1.0)
#: Real-valued inputs without bounds: attacks are limited by their radius alone.
UNBOUNDED = InputDomain(-math.inf, math.inf)


class TensorSplit(Dataset):
    """A split held as two in-memory tensors: the fast path (no DataLoader per batch).

    ``x`` holds the inputs (first axis: samples) and ``y`` the int64 class labels.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def head(self, n: int) -> TensorSplit:
        return TensorSplit(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class TaskData:
    """The three splits of a task, each a ``torch.utils.data.Dataset`` of ``(x, y)`` pairs.

    ``train`` is trained on, ``val`` decides rewards, constraints and model selection,
    ``test`` is touched once, for the final report. A :class:`TensorSplit` is read by
    indexing (fast); any other Dataset through a ``DataLoader``, so data that does not
    fit in memory works.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    #: Where the data came from, for reports and the MLflow dataset record.
    source: str = ""
    #: Bounds that depend on the data itself (e.g. per-feature bounds in a feature space
    #: standardised with training-split statistics); they replace the task's own
    #: ``input_domain`` for attacks. Only an attackable task may set them.
    input_domain: InputDomain | None = None
    #: What turns raw features into the inputs the splits hold (e.g. :class:`Standardize`
    #: with the training split's statistics), when the model does not eat raw features: the
    #: model is trained on transformed inputs, so it is useless without it. It is logged with
    #: the registered model (``preprocessing.json`` next to ``best_model.pt``), so serving
    #: needs neither ``load_data`` nor the training data. ``None``: raw inputs, nothing logged.
    transform: Transform | None = None

    def attack_domain(self, task: Task) -> InputDomain | None:
        """The box attacks on this data clip to; ``None`` when the task is not attackable."""
        if task.input_domain is None:
            return None
        return self.input_domain or task.input_domain


@dataclass(frozen=True)
class MetricInput:
    """What a task's extra metric sees: the model's outputs on one whole split."""

    model: nn.Module
    #: ``val`` (per environment step) or ``test`` (the final report).
    split: str
    dataset: Dataset
    #: The model's outputs on ``dataset``, in its order, float32 on the CPU.
    logits: torch.Tensor
    targets: torch.Tensor
    #: The one-sided level each bound of a returned :class:`Estimate` must hold at: the
    #: spec's error budget (1 - ``safety.confidence``) split over its constraints, the share
    #: a built-in accuracy gets. (0.05 when a test builds a MetricInput by hand.)
    alpha: float = 0.05


def proportion_estimate(k: int, n: int, alpha: float) -> Estimate:
    """The share ``k / n`` of samples with some property (misclassified, flagged, ...) with
    exact one-sided Clopper-Pearson bounds at level ``alpha`` each: what a metric returns
    so that a constraint on it can be certified. Pass ``MetricInput.alpha``."""
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise TypeError(f"proportion_estimate needs integer counts, got k={k!r}, n={n!r}")
    if not 0 <= int(k) <= int(n):
        raise ValueError(f"proportion_estimate needs 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"proportion_estimate needs a level alpha in (0, 1), got {alpha}")
    return proportion(int(k), int(n), float(alpha))


def metric_value(raw: object) -> tuple[float, Estimate | None]:
    """A metric's result as (point value, bounds): an :class:`Estimate` carries its bounds;
    a plain number is reported but has none (nothing about its sampling error is known, so
    a constraint on it can never be certified). Raises TypeError for anything else."""
    if isinstance(raw, Estimate):
        return float(raw.value), raw
    if isinstance(raw, bool | str | bytes):
        raise TypeError(type(raw).__name__)
    try:
        return float(raw), None  # type: ignore[arg-type]  # numbers, numpy and 0-d tensors
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(type(raw).__name__) from None


@dataclass(frozen=True)
class TaskMetric:
    """A named safety or quality metric, usable in ``safety.constraints`` like a built-in.

    ``fn`` returns an :class:`Estimate` ``(value, low, high, n)`` whose one-sided bounds
    hold at ``MetricInput.alpha`` (:func:`proportion_estimate` for a share of samples):
    that is what the spec is judged on, so only such a metric may be constrained. A plain
    float is logged and reported but never certified: a constraint on it is refused when
    the job starts. Examples: the share of confidently wrong predictions (an Estimate);
    expected calibration error (a float).
    """

    name: str
    description: str
    fn: Callable[[MetricInput], Estimate | float]


@dataclass(frozen=True)
class TaskHyperparameter:
    """A hyperparameter the task adds to the built-in ones (dropout, label smoothing, ...).

    It can be tuned (``env.search_space``) or fixed (``training.task_hyperparameters``).
    Before every training segment ``apply(model, value)`` is called (e.g. to set a
    dropout probability); the loss also receives every hyperparameter's value.
    """

    name: str
    default: float
    low: float
    high: float
    integer: bool = False
    apply: Callable[[nn.Module, float], None] | None = None


class Task:
    """Base class of a task. Subclass it and fill in the two abstract methods.

    Class attributes to set:

    * ``name``: a short name, used for the registered model (``shieldtune-<name>``);
    * ``num_classes``: the model outputs ``(batch, num_classes)`` logits;
    * ``input_domain``: an :class:`InputDomain`, or ``None`` when inputs cannot be
      perturbed (token ids): constraints on FGSM/PGD are then refused at config time;
    * ``metrics`` / ``hyperparameters``: extra :class:`TaskMetric` and
      :class:`TaskHyperparameter` entries (optional);
    * ``class_names``: labels for reports (default ``"0" .. "num_classes-1"``);
    * ``data_sources``: the values ``data.source`` may take (``None``: the task ignores it),
      checked when the config is validated.
    """

    name: str = "task"
    num_classes: int = 0
    input_domain: InputDomain | None = None
    metrics: Sequence[TaskMetric] = ()
    hyperparameters: Sequence[TaskHyperparameter] = ()
    class_names: Sequence[str] | None = None
    data_sources: Sequence[str] | None = None

    def build_model(self, seed: int) -> nn.Module:
        """A freshly initialised model. shieldtune seeds torch's global generator with
        ``seed`` before calling this, so default initialisers are already reproducible."""
        raise NotImplementedError

    def load_data(self, cfg: DataConfig) -> TaskData:
        """The train / val / test splits. ``cfg`` is the config's ``data`` section: where
        the data is (``root``, ``source``), split sizes (``None``: the task's own) and the
        split seed; ignore what does not apply."""
        raise NotImplementedError

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, hyperparameters: Mapping[str, float]
    ) -> torch.Tensor:
        """The training loss, a scalar averaged over the batch; cross-entropy by default.

        ``hyperparameters`` holds this segment's value of every hyperparameter, so a task
        can tune e.g. label smoothing. Attacks always use cross-entropy on the logits.
        """
        return F.cross_entropy(logits, targets)

    def labels(self) -> list[str]:
        """Class names for reports."""
        if self.class_names is not None:
            return [str(c) for c in self.class_names]
        return [str(i) for i in range(self.num_classes)]


def build_model(task: Task, seed: int, device: torch.device) -> nn.Module:
    """A fresh model of ``task``, initialised from ``seed`` without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.build_model(seed)
    return model.to(device) if isinstance(model, nn.Module) else model
