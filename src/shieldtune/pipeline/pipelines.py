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

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes

from shieldtune.executors.kubernetes.jobs import RUN_AS, SCRATCH
from shieldtune.pipeline import DEFAULT_BASE_IMAGE, components
from shieldtune.pipeline.component_docs import render_readme

MLFLOW_SECRET = "shieldtune-mlflow"
#: Secret keys injected as environment variables of every task that talks to MLflow.
MLFLOW_SECRET_ENV = {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"}
#: Keys a server without authentication leaves out of the Secret.
MLFLOW_SECRET_OPTIONAL_ENV = {
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
COMPONENT_NAMES = (
    "check_inputs",
    "prepare_data",
    "tune",
    "no_feasible_schedule",
    "train_final",
    "evaluate_safety",
    "register_model",
)
#: Tasks whose failures are the user's to fix (or final), so a retry could only repeat them.
NOT_RETRIED = ("check_inputs", "no_feasible_schedule")


PIPELINE_ARGS = """Args:
    config_json: The whole shieldtune config as a JSON object ("{}": all defaults); every
        key reaches the tasks unless a parameter below sets it.
    task_entry_point: Task name or "pkg.module:factory"; empty keeps config_json's.
    task_kwargs_json: JSON object of keyword arguments for the task; empty keeps config_json's.
    data_root: Folder holding the task's data inside the pods; empty keeps config_json's.
    episodes: tuner.episodes; 0 keeps config_json's.
    steps_per_episode: env.steps_per_episode; 0 keeps config_json's.
    search_space_json: env.search_space as a JSON list; empty keeps config_json's.
    constraints_json: safety.constraints as a JSON list; empty keeps config_json's.
    num_envs: tuner.num_envs; 0 keeps config_json's.
    executor: tuner.executor (local, process or kubernetes); empty keeps config_json's.
    champion_model_uri: The model whose run's policy warm-starts the controller; empty means
        models:/<registered model>@champion.
"""
_DEFAULT_LINE = re.compile(r"(\s*)defaultValue: (-?\d+)\.0")
_INT_HEADER = re.compile(r"(: int \[Default: -?\d+)\.0\]")


def integer_defaults(text: str) -> str:
    """KFP writes an integer parameter's default as a float (``6.0``: protobuf Values hold
    doubles); write it as the integer it is, in the body and the header comment. KFP's
    backend parses both to the same number."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        m = _DEFAULT_LINE.fullmatch(line)
        if m is None:
            continue
        indent = m.group(1)
        for later in lines[i + 1 :]:  # the sibling keys of the parameter's mapping
            depth = len(later) - len(later.lstrip(" "))
            if depth < len(indent):
                break
            if depth == len(indent) and later.lstrip().startswith("parameterType:"):
                if later.strip() == "parameterType: NUMBER_INTEGER":
                    lines[i] = f"{indent}defaultValue: {m.group(2)}"
                break
    return _INT_HEADER.sub(r"\1]", "\n".join(lines))


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str


RESOURCES = {
    "check_inputs": Resources("1", "2Gi"),
    "prepare_data": Resources("1", "2Gi"),
    "tune": Resources("2", "6Gi"),
    "train_final": Resources("2", "4Gi"),
    "evaluate_safety": Resources("2", "4Gi"),
    "no_feasible_schedule": Resources("500m", "1Gi"),
    # Re-evaluates the current champion on the test split before promoting.
    "register_model": Resources("2", "4Gi"),
}


def build_components(base_image: str = DEFAULT_BASE_IMAGE) -> dict[str, Callable]:
    """One KFP component per stage, all on ``base_image``."""
    # check_inputs takes the pipelines' parameters: one description for both.
    doc = components.check_inputs.__doc__ or ""
    if PIPELINE_ARGS not in doc:
        head, returns = doc.split("    Returns:", 1)
        args = "".join(f"    {line}\n" if line else "\n" for line in PIPELINE_ARGS.splitlines())
        components.check_inputs.__doc__ = f"{head}{args}\n    Returns:{returns}"
    return {
        name: dsl.component(
            getattr(components, name), base_image=base_image, install_kfp_package=False
        )
        for name in COMPONENT_NAMES
    }


def _configure(task: dsl.PipelineTask, name: str, *, cache: bool = False) -> dsl.PipelineTask:
    res = RESOURCES[name]
    task.set_caching_options(cache)
    if name not in NOT_RETRIED:  # what fails later is transient: MLflow, the cluster, a pod
        task.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2.0)
    task.set_cpu_request(res.cpu).set_memory_request(res.memory)
    task.set_cpu_limit(res.cpu).set_memory_limit(res.memory)
    # The user container runs as the images' uid/gid (docker/Dockerfile.*), refused if root.
    # KFP's SDK can express no more than these three fields (docs/cluster.md).
    kubernetes.set_security_context(
        task, run_as_user=RUN_AS, run_as_group=RUN_AS, run_as_non_root=True
    )
    kubernetes.empty_dir_mount(task, "scratch", SCRATCH, size_limit=SCRATCH_SIZE)
    if name not in ("check_inputs", "prepare_data"):
        # Not optional: without the Secret a pod would log into a store on its own disk,
        # lost when it ends. A run without it fails at its first MLflow task, at once.
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, MLFLOW_SECRET_ENV, optional=False)
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, MLFLOW_SECRET_OPTIONAL_ENV, optional=True)
    return task


def _graph(
    c: dict[str, Any], params: dict[str, Any], warm_start: bool, warm_start_model_uri: str
) -> None:
    """The tasks of both pipelines. ``params`` holds the pipeline's parameters (its
    ``locals()``); check_inputs takes those of the same names."""
    inputs = inspect.signature(components.check_inputs).parameters
    checked = _configure(
        c["check_inputs"](**{name: params[name] for name in inputs}), "check_inputs"
    )
    # Every later task reads the one config check_inputs resolved and checked.
    config_json = checked.output
    data = _configure(c["prepare_data"](config_json=config_json), "prepare_data", cache=True)
    tuned = _configure(
        c["tune"](
            dataset=data.outputs["dataset"],
            config_json=config_json,
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
        _publish_branch(c, data.outputs["dataset"], tuned, config_json, run_id)
    with dsl.Else(name="no-feasible-schedule"):
        _configure(
            c["no_feasible_schedule"](
                config_json=config_json,
                mlflow_run_id=run_id,
                tune_metrics=tuned.outputs["metrics"],
            ),
            "no_feasible_schedule",
        )


def _publish_branch(
    c: dict[str, Any], dataset: Any, tuned: Any, config_json: Any, run_id: Any
) -> None:
    """Train the final model, evaluate it, and register it behind the safety gate."""
    final = _configure(
        c["train_final"](
            dataset=dataset,
            schedule=tuned.outputs["schedule"],
            config_json=config_json,
            mlflow_run_id=run_id,
        ),
        "train_final",
    )
    evaluated = _configure(
        c["evaluate_safety"](
            dataset=dataset,
            model=final.outputs["model"],
            config_json=config_json,
            mlflow_run_id=run_id,
        ),
        "evaluate_safety",
    )
    # The safety gate and the champion/challenger comparison are decided inside,
    # and recorded with the reason on the model version and in the model card.
    _configure(
        c["register_model"](
            dataset=dataset,
            model=final.outputs["model"],
            report=evaluated.outputs["metrics"],
            config_json=config_json,
            mlflow_run_id=run_id,
        ),
        "register_model",
    )


def build_pipelines(base_image: str = DEFAULT_BASE_IMAGE) -> dict[str, Callable]:
    c = build_components(base_image)

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
        _graph(c, locals(), warm_start=False, warm_start_model_uri="")

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
        _graph(c, locals(), warm_start=True, warm_start_model_uri=champion_model_uri)

    # One Args text for both (KFP turns it into the inputs' descriptions).
    tuning_pipeline.__doc__ = retune_pipeline.__doc__ = PIPELINE_ARGS
    return {
        "tuning_pipeline": dsl.pipeline(
            name="shieldtune-tuning",
            description="Safety-shielded DQN hyperparameter tuning, cold start: check inputs -> "
            "data -> tune -> train final -> safety evaluation -> registry (champion alias only "
            "past the safety gate and the current champion).",
        )(tuning_pipeline),
        "retune_pipeline": dsl.pipeline(
            name="shieldtune-retune",
            description="Scheduled retuning: like shieldtune-tuning, but the controller "
            "warm-starts from the policy of the run behind the current champion model.",
        )(retune_pipeline),
    }


def compile_all(out_root: Path, base_image: str = DEFAULT_BASE_IMAGE) -> list[Path]:
    """Write ``pipelines/<name>.yaml`` and ``components/<name>/component.yaml`` in ``out_root``."""
    written = []
    for name, pipeline in build_pipelines(base_image).items():
        path = out_root / "pipelines" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(pipeline, str(path))
        path.write_text(integer_defaults(path.read_text()))
        written.append(path)
    for name, component in build_components(base_image).items():
        path = out_root / "components" / name / "component.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(component, str(path))
        written.append(path)
    readme = out_root / "components" / "README.md"
    funcs = {name: getattr(components, name) for name in COMPONENT_NAMES}
    readme.write_text(render_readme(funcs, NOT_RETRIED))
    written.append(readme)
    return written
