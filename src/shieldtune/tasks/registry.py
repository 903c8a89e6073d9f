"""Finding a task from the config: built-in short names and import strings.

``task.entry_point`` is either a built-in task's short name (``mnist-cnn``) or
an import string ``"package.module:factory"``, the way Gymnasium registers
envs; ``factory(**task.kwargs)`` must return a :class:`~shieldtune.tasks.Task`.
Because a task is named by strings only, every process rebuilds the same task
from the config alone: process-pool workers, Kubernetes step pods and every
KFP component.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable
from typing import Any

from shieldtune.config import TaskConfig
from shieldtune.errors import ShieldtuneError, TaskError, first_line
from shieldtune.tasks.contract import Task

#: Built-in tasks by short name.
BUILTIN_TASKS: dict[str, str] = {
    "mnist-cnn": "shieldtune.tasks.mnist:MnistCnnTask",
    "breast-cancer": "shieldtune.tasks.tabular:BreastCancerTask",
    "japanese-vowels": "shieldtune.tasks.speech:JapaneseVowelsTask",
}

_cache: dict[str, Task] = {}
_lock = threading.Lock()


def resolve_entry_point(entry_point: str) -> Callable[..., Any]:
    """The factory an entry point names; a one-line :class:`TaskError` when it cannot."""
    target = BUILTIN_TASKS.get(entry_point, entry_point)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise TaskError(
            f"task.entry_point {entry_point!r} is neither a built-in task "
            f"({', '.join(BUILTIN_TASKS)}) nor an import string 'package.module:factory'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskError(
            f"task.entry_point {entry_point!r}: module {module_name!r} cannot be imported "
            f"({first_line(exc, 120)}); install the package that provides it"
        ) from None
    except Exception as exc:  # the user's module failed while importing
        raise TaskError(
            f"task.entry_point {entry_point!r}: importing {module_name!r} failed with "
            f"{type(exc).__name__}: {first_line(exc, 120)}"
        ) from None
    except SystemExit as exc:  # sys.exit() at import would end the job silently
        raise TaskError(
            f"task.entry_point {entry_point!r}: importing {module_name!r} called "
            f"sys.exit({exc.code!r}); a task module must not exit when it is imported"
        ) from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # anything else a module can raise while it is imported
        raise TaskError(
            f"task.entry_point {entry_point!r}: importing {module_name!r} raised "
            f"{type(exc).__name__}: {first_line(exc, 120)}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TaskError(
                f"task.entry_point {entry_point!r}: module {module_name!r} has no attribute "
                f"{attr!r}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise TaskError(
            f"task.entry_point {entry_point!r} names {type(obj).__name__}, not a factory"
        )
    return obj


def make_task(cfg: TaskConfig) -> Task:
    """The task ``cfg`` names, built once per process and entry point + kwargs."""
    key = json.dumps([cfg.entry_point, cfg.kwargs], sort_keys=True, default=str)
    with _lock:
        if key not in _cache:
            _cache[key] = _build(cfg)
        return _cache[key]


def _build(cfg: TaskConfig) -> Task:
    factory = resolve_entry_point(cfg.entry_point)
    try:
        task = factory(**cfg.kwargs)
    except ShieldtuneError:
        raise
    except TypeError as exc:
        raise TaskError(
            f"task {cfg.entry_point!r} does not accept task.kwargs {sorted(cfg.kwargs)}: "
            f"{first_line(exc, 160)}"
        ) from None
    except SystemExit as exc:
        raise TaskError(
            f"task {cfg.entry_point!r} failed to build: the factory called sys.exit({exc.code!r})"
        ) from None
    except Exception as exc:
        raise TaskError(
            f"task {cfg.entry_point!r} failed to build: {type(exc).__name__}: "
            f"{first_line(exc, 160)}"
        ) from None
    if not isinstance(task, Task):
        raise TaskError(
            f"task.entry_point {cfg.entry_point!r} returned {type(task).__name__}, not a "
            "shieldtune.tasks.Task; subclass Task (see docs/tasks.md)"
        )
    _check_declarations(cfg.entry_point, task)
    return task


def _check_declarations(entry_point: str, task: Task) -> None:
    """What can be checked without data or a model: the task's declared attributes."""
    if isinstance(task.num_classes, bool) or not isinstance(task.num_classes, int):
        raise TaskError(f"task {entry_point!r}: num_classes must be an integer >= 2")
    if task.num_classes < 2:
        raise TaskError(f"task {entry_point!r}: num_classes = {task.num_classes}; need >= 2")
    if not isinstance(task.name, str) or not task.name:
        raise TaskError(f"task {entry_point!r}: name must be a non-empty string")
    from shieldtune.safety.spec import BUILTIN_METRICS, METRIC_NAME
    from shieldtune.training.hyperparameters import BUILTIN_HYPERPARAMETERS

    seen: set[str] = set()
    for metric in task.metrics:
        if not isinstance(metric.name, str) or not METRIC_NAME.fullmatch(metric.name):
            raise TaskError(
                f"task {entry_point!r}: metric name {metric.name!r} must be lower-case letters, "
                "digits and '_', starting with a letter"
            )
        if metric.name in BUILTIN_METRICS or metric.name in seen:
            raise TaskError(
                f"task {entry_point!r}: metric name {metric.name!r} is taken; "
                f"built-in metrics are {', '.join(BUILTIN_METRICS)}"
            )
        seen.add(metric.name)
    seen = set()
    for hp in task.hyperparameters:
        if hp.name in BUILTIN_HYPERPARAMETERS or hp.name in seen:
            raise TaskError(
                f"task {entry_point!r}: hyperparameter name {hp.name!r} is taken; "
                f"built-in ones are {', '.join(BUILTIN_HYPERPARAMETERS)}"
            )
        if not hp.low <= hp.default <= hp.high:
            raise TaskError(
                f"task {entry_point!r}: hyperparameter {hp.name!r} default {hp.default} is "
                f"outside its bounds [{hp.low}, {hp.high}]"
            )
        seen.add(hp.name)
