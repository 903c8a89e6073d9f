"""Choosing the step executor a tuning job runs on (``tuner.executor``)."""

from __future__ import annotations

from shieldtune.config import Config
from shieldtune.executors.base import StepExecutor
from shieldtune.executors.local import LocalStepExecutor
from shieldtune.tasks.contract import TaskData
from shieldtune.training.step import StepRunner


def make_executor(cfg: Config, data: TaskData, mlflow_run_id: str | None) -> StepExecutor:
    """The backend ``cfg.tuner.executor`` names, ready to run steps."""
    kind = cfg.tuner.executor
    if kind == "local":
        return LocalStepExecutor(StepRunner.from_config(cfg, data))
    if kind == "process":
        from shieldtune.executors.process import ProcessStepExecutor

        return ProcessStepExecutor(cfg, data)
    from shieldtune.executors.kubernetes.executor import KubernetesStepExecutor
    from shieldtune.executors.step_files import DirStepStore, MlflowStepStore

    k = cfg.kubernetes
    if k.transport == "volume":
        store = DirStepStore(
            f"{k.controller_volume_path or k.volume_mount_path}/steps",
            uri_path=f"{k.volume_mount_path}/steps",
        )
    else:
        assert mlflow_run_id is not None, "config validation requires tracking for mlflow"
        store = MlflowStepStore(mlflow_run_id)
    return KubernetesStepExecutor(cfg, store, mlflow_run_id=mlflow_run_id)
