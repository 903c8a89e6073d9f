"""One tuning job, resolved once per process from its config.

A :class:`~shieldtune.config.Config` is text made typed: it names a task by a
string and lists constraints as strings. A :class:`Job` is that config
resolved: the task instance, the parsed constraints, the search space and the
fixed hyperparameters, checked against each other once (a search space naming
a hyperparameter the task lacks, a constraint on a metric it does not
provide, a spec no state could be certified against: one line, before any
data is read). Everything downstream receives the resolved parts it reads,
never the config to resolve again.

A step that runs elsewhere (a worker process, a Kubernetes pod) needs only a
:class:`StepSpec`: the task, data, training and safety sections; that is what
crosses the process boundary with each request, not the whole config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shieldtune.checkpoint import MODEL_KIND, safe_load
from shieldtune.config import (
    Config,
    DataConfig,
    SafetyConfig,
    TaskConfig,
    TrainingConfig,
    config_from_dict,
    load_config,
    section_from_dict,
)
from shieldtune.control.search_space import SearchSpace
from shieldtune.errors import CheckpointError, ConfigError
from shieldtune.safety.spec import Constraint, available_metrics, parse_constraints
from shieldtune.tasks.checker import check_inputs, load_task_data
from shieldtune.tasks.contract import Task, TaskData, build_model
from shieldtune.tasks.registry import make_task
from shieldtune.tasks.validation import check_certifiable_on, check_config_against_task
from shieldtune.training.device import resolve_device
from shieldtune.training.hyperparameters import fixed_hyperparameters
from shieldtune.training.step import StepRunner


@dataclass(frozen=True)
class StepSpec:
    """What one environment step needs wherever it runs: the task, where its data is, and the
    training and safety sections. A worker or step pod rebuilds its runner from this alone."""

    task: TaskConfig
    data: DataConfig
    training: TrainingConfig
    safety: SafetyConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> StepSpec:
        """The spec a request carries; a one-line :class:`ConfigError` when it is malformed."""
        if not isinstance(raw, dict) or set(raw) != set(_SECTIONS):
            raise ConfigError(
                f"a step spec must be a mapping of the sections {', '.join(_SECTIONS)}"
            )
        return cls(**{k: section_from_dict(t, raw[k], k) for k, t in _SECTIONS.items()})

    def runner(self, data: TaskData | None = None) -> StepRunner:
        """A runner for these steps, loading the task's data unless ``data`` is given."""
        task = make_task(self.task)
        constraints = parse_constraints(self.safety.constraints, available_metrics(task))
        if data is None:
            data = load_task_data(task, self.data)
        return StepRunner(
            task, data, self.training, self.safety, constraints, self.data.loader_workers
        )


#: The config sections a step reads, in :class:`StepSpec`'s field order.
_SECTIONS: dict[str, type] = {
    "task": TaskConfig,
    "data": DataConfig,
    "training": TrainingConfig,
    "safety": SafetyConfig,
}


@dataclass
class Job:
    """A config resolved against its task, built once per process (:meth:`from_config`)."""

    config: Config
    task: Task
    #: The parsed spec ``safety.constraints``; all must hold.
    constraints: list[Constraint]
    space: SearchSpace
    #: A value for every hyperparameter; the search space overrides the tuned ones.
    fixed: dict[str, float]

    @classmethod
    def from_config(cls, cfg: Config) -> Job:
        """Resolve ``cfg``: build its task and check the config against it (one line if not)."""
        task = make_task(cfg.task)
        constraints = check_config_against_task(cfg, task)
        return cls(
            cfg,
            task,
            constraints,
            SearchSpace(cfg.env.search_space),
            fixed_hyperparameters(cfg.training, task),
        )

    @property
    def steps(self) -> StepSpec:
        c = self.config
        return StepSpec(c.task, c.data, c.training, c.safety)

    @property
    def registered_model_name(self) -> str:
        """The Model Registry name: ``tracking.registered_model_name`` or ``shieldtune-<task>``."""
        return self.config.tracking.registered_model_name or f"shieldtune-{self.task.name}"

    def load_data(self) -> TaskData:
        """The task's splits, after the cheap contract checks (labels, finite inputs, a fresh
        model's outputs, the metrics' return types); a spec that these split sizes could never
        certify, or that constrains a metric without bounds, is refused here, before anything
        trains."""
        data = load_task_data(self.task, self.config.data)
        self.check_splits(data)
        safety = self.config.safety
        check_inputs(self.task, data, self.constraints, safety.confidence, self.config.tuner.seed)
        return data

    def check_splits(self, data: TaskData) -> None:
        """One line if no state could be certified on ``data``'s validation or test split."""
        check_certifiable_on(
            self.config.safety,
            self.constraints,
            len(data.val),
            len(data.test),  # type: ignore[arg-type]
        )

    def device(self) -> torch.device:
        """Where this machine trains and evaluates (``training.device``; checked when asked,
        since a controller whose steps run on a cluster needs no GPU of its own)."""
        return resolve_device(self.config.training.device)

    def to_dict(self) -> dict[str, Any]:
        """The config, as plain data (what a checkpoint, MLflow and the pipeline carry)."""
        return self.config.to_dict()


def job_from_dict(raw: dict[str, Any] | None) -> Job:
    """A job from plain config data (YAML, JSON, a checkpoint's config)."""
    return Job.from_config(config_from_dict(raw))


def load_job(path: str | Path | None = None, overrides: list[str] | None = None) -> Job:
    """The job a YAML config file (or the defaults) plus ``--set`` overrides describe."""
    return Job.from_config(load_config(path, overrides))


def load_checkpoint(model_path: Path) -> tuple[torch.nn.Module, dict[str, Any], Job]:
    """A checkpoint's model (on the CPU, eval mode), the checkpoint and the job it came from."""
    ckpt = safe_load(model_path, MODEL_KIND)
    try:
        job = job_from_dict(ckpt["config"])
    except ConfigError as exc:
        raise CheckpointError(
            f"'{model_path}' carries a config this shieldtune cannot use ({exc})"
        ) from None
    model = build_model(job.task, 0, torch.device("cpu"))
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"'{model_path}' does not fit the model it describes: {first}"
        ) from None
    model.eval()
    return model, ckpt, job
