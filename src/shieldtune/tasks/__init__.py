"""Tasks: what shieldtune tunes. The contract a plug-in implements, and the built-in tasks.

A task is a model, its data, its loss, the input domain attacks clip to, and
optional extra metrics and hyperparameters (see docs/tasks.md)::

    from shieldtune.tasks import Task, TaskData, TensorSplit, PIXELS

A metric returns an :class:`Estimate` (``proportion_estimate`` for a share of samples),
which can be constrained, or a float, which is only reported. A task whose model expects
transformed inputs declares the transform with its data (``TaskData.transform``, e.g.
:class:`Standardize`), and it ships with the registered model.

Built-in tasks (``task.entry_point``): ``mnist-cnn``, ``breast-cancer``,
``japanese-vowels``.
"""

from shieldtune.tasks.contract import (
    PIXELS,
    UNBOUNDED,
    Estimate,
    InputDomain,
    MetricInput,
    Task,
    TaskData,
    TaskHyperparameter,
    TaskMetric,
    TensorSplit,
    proportion_estimate,
)
from shieldtune.tasks.preprocessing import Compose, Resample, Standardize, Transform

__all__ = [
    "PIXELS",
    "UNBOUNDED",
    "Compose",
    "Estimate",
    "InputDomain",
    "MetricInput",
    "Resample",
    "Standardize",
    "Task",
    "TaskData",
    "TaskHyperparameter",
    "TaskMetric",
    "TensorSplit",
    "Transform",
    "proportion_estimate",
]
