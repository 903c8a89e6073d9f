"""MLflow tracking: one parent run per tuning job, one child run per episode.

Honours ``MLFLOW_TRACKING_URI``; with none set it uses a sqlite store in the
working folder (``./mlflow.db``, artifacts in ``./mlartifacts``). Per-step
metrics are queued asynchronously (one batch per step) and flushed at the end,
so tracking stays a small share of a step's wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from shieldtune.config import Config, flatten

CHAMPION_ALIAS = "champion"
_BUFFERING_ENV = "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit() -> str | None:
    """The source tree's commit, when shieldtune runs from a git checkout or the image sets it."""
    if os.environ.get("SHIELDTUNE_GIT_COMMIT"):
        return os.environ["SHIELDTUNE_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def ui_hint(uri: str) -> str:
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000)"
    return f"open {uri} in a browser"


class Tracker:
    """Thin wrapper that knows the run tree; every call is a no-op when disabled."""

    def __init__(self, cfg: Config, version: str) -> None:
        self.enabled = cfg.tracking.enabled
        self.cfg = cfg
        self.version = version
        self.uri = default_tracking_uri()
        self.parent_id: str | None = None
        self._open_episodes: set[str] = set()
        self.experiment_id: str | None = None
        self._previous_uri: str | None = None
        self._previous_buffering: str | None = None
        self.client: MlflowClient | None = None

    def _connect(self) -> None:
        # mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI; finish() restores it so a
        # later job in the same process (from another folder) does not inherit this store.
        self._previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
        # Without a buffering interval MLflow's async worker polls its queue with a 1 s timeout,
        # so every end_run/flush waits up to 1 s for it to notice; with one it stops at once.
        self._previous_buffering = os.environ.get(_BUFFERING_ENV)
        os.environ.setdefault(_BUFFERING_ENV, "1")
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)

    def attach(self, run_id: str) -> None:
        """Continue an existing parent run (a later pipeline stage logging into the job's run)."""
        if not self.enabled:
            return
        self._connect()
        run = mlflow.start_run(run_id=run_id)
        self.parent_id = run.info.run_id
        self.experiment_id = run.info.experiment_id

    def start(self) -> None:
        if not self.enabled:
            return
        self._connect()
        assert self.client is not None
        exp = self.client.get_experiment_by_name(self.cfg.tracking.experiment)
        if exp is None:
            location = (
                (Path.cwd() / "mlartifacts").as_uri() if self.uri.startswith("sqlite:") else None
            )
            exp_id = self.client.create_experiment(
                self.cfg.tracking.experiment, artifact_location=location
            )
        else:
            exp_id = exp.experiment_id
        self.experiment_id = exp_id
        tags = {"seed": str(self.cfg.tuner.seed), "shieldtune.version": self.version}
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        run = mlflow.start_run(experiment_id=exp_id, run_name=self.cfg.tracking.run_name, tags=tags)
        self.parent_id = run.info.run_id
        mlflow.log_params(flatten(self.cfg))

    def start_episode(self, episode: int) -> str | None:
        """A child run for one episode; returns its id (several may be open at once)."""
        if not self.enabled:
            return None
        assert self.client is not None and self.parent_id is not None
        run = self.client.create_run(
            str(self.experiment_id),
            run_name=f"episode-{episode:03d}",
            tags={"episode": str(episode), "mlflow.parentRunId": self.parent_id},
        )
        self._open_episodes.add(run.info.run_id)
        return run.info.run_id

    def end_episode(self, run_id: str | None, metrics: dict[str, float], episode: int) -> None:
        if not self.enabled or run_id is None:
            return
        self._queue(run_id, metrics, None)
        self.log_parent(metrics, step=episode)
        self.client.set_terminated(run_id, "FINISHED")
        self._open_episodes.discard(run_id)

    def log_step(self, run_id: str | None, metrics: dict[str, float], step: int) -> None:
        """One asynchronous batch per environment step in the episode's run."""
        if self.enabled and run_id is not None:
            self._queue(run_id, metrics, step)

    def log_parent(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.enabled:
            self._queue(self.parent_id, metrics, step)

    def _queue(self, run_id: str | None, metrics: dict[str, float], step: int | None) -> None:
        """Enqueue one batch via the client (the fluent API looks the run up on every call)."""
        assert self.client is not None and run_id is not None
        batch = [_metric(k, v, step or 0) for k, v in metrics.items()]
        self.client.log_batch(run_id, metrics=batch, synchronous=False)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            mlflow.log_artifact(str(path), artifact_path=artifact_path, run_id=self.parent_id)

    def log_model(
        self,
        model: Any,
        checkpoint: Path,
        example: Any,
        feasible: bool,
        test_metrics: dict[str, float],
    ) -> dict[str, Any] | None:
        """Log the model with a signature, register it, alias it ``champion`` only if feasible."""
        if not (self.enabled and self.cfg.tracking.log_model):
            return None
        from mlflow.models import infer_signature

        with _torch_no_grad():
            output = model(example).numpy()
        signature = infer_signature(example.numpy(), output)
        name = self.cfg.tracking.registered_model_name
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example.numpy(),
            registered_model_name=name,
            extra_files=[str(checkpoint)],
            serialization_format="pt2",
            pip_requirements=[f"shieldtune=={self.version}"],
        )
        version = str(info.registered_model_version)
        assert self.client is not None
        self.client.set_model_version_tag(
            name, version, "safety_gate", "passed" if feasible else "failed"
        )
        self.client.set_model_version_tag(name, version, "test_metrics", json.dumps(test_metrics))
        self.client.set_model_version_tag(name, version, "source_run_id", str(self.parent_id))
        if feasible:
            self.client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        return {"name": name, "version": version, "alias": CHAMPION_ALIAS if feasible else None}

    def finish(self, status: str = "FINISHED") -> None:
        if not self.enabled:
            return
        try:
            mlflow.flush_async_logging()
            for run_id in list(self._open_episodes):  # episodes cut short by an error
                self.client.set_terminated(run_id, status)
            self._open_episodes.clear()
            while mlflow.active_run() is not None:
                mlflow.end_run(status=status)
        finally:
            if self._previous_uri is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = self._previous_uri
            mlflow.set_tracking_uri(self._previous_uri)
            if self._previous_buffering is None:
                os.environ.pop(_BUFFERING_ENV, None)
            else:
                os.environ[_BUFFERING_ENV] = self._previous_buffering


def _torch_no_grad():
    import torch

    return torch.no_grad()


def log_to_run(run_id: str, metrics: dict[str, float]) -> None:
    """Log metrics into an existing run (used by pipeline stages after ``tune``)."""
    MlflowClient(default_tracking_uri()).log_batch(
        run_id, metrics=[_metric(k, v) for k, v in metrics.items()]
    )


def set_run_tag(run_id: str, key: str, value: str) -> None:
    MlflowClient(default_tracking_uri()).set_tag(run_id, key, value)


def _metric(key: str, value: float, step: int = 0):
    import time

    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), step)


def download_policy(model_uri: str) -> Path | None:
    """The ``policy/agent.pt`` logged by the run behind a registered model, or None if absent.

    ``model_uri`` is ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
    """
    from mlflow.exceptions import MlflowException

    client = MlflowClient(default_tracking_uri())
    rest = model_uri.removeprefix("models:/")
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = rest.rsplit("/", 1)
            version = client.get_model_version(name, number)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower():
            return None
        raise
    run_id = version.tags.get("source_run_id") or version.run_id
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="policy/agent.pt", tracking_uri=default_tracking_uri()
    )
    return Path(local)
