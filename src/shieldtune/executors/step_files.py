"""Moving one environment step between the controller and a worker pod.

A step that runs elsewhere crosses the boundary as two files, ``request.pt``
(model + optimizer state, hyperparameters, budget, seed and the job's step spec: the
task, data, training and safety sections, :class:`~shieldtune.job.StepSpec`)
and ``result.pt`` (new state, metrics, timings). Both are written atomically
and read with ``torch.load(weights_only=True)``, so a tampered file cannot run
code. Where the files live is a :class:`StepStore`:

* ``dir:/PATH``: a directory on a volume both sides mount (a PVC on a cluster);
* ``mlflow:RUN_ID``: artifacts ``steps/<step-id>/`` of the tuning job's MLflow run,
  so no shared volume is needed; the pod reads MLflow credentials from the
  ``shieldtune-mlflow`` Secret.

Nothing travels through the pod log.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from shieldtune.checkpoint import atomic_save, register_kind, safe_load
from shieldtune.errors import CheckpointError, ConfigError, StepFailedError, first_line
from shieldtune.job import StepSpec
from shieldtune.training.step import StepRequest, StepResult, TrainState

REQUEST_KIND = register_kind(
    "shieldtune.step-request/v2",
    {
        "step": (dict,),
        "model": (dict, type(None)),
        "optimizer": (dict, type(None)),
        "hyperparameters": (dict,),
        "budget_samples": (int,),
        "seed": (int,),
        "certify_above": (float,),
    },
)
RESULT_KIND = register_kind(
    "shieldtune.step-result/v1",
    {
        "model": (dict,),
        "optimizer": (dict,),
        "metrics": (dict,),
        "diverged": (bool,),
        "samples": (int,),
        "train_seconds": (float, int),
        "eval_seconds": (float, int),
    },
)
REQUEST_FILE = "request.pt"
RESULT_FILE = "result.pt"


def request_payload(request: StepRequest, steps: StepSpec) -> dict[str, Any]:
    state = request.state
    return {
        "kind": REQUEST_KIND,
        "step": steps.to_dict(),
        "model": None if state is None else state.model,
        "optimizer": None if state is None else state.optimizer,
        "hyperparameters": dict(request.hyperparameters),
        "budget_samples": int(request.budget_samples),
        "seed": int(request.seed),
        "certify_above": float(request.certify_above),
    }


def request_from_payload(obj: dict[str, Any]) -> tuple[StepRequest, StepSpec]:
    """The request and the step spec it carries (a one-line error when either is malformed)."""
    if not 0 <= obj["seed"] < 2**31 or obj["budget_samples"] < 0:
        raise CheckpointError(
            f"step request has seed {obj['seed']} / budget {obj['budget_samples']}; the seed "
            "must be in [0, 2**31) and the budget >= 0"
        )
    state = None if obj["model"] is None else TrainState(obj["model"], obj["optimizer"] or {})
    request = StepRequest(
        state,
        dict(obj["hyperparameters"]),
        int(obj["budget_samples"]),
        int(obj["seed"]),
        float(obj["certify_above"]),
    )
    return request, StepSpec.from_dict(obj["step"])


def result_payload(result: StepResult) -> dict[str, Any]:
    return {
        "kind": RESULT_KIND,
        "model": result.state.model,
        "optimizer": result.state.optimizer,
        "metrics": dict(result.metrics),
        "diverged": bool(result.diverged),
        "samples": int(result.samples),
        "train_seconds": float(result.train_seconds),
        "eval_seconds": float(result.eval_seconds),
    }


def result_from_payload(obj: dict[str, Any], attempts: int = 1) -> StepResult:
    return StepResult(
        TrainState(obj["model"], obj["optimizer"]),
        {k: float(v) for k, v in obj["metrics"].items()},
        bool(obj["diverged"]),
        int(obj["samples"]),
        float(obj["train_seconds"]),
        float(obj["eval_seconds"]),
        attempts,
    )


class StepStore(Protocol):
    #: How a worker finds this store again: ``dir:/PATH`` or ``mlflow:RUN_ID``.
    uri: str

    def put(self, step_id: str, name: str, payload: dict[str, Any]) -> None: ...

    def get(self, step_id: str, name: str, kind: str) -> dict[str, Any]: ...

    def delete(self, step_id: str) -> None: ...


class DirStepStore:
    """Step files under ``root/<step-id>/`` on a shared volume."""

    def __init__(self, root: str | Path, uri_path: str | None = None) -> None:
        self.root = Path(root)
        #: The path workers see (a pod may mount the volume elsewhere than the controller).
        self.uri = f"dir:{uri_path or self.root}"

    def put(self, step_id: str, name: str, payload: dict[str, Any]) -> None:
        atomic_save(payload, self.root / step_id / name)

    def get(self, step_id: str, name: str, kind: str) -> dict[str, Any]:
        return safe_load(self.root / step_id / name, kind)

    def delete(self, step_id: str) -> None:
        shutil.rmtree(self.root / step_id, ignore_errors=True)


class MlflowStepStore:
    """Step files as artifacts ``steps/<step-id>/`` of one MLflow run.

    MLflow cannot delete single artifacts, so ``delete`` keeps them: they are the
    audit trail of what each step trained from and produced.
    """

    def __init__(self, run_id: str, tracking_uri: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        from shieldtune.tracking.tracker import default_tracking_uri

        self.run_id = run_id
        self.uri = f"mlflow:{run_id}"
        self._tracking_uri = tracking_uri or default_tracking_uri()
        self._client = MlflowClient(self._tracking_uri)

    def put(self, step_id: str, name: str, payload: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="shieldtune-step-") as tmp:
            path = atomic_save(payload, Path(tmp) / name)
            self._client.log_artifact(self.run_id, str(path), artifact_path=f"steps/{step_id}")

    def get(self, step_id: str, name: str, kind: str) -> dict[str, Any]:
        import mlflow

        with tempfile.TemporaryDirectory(prefix="shieldtune-step-") as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(
                    run_id=self.run_id,
                    artifact_path=f"steps/{step_id}/{name}",
                    dst_path=tmp,
                    tracking_uri=self._tracking_uri,
                )
            except Exception as exc:  # MlflowException, OSError, requests errors
                raise CheckpointError(
                    f"step file steps/{step_id}/{name} of MLflow run {self.run_id} could not be "
                    f"read ({first_line(exc, 160)})"
                ) from None
            return safe_load(local, kind)

    def delete(self, step_id: str) -> None:
        """Kept on purpose (see the class docstring)."""


def open_store(uri: str) -> StepStore:
    """The store a ``--store`` URI names (``dir:/PATH`` or ``mlflow:RUN_ID``)."""
    scheme, _, rest = uri.partition(":")
    if scheme == "dir" and rest:
        return DirStepStore(rest)
    if scheme == "mlflow" and rest:
        return MlflowStepStore(rest)
    raise ConfigError(f"--store {uri!r} must be dir:/PATH or mlflow:RUN_ID")


def run_stored_step(store: StepStore, step_id: str, threads: int | None = None) -> StepResult:
    """What ``shieldtune step`` does in a worker pod: read the request, train, write the result."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    request, steps = request_from_payload(store.get(step_id, REQUEST_FILE, REQUEST_KIND))
    result = steps.runner().run(request)
    store.put(step_id, RESULT_FILE, result_payload(result))
    return result


def read_result(store: StepStore, step_id: str, attempts: int) -> StepResult:
    """The result a worker wrote; a finished worker without one is a failed step."""
    try:
        payload = store.get(step_id, RESULT_FILE, RESULT_KIND)
    except CheckpointError as exc:
        raise StepFailedError(
            f"step {step_id} finished but its result is unusable: {exc}"
        ) from None
    return result_from_payload(payload, attempts)
