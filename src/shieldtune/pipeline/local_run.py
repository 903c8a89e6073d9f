"""Run a whole pipeline on this machine through ``kfp.local`` (no cluster, no Docker).

``SubprocessRunner(use_venv=False)`` runs each component as a subprocess of
this Python environment, with real KFP artifacts and ``dsl.If`` branches. The
MLflow store is the embedded default (``./mlflow.db``) unless
``MLFLOW_TRACKING_URI`` is set; it is pinned to an absolute URI first so every
component subprocess logs into the same store.
"""

import os
import re
from pathlib import Path
from typing import Any

from kfp import local

from shieldtune.pipeline.pipelines import build_pipelines
from shieldtune.tracking.tracker import default_tracking_uri


def failure_message(failure: str, errors: list[str]) -> str:
    """The runner's closing error for kfp.local's ``failure`` ("Pipeline 'x' finished with
    status FAILURE. Inner task failed: 'tune'."): the task that failed and the one-line
    error it printed (``errors``, in order), or that it failed unexpectedly."""
    from shieldtune.pipeline.pipelines import NOT_RETRIED

    found = re.search(r"[Ii]nner task failed: '([^']+)'", failure)
    task = found.group(1) if found else None
    what = f"task {task!r}" if task else "the pipeline"
    if errors:
        retried = task is None or task.replace("-", "_") not in NOT_RETRIED
        again = "after its retries" if retried else "not retried: a retry would repeat it"
        return f"{what} failed: {errors[-1]} ({again}; fix that and run again)"
    return (
        f"{what} failed unexpectedly (retried first where the task allows it); its traceback "
        "is above"
    )


def run_local(pipeline: str, params: dict[str, Any], workdir: Path) -> Any:
    """Execute ``pipeline`` (``tuning_pipeline`` or ``retune_pipeline``) with ``params``."""
    pipelines = build_pipelines()
    if pipeline not in pipelines:
        from shieldtune.errors import ConfigError

        raise ConfigError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(pipelines)}")
    os.environ["MLFLOW_TRACKING_URI"] = default_tracking_uri()
    workdir.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(workdir / "local_outputs"),
        raise_on_error=True,
    )
    return pipelines[pipeline](**params)
