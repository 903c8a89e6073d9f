"""Tasks: what shieldtune tunes. The contract a plug-in implements, and the built-in tasks.

A task is a model, its data, its loss, the input domain attacks clip to, and
optional extra metrics and hyperparameters (see docs/tasks.md)::

    from shieldtune.tasks import Task, TaskData, TensorSplit, PIXELS

Built-in tasks (``task.entry_point``): ``mnist-cnn``, ``breast-cancer``,
``japanese-vowels``.
"""

from shieldtune.tasks.contract import (
    PIXELS,
    UNBOUNDED,
    InputDomain,
    MetricInput,
    Task,
    TaskData,
    TaskHyperparameter,
    TaskMetric,
    TensorSplit,
)

__all__ = [
    "PIXELS",
    "UNBOUNDED",
    "InputDomain",
    "MetricInput",
    "Task",
    "TaskData",
    "TaskHyperparameter",
    "TaskMetric",
    "TensorSplit",
]
