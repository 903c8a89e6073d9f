"""Choosing the step executor a tuning job runs on (``tuner.executor``)."""

from __future__ import annotations

from shieldtune.config import KubernetesConfig, TunerConfig
from shieldtune.executors.base import StepExecutor
from shieldtune.executors.local import LocalStepExecutor
from shieldtune.job import StepSpec
from shieldtune.tasks.contract import TaskData


def make_executor(
    tuner: TunerConfig,
    kubernetes: KubernetesConfig,
    steps: StepSpec,
    data: TaskData,
    mlflow_run_id: str | None,
) -> StepExecutor:
    """The backend ``tuner.executor`` names, ready to run the job's steps."""
    kind = tuner.executor
    if kind == "local":
        return LocalStepExecutor(steps.runner(data))
    if kind == "process":
        from shieldtune.executors.process import ProcessStepExecutor

        return ProcessStepExecutor(
            steps, data, tuner.num_envs, retries=tuner.step_retries, threads=tuner.worker_threads
        )
    from shieldtune.executors.kubernetes.executor import KubernetesStepExecutor
    from shieldtune.executors.step_files import DirStepStore, MlflowStepStore

    k = kubernetes
    if k.transport == "volume":
        store = DirStepStore(
            f"{k.controller_volume_path or k.volume_mount_path}/steps",
            uri_path=f"{k.volume_mount_path}/steps",
        )
    else:
        assert mlflow_run_id is not None, "config validation requires tracking for mlflow"
        store = MlflowStepStore(mlflow_run_id)
    return KubernetesStepExecutor(
        k, steps, store, retries=tuner.step_retries, mlflow_run_id=mlflow_run_id
    )
