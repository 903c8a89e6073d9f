"""The Kubeflow pipelines: ``tuning_pipeline`` (cold start) and ``retune_pipeline``.

Components are built here from :mod:`components` with one configurable
``base_image``; the image has shieldtune (and kfp) installed, so nothing is
pip-installed at run time. Caching is on only for data prep (reruns must
really retrain and re-attack); every task has retries, resource requests and
limits, runs as the images' non-root user with an emptyDir at /tmp for scratch;
MLflow credentials come from a Kubernetes Secret, never from parameters. What a
pipeline cannot set on its pods (read-only root filesystem, seccomp, privilege
escalation, capabilities, fsGroup) is in docs/cluster.md, section 5c.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from shieldtune.executors.kubernetes.jobs import RUN_AS, SCRATCH
from shieldtune.pipeline import DEFAULT_BASE_IMAGE, components

MLFLOW_SECRET = "shieldtune-mlflow"
#: Secret keys injected as environment variables of every task that talks to MLflow.
MLFLOW_SECRET_ENV = {
    "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
}
#: Downward-API variables of the tune task
#: (see shieldtune.executors.kubernetes.executor.owner_from_env).
CONTROLLER_POD_ENV = {
    "SHIELDTUNE_POD_NAME": "metadata.name",
    "SHIELDTUNE_POD_UID": "metadata.uid",
}
#: Size cap of every task's /tmp emptyDir (HOME, TMPDIR, tuner.output_dir, the launcher's
#: output files); past it the kubelet evicts the pod and the task's retry starts over.
SCRATCH_SIZE = "2Gi"
COMPONENT_NAMES = ("prepare_data", "tune", "train_final", "evaluate_safety", "register_model")


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str


RESOURCES = {
    "prepare_data": Resources("1", "2Gi"),
    "tune": Resources("2", "6Gi"),
    "train_final": Resources("2", "4Gi"),
    "evaluate_safety": Resources("2", "4Gi"),
    "register_model": Resources("1", "2Gi"),
}


def build_components(base_image: str = DEFAULT_BASE_IMAGE) -> dict[str, Callable]:
    """One KFP component per stage, all on ``base_image``."""
    return {
        name: dsl.component(
            getattr(components, name), base_image=base_image, install_kfp_package=False
        )
        for name in COMPONENT_NAMES
    }


def _configure(task: dsl.PipelineTask, name: str, *, cache: bool = False) -> dsl.PipelineTask:
    res = RESOURCES[name]
    task.set_caching_options(cache)
    task.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2.0)
    task.set_cpu_request(res.cpu).set_memory_request(res.memory)
    task.set_cpu_limit(res.cpu).set_memory_limit(res.memory)
    # The user container runs as the images' uid/gid (docker/Dockerfile.*), refused if root.
    # KFP's SDK can express no more than these three fields (docs/cluster.md).
    kubernetes.set_security_context(
        task, run_as_user=RUN_AS, run_as_group=RUN_AS, run_as_non_root=True
    )
    kubernetes.empty_dir_mount(task, "scratch", SCRATCH, size_limit=SCRATCH_SIZE)
    if name != "prepare_data":
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, MLFLOW_SECRET_ENV, optional=True)
    return task


def build_pipelines(base_image: str = DEFAULT_BASE_IMAGE) -> dict[str, Callable]:
    c = build_components(base_image)

    def graph(
        config_json: str,
        task_entry_point: str,
        task_kwargs_json: str,
        data_root: str,
        episodes: int,
        steps_per_episode: int,
        search_space_json: str,
        constraints_json: str,
        num_envs: int,
        executor: str,
        warm_start: bool,
        warm_start_model_uri: str,
    ) -> None:
        data = _configure(
            c["prepare_data"](
                config_json=config_json,
                task_entry_point=task_entry_point,
                task_kwargs_json=task_kwargs_json,
                data_root=data_root,
            ),
            "prepare_data",
            cache=True,
        )
        # Every later stage reads the config prepare_data resolved (task and data root in).
        config_json = data.outputs["Output"]
        tuned = _configure(
            c["tune"](
                dataset=data.outputs["dataset"],
                config_json=config_json,
                episodes=episodes,
                steps_per_episode=steps_per_episode,
                search_space_json=search_space_json,
                constraints_json=constraints_json,
                num_envs=num_envs,
                executor=executor,
                warm_start=warm_start,
                warm_start_model_uri=warm_start_model_uri,
                kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            ),
            "tune",
        )
        # The controller pod's name and uid make it the owner of the step Jobs it creates,
        # so Kubernetes garbage-collects them with it.
        for env_name, field_path in CONTROLLER_POD_ENV.items():
            kubernetes.use_field_path_as_env(tuned, env_name, field_path)
        run_id = tuned.outputs["mlflow_run_id"]
        with dsl.If(tuned.outputs["Output"] == True, name="feasible-schedule-found"):  # noqa: E712
            final = _configure(
                c["train_final"](
                    dataset=data.outputs["dataset"],
                    schedule=tuned.outputs["schedule"],
                    config_json=config_json,
                    mlflow_run_id=run_id,
                ),
                "train_final",
            )
            checked = _configure(
                c["evaluate_safety"](
                    dataset=data.outputs["dataset"],
                    model=final.outputs["model"],
                    config_json=config_json,
                    mlflow_run_id=run_id,
                ),
                "evaluate_safety",
            )
            register_args = {
                "dataset": data.outputs["dataset"],
                "model": final.outputs["model"],
                "report": checked.outputs["metrics"],
                "config_json": config_json,
                "mlflow_run_id": run_id,
            }
            with dsl.If(checked.outputs["Output"] == True, name="safety-gate-passed"):  # noqa: E712
                _configure(
                    c["register_model"](**register_args, set_champion=True), "register_model"
                )
            with dsl.Else(name="safety-gate-failed"):
                _configure(
                    c["register_model"](**register_args, set_champion=False), "register_model"
                )

    @dsl.pipeline(
        name="shieldtune-tuning",
        description="Safety-shielded DQN hyperparameter tuning, cold start: data -> tune -> "
        "train final -> safety evaluation -> registry (champion alias only past the safety gate).",
    )
    def tuning_pipeline(
        config_json: str = "{}",
        task_entry_point: str = "",
        task_kwargs_json: str = "",
        data_root: str = "",
        episodes: int = 0,
        steps_per_episode: int = 0,
        search_space_json: str = "",
        constraints_json: str = "",
        num_envs: int = 0,
        executor: str = "",
    ) -> None:
        graph(
            config_json,
            task_entry_point,
            task_kwargs_json,
            data_root,
            episodes,
            steps_per_episode,
            search_space_json,
            constraints_json,
            num_envs,
            executor,
            warm_start=False,
            warm_start_model_uri="",
        )

    @dsl.pipeline(
        name="shieldtune-retune",
        description="Scheduled retuning: like shieldtune-tuning, but the controller warm-starts "
        "from the policy of the run behind the current champion model.",
    )
    def retune_pipeline(
        config_json: str = "{}",
        task_entry_point: str = "",
        task_kwargs_json: str = "",
        data_root: str = "",
        episodes: int = 0,
        steps_per_episode: int = 0,
        search_space_json: str = "",
        constraints_json: str = "",
        num_envs: int = 0,
        executor: str = "",
        champion_model_uri: str = "",
    ) -> None:
        graph(
            config_json,
            task_entry_point,
            task_kwargs_json,
            data_root,
            episodes,
            steps_per_episode,
            search_space_json,
            constraints_json,
            num_envs,
            executor,
            warm_start=True,
            warm_start_model_uri=champion_model_uri,
        )

    return {"tuning_pipeline": tuning_pipeline, "retune_pipeline": retune_pipeline}


def compile_all(out_root: Path, base_image: str = DEFAULT_BASE_IMAGE) -> list[Path]:
    """Write ``pipelines/<name>.yaml`` and ``components/<name>/component.yaml`` in ``out_root``."""
    written = []
    for name, pipeline in build_pipelines(base_image).items():
        path = out_root / "pipelines" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(pipeline, str(path))
        written.append(path)
    for name, component in build_components(base_image).items():
        path = out_root / "components" / name / "component.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(component, str(path))
        written.append(path)
    return written
