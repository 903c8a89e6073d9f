"""The pipeline's stages as plain functions over files.

Each Kubeflow component is a thin wrapper around one of these, so the stages
are tested without Kubeflow and run the same locally, in ``kfp.local`` and in
a cluster pod: prepare data -> tune -> train final -> evaluate safety ->
register. Artifacts are files (tensors saved weights-only); every stage logs
into the one MLflow parent run that ``tune`` opens.

Every stage receives the run's :class:`~shieldtune.job.Job`, resolved from
``config_json`` by :func:`pipeline_config` (the component bodies call it ``cfg``:
their source is embedded in the compiled YAML, which stays as it is).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from shieldtune.checkpoint import (
    atomic_save,
    register_kind,
    safe_load,
    save_model_checkpoint,
)
from shieldtune.config import TrackingConfig, apply_override
from shieldtune.errors import CheckpointError, ConfigError, DataError, ShieldtuneError
from shieldtune.job import Job, job_from_dict, load_checkpoint
from shieldtune.safety.suite import test_report
from shieldtune.tasks.batches import iterate, labels
from shieldtune.tasks.contract import InputDomain, Task, TaskData, TensorSplit
from shieldtune.tasks.preprocessing import PREPROCESSING_FILE, load_preprocessing
from shieldtune.tracking.run_info import describe_job
from shieldtune.tracking.tracker import (
    Tracker,
    download_policy,
    log_to_run,
    redact,
    set_run_tag,
)
from shieldtune.training.device import apply_threads
from shieldtune.training.step import StepRequest, StepRunner, TrainState

SPLITS_KIND = register_kind(
    "shieldtune.splits/v1", {"train": (dict,), "val": (dict,), "test": (dict,)}
)
#: In-memory splits up to this size travel as a KFP artifact; larger ones, and streamed
#: datasets, are passed by reference (each stage reloads them through the task).
INLINE_LIMIT_BYTES = 256 * 2**20
_SPLITS = ("train", "val", "test")
#: Where ``pipeline run --local`` asks the last stage to write the pipeline's outcome.
OUTCOME_FILE_ENV = "SHIELDTUNE_OUTCOME_FILE"
#: Where a component also appends its one-line error (the local runner repeats it at the end).
ERRORS_FILE_ENV = "SHIELDTUNE_ERRORS_FILE"
#: Pipeline parameters that set config keys (empty strings and zero counts: keep config_json's).
PARAMETER_KEYS = {
    "episodes": "tuner.episodes",
    "steps_per_episode": "env.steps_per_episode",
    "search_space_json": "env.search_space",
    "constraints_json": "safety.constraints",
    "num_envs": "tuner.num_envs",
    "executor": "tuner.executor",
}


class NoFeasibleScheduleError(ShieldtuneError):
    """Tuning spent its budget without one state certified safe under the spec."""


@contextmanager
def one_line_errors() -> Iterator[None]:
    """In a component: a user's error ends the task with one line, not a traceback."""
    try:
        yield
    except ShieldtuneError as exc:
        print(f"shieldtune: error: {exc}", file=sys.stderr, flush=True)
        target = os.environ.get(ERRORS_FILE_ENV)
        if target:
            with open(target, "a") as fh:
                fh.write(" ".join(str(exc).split()) + "\n")
        raise SystemExit(2) from None


def write_outcome(outcome: dict[str, Any]) -> str:
    """The pipeline's outcome as JSON; also into ``$SHIELDTUNE_OUTCOME_FILE`` when set (the
    local runner prints it at the end)."""
    text = json.dumps(outcome, sort_keys=True)
    target = os.environ.get(OUTCOME_FILE_ENV)
    if target:
        Path(target).write_text(text)
    return text


def pipeline_config(config_json: str, overrides: dict[str, Any], keep_zero: bool = True) -> Job:
    """The job a JSON config plus explicit pipeline parameters describe. Empty parameters (and,
    with ``keep_zero=False``, zeros: the pipelines' "as in config_json" for counts) are
    skipped, so every key of ``config_json`` reaches the tasks unless a parameter sets it."""
    try:
        raw = json.loads(config_json) if config_json.strip() else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config_json is not valid JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(raw, dict):
        raise ConfigError("config_json must be a JSON object of config sections")
    for key, value in overrides.items():
        if value in ("", None) or (not keep_zero and value == 0 and not isinstance(value, bool)):
            continue
        apply_override(raw, f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
    return job_from_dict(raw)


def task_overrides(entry_point: str, kwargs_json: str, data_root: str) -> dict[str, Any]:
    """The pipeline's task and data parameters as config overrides (empty ones are skipped)."""
    overrides: dict[str, Any] = {"task.entry_point": entry_point, "data.root": data_root}
    if kwargs_json.strip():
        try:
            kwargs = json.loads(kwargs_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"task_kwargs_json is not valid JSON: {exc.msg} at char {exc.pos}"
            ) from None
        if not isinstance(kwargs, dict):
            raise ConfigError("task_kwargs_json must be a JSON object of keyword arguments")
        overrides["task.kwargs"] = kwargs
    return overrides


def resolve_config(config_json: str, task: dict[str, str], counts: dict[str, Any]) -> Job:
    """The run's whole config from ``config_json`` and the pipeline parameters, checked as far
    as it can be before anything is retried: config keys, the task, and (cheaply) its data.

    ``task`` holds the ``task_entry_point``, ``task_kwargs_json`` and ``data_root``
    parameters; ``counts`` the others, by parameter name (see :data:`PARAMETER_KEYS`).
    """
    overrides = task_overrides(task["entry_point"], task["kwargs_json"], task["data_root"])
    overrides.update({PARAMETER_KEYS[name]: value for name, value in counts.items()})
    job = pipeline_config(config_json, overrides, keep_zero=False)
    job.load_data()
    return job


def report_no_feasible_schedule(job: Job, run_id: str, steps_run: int) -> None:
    """The outcome of a run that found nothing certified safe: tagged, written, and raised."""
    outcome = {
        "mlflow_run_id": run_id,
        "feasible": False,
        "steps_run": steps_run,
        "registered": None,
        "champion": False,
        "reason": "no state was certified safe under the spec; no model was trained or registered",
    }
    write_outcome(outcome)  # (tune already tagged the run's outcome)
    safety = job.config.safety
    spec = ", ".join(safety.constraints)
    raise NoFeasibleScheduleError(
        f"tuning ran {steps_run} steps and certified no state safe under [{spec}] at confidence "
        f"{safety.confidence:g}; no model was trained or registered"
        f"{f' (MLflow run {run_id})' if run_id else ''}. Loosen the spec, raise the budget "
        "(env.steps_per_episode) or safety.eval_samples_max"
    )


# --------------------------------------------------------------------------- data


def prepare_data(job: Job, out_dir: Path) -> dict[str, Any]:
    """Ask the task for its data; save the splits into ``out_dir`` when they are small tensors,
    else a reference (the task and data config), plus a manifest either way."""
    task, cfg = job.task, job.config
    data = job.load_data()
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = {name: getattr(data, name) for name in _SPLITS}
    in_memory = all(isinstance(s, TensorSplit) for s in splits.values())
    size = sum(s.x.nbytes + s.y.nbytes for s in splits.values()) if in_memory else None
    inline = in_memory and size <= INLINE_LIMIT_BYTES
    if inline:
        domain = data.input_domain
        atomic_save(
            {
                "kind": SPLITS_KIND,
                **{n: {"x": s.x, "y": s.y} for n, s in splits.items()},
                "input_domain": None
                if domain is None
                else {"low": domain.low, "high": domain.high},
            },
            out_dir / "splits.pt",
        )
        if data.transform is not None:  # registered with the model at the end
            text = json.dumps(data.transform.to_dict(), indent=2)
            (out_dir / PREPROCESSING_FILE).write_text(text)
    manifest = {
        "task": cfg.task.entry_point,
        "task_kwargs": cfg.task.kwargs,
        "source": data.source,
        "split_seed": cfg.data.split_seed,
        "storage": "inline" if inline else "reference",
        **{f"{name}_size": len(s) for name, s in splits.items()},
        **{
            f"{name}_class_counts": torch.bincount(labels(s), minlength=task.num_classes).tolist()
            for name, s in splits.items()
            if isinstance(s, TensorSplit)
        },
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def load_prepared(out_dir: Path, job: Job) -> TaskData:
    """The splits ``prepare_data`` wrote (or, for a reference, the task's data reloaded)."""
    cfg = job.config
    try:
        manifest = json.loads((Path(out_dir) / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise DataError(
            f"the prepared dataset in {str(out_dir)!r} has no readable manifest ({exc})"
        ) from None
    if manifest.get("task") != cfg.task.entry_point:
        raise ConfigError(
            f"the prepared dataset is for task {manifest.get('task')!r} but the config names "
            f"{cfg.task.entry_point!r}; run prepare_data with the same config"
        )
    if manifest.get("storage") == "reference":
        return job.load_data()
    obj = safe_load(Path(out_dir) / "splits.pt", SPLITS_KIND)
    domain = obj.get("input_domain")
    spec = Path(out_dir) / PREPROCESSING_FILE
    return TaskData(
        *(TensorSplit(obj[n]["x"], obj[n]["y"]) for n in _SPLITS),
        source=manifest["source"],
        input_domain=None if domain is None else InputDomain(domain["low"], domain["high"]),
        transform=load_preprocessing(json.loads(spec.read_text())) if spec.exists() else None,
    )


# --------------------------------------------------------------------------- tune


def find_kfp_resume_state(kfp_run_id: str, experiment: str) -> dict[str, Any] | None:
    """The controller state of an unfinished tuning run of this KFP run, if one exists."""
    from shieldtune.control.job_state import CONTROLLER_KIND, STATE_FILE
    from shieldtune.tracking.tracker import find_controller_state

    path = find_controller_state(experiment, kfp_run_id, STATE_FILE)
    return None if path is None else safe_load(path, CONTROLLER_KIND)


def require_cluster_tracking(tracking: TrackingConfig) -> None:
    """In a cluster pod, refuse to log into a store on the pod's own disk (lost with it)."""
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not tracking.enabled or not uri.startswith(("http://", "https://")):
        raise ConfigError(
            "a pipeline run in a cluster needs an MLflow server: set tracking.enabled=true and "
            "MLFLOW_TRACKING_URI=http(s)://... in the Secret shieldtune-mlflow (docs/cluster.md, "
            f"step 4); got {redact(uri) or 'nothing'}"
        )


def tune(
    job: Job, data: TaskData, warm_start: bool = False, warm_start_model_uri: str = ""
) -> dict[str, Any]:
    """Run the controller loop; the registry is left to the gated register stage.

    With ``warm_start`` the controller starts from the policy logged by the run that
    produced ``warm_start_model_uri`` (default: ``models:/<registered model>@champion``):
    the scheduled-retuning path. If no such model exists yet, it starts cold and says
    so in the summary.
    """
    from shieldtune.control.tuner import run_tuning
    from shieldtune.signals import interrupt_on_sigterm

    cfg = job.config
    apply_threads(cfg.training.threads)
    warm_note = "cold start"
    if warm_start:
        warm_start_model_uri = (
            warm_start_model_uri or f"models:/{job.registered_model_name}@champion"
        )
        policy = download_policy(warm_start_model_uri)
        if policy is not None:
            cfg.tuner.warm_start = str(policy)
            warm_note = f"warm start from {warm_start_model_uri}"
        else:
            warm_note = f"cold start: {warm_start_model_uri} does not exist yet"
    require_cluster_tracking(cfg.tracking)
    cfg.tracking.log_model = False
    cfg.tuner.test_report = False
    # A retried tune task continues the attempt that died, from the controller state that
    # attempt kept in MLflow (its pod's disk is gone).
    cfg.tuner.checkpoint_to_mlflow = cfg.tracking.enabled
    kfp_run_id = os.environ.get("SHIELDTUNE_KFP_RUN_ID", "")
    state = None
    if kfp_run_id and cfg.tracking.enabled:
        state = find_kfp_resume_state(kfp_run_id, cfg.tracking.experiment)
    if state is not None:
        job = job_from_dict(state["config"])
        warm_note += f"; resumed after step {state['job']['global_step']} of a failed attempt"
    with interrupt_on_sigterm():
        summary = run_tuning(job, data=data, resume=state).to_dict()
    summary["warm_start"] = warm_note
    if summary["mlflow_run_id"]:
        set_run_tag(summary["mlflow_run_id"], "shieldtune.warm_start", warm_note)
    return summary


# --------------------------------------------------------------------------- train final


def replay_schedule(runner: StepRunner, schedule: dict[str, Any]) -> TrainState:
    """Retrain a model from scratch with a recorded schedule (same seeds, same weights on CPU)."""
    segments = schedule["segments"]
    if not segments:
        raise CheckpointError("the schedule has no segments; nothing to train")
    first_hp = {k: v for k, v in segments[0].items() if k not in ("step", "samples", "seed")}
    state = runner.run(StepRequest(None, first_hp, 0, int(schedule["init_seed"]))).state
    for seg in segments:
        hp = {k: v for k, v in seg.items() if k not in ("step", "samples", "seed")}
        result = runner.run(StepRequest(state, hp, int(seg["samples"]), int(seg["seed"])))
        if result.diverged:
            raise CheckpointError(
                f"replaying segment {seg['step']} diverged; the schedule is unusable"
            )
        state = result.state
    return state


def train_final(
    job: Job, data: TaskData, schedule: dict[str, Any], model_path: Path
) -> dict[str, float]:
    """Train the final model with the best feasible schedule and save it as a checkpoint."""
    cfg = job.config
    apply_threads(cfg.training.threads)
    runner = job.steps.runner(data)
    state = replay_schedule(runner, schedule)
    model = runner.new_model(int(schedule["init_seed"]))
    model.load_state_dict(state.model)
    metrics = runner.evaluate(model, seed=cfg.tuner.seed)
    save_model_checkpoint(model_path, state.model, job.to_dict(), schedule, metrics)
    return metrics


# --------------------------------------------------------------------------- evaluate


def confusion_matrix(task: Task, model: torch.nn.Module, split: Dataset) -> list[list[int]]:
    device = torch.device("cpu")
    preds, ys = [], []
    with torch.no_grad():
        for xb, yb in iterate(split, device):
            preds.append(model(xb).argmax(1))
            ys.append(yb)
    pred, y = torch.cat(preds), torch.cat(ys)
    k = task.num_classes
    matrix = torch.zeros(k, k, dtype=torch.int64)
    matrix.index_put_((y, pred), torch.ones_like(pred), accumulate=True)
    return matrix.tolist()


def evaluate_safety(
    job: Job, data: TaskData, model_path: Path
) -> tuple[dict[str, float], list[list[int]], list[str]]:
    """The test report, the confusion matrix and the class labels of a trained model."""
    model, _, _ = load_checkpoint(model_path)
    task, cfg = job.task, job.config
    apply_threads(cfg.training.threads)
    report = test_report(
        task, model, data, cfg.safety, job.constraints, job.device(), cfg.tuner.seed
    )
    return report, confusion_matrix(task, model, data.test), task.labels()


# --------------------------------------------------------------------------- register


#: The tuning run's metrics behind the model card's counts, by card name.
_RUN_COUNTS = {
    "steps_run": "steps_run",
    "unsafe_segments": "unsafe_segments",
    "warmup_steps": "unsafe_warmup_segments",
    "violations": "violations",
    "diverged_steps": "diverged_steps",
}


def register(
    job: Job,
    data: TaskData,
    model_path: Path,
    report: dict[str, float],
    run_id: str,
) -> tuple[str, str]:
    """Register the model in the job's run, decide promotion, write the card; returns the
    pipeline's outcome (JSON) and the model card (markdown)."""
    from shieldtune.control.finish import publish_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "best_model.pt"
        shutil.copyfile(model_path, ckpt)
        tracker = Tracker(job.config.tracking, _version(), describe_job(job))
        tracker.attach(run_id)
        try:
            logged = tracker.parent_metrics()
            counts = {k: logged[m] for k, m in _RUN_COUNTS.items() if m in logged}
            info = publish_checkpoint(tracker, job, data, ckpt, report, counts)
        finally:
            tracker.finish()
    gate = "passed" if report.get("constraints_satisfied") else "failed"
    outcome = {
        "mlflow_run_id": run_id,
        "feasible": True,
        "safety_gate": gate,
        "test_metrics": {k: v for k, v in report.items() if not k.endswith(("_low", "_high"))},
        "registered": None if info is None else f"{info['name']} v{info['version']}",
        "champion": bool(info and info["promoted"]),
        "reason": "tracking is off: not registered" if info is None else info["reason"],
    }
    card = info["card"] if info else f"# Not registered\n\nSafety gate {gate}; tracking is off.\n"
    return write_outcome(outcome), card


def log_final_metrics(run_id: str, val_metrics: dict[str, float]) -> None:
    """Validation metrics of the retrained final model, as ``final_<metric>``."""
    log_to_run(run_id, {f"final_{k}": float(v) for k, v in val_metrics.items()})


def log_test_report(run_id: str, report: dict[str, float]) -> None:
    from shieldtune.control.finish import with_test_prefix

    log_to_run(run_id, with_test_prefix(report))


def _version() -> str:
    from shieldtune import __version__

    return __version__
