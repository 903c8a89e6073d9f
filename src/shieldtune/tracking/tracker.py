"""MLflow tracking: one parent run per tuning job, one child run per episode.

Honours ``MLFLOW_TRACKING_URI``; with none set it uses a sqlite store in the
working folder (``./mlflow.db``, artifacts in ``./mlartifacts``). Per-step
metrics are queued asynchronously (one batch per step) and flushed at the end,
so tracking stays a small share of a step's wall time.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from shieldtune.config import TrackingConfig
from shieldtune.errors import TrackingError, first_line, is_existing_file
from shieldtune.tasks.contract import TaskData, TensorSplit
from shieldtune.tracking.audit import COLUMNS as AUDIT_COLUMNS
from shieldtune.tracking.audit import audit_html, audit_rows
from shieldtune.tracking.model_card import CardFacts, render_card
from shieldtune.tracking.registry import (
    CHAMPION_ALIAS,
    Promotion,
    champion_version,
    decide_promotion,
    model_version,
    version_of_run,
)
from shieldtune.tracking.run_info import NOTE_TAG, OUTCOME_HEADING, RunDescription

T = TypeVar("T")

KFP_RUN_TAG = "shieldtune.kfp_run_id"
#: A population member's copies of other members, oldest first (``step:member-NN:reason``).
LINEAGE_TAG = "shieldtune.lineage"
CONTROLLER_ARTIFACTS = "controller"
_BUFFERING_ENV = "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"
_SUPPRESS_URL_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
_TUNED_ENV = (
    _BUFFERING_ENV,
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    _SUPPRESS_URL_ENV,
)


def redact(uri: str) -> str:
    """``uri`` with the password of its user-info replaced: ``http://user:***@host``."""
    return re.sub(r"(?<=://)([^/@:\s]*):[^/@\s]*@", r"\1:***@", uri)


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
    return f"open {redact(uri)} in a browser"


class Tracker:
    """Thin wrapper that knows the run tree; every call is a no-op when disabled."""

    def __init__(self, tracking: TrackingConfig, version: str, run: RunDescription) -> None:
        """``tracking``: its config section; ``run``: what the job's parent run shows (name,
        tags, params) and the registered model it publishes to."""
        self.enabled = tracking.enabled
        self.settings = tracking
        self.run = run
        self.version = version
        self.uri = default_tracking_uri()
        self.parent_id: str | None = None
        #: The parent run's name; episode runs are named after it.
        self.run_name = ""
        self._open_episodes: set[str] = set()
        self._held: list[dict[str, Any]] | None = None
        #: A crash-resumed job: look for what the crashed process already logged.
        self.resumed = False
        self.experiment_id: str | None = None
        #: Environment variables this tracker set, with the values to restore in finish().
        self._saved_env: dict[str, str | None] = {}
        self.client: MlflowClient | None = None
        #: The command that resumes this job (its run folder's), for error messages.
        self.resume_command: str | None = None

    def _connect(self) -> None:
        # mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI; finish() restores it so a
        # later job in the same process (from another folder) does not inherit this store.
        if not self._saved_env:  # (a retried connect must not save what the first one set)
            self._saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", *_TUNED_ENV)}
        # Without a buffering interval MLflow's async worker polls its queue with a 1 s timeout,
        # so every end_run/flush waits up to 1 s for it to notice; with one it stops at once.
        os.environ.setdefault(_BUFFERING_ENV, "1")
        if redact(self.uri) != self.uri:
            # MLflow prints "View run ... at: <tracking URI>/#/..." when a run ends, with the
            # URI's password in it.
            os.environ[_SUPPRESS_URL_ENV] = "true"
        # MLflow's HTTP client retries with exponential backoff: bounded by the config, so an
        # unreachable server ends the job with a clear error instead of hanging.
        t = self.settings
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(t.http_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(t.http_backoff_factor))
        mlflow.set_tracking_uri(self.uri)
        with store_lock(self.uri):  # (a new store's tables are made here)
            self.client = MlflowClient(self.uri)

    def attach(self, run_id: str, resumed: bool = False, store: str | None = None) -> None:
        """Continue an existing parent run: a later pipeline stage logging into the job's run,
        or (``resumed``) a tuning job restarting after a crash. ``store``: the local store the
        job started in (used when no MLFLOW_TRACKING_URI says otherwise, so a resume from
        another folder finds it). A store or run that is gone is one line saying how to
        finish the job, never a new empty store."""
        if not self.enabled:
            return
        if resumed:
            if store and store.startswith("sqlite:///") and "MLFLOW_TRACKING_URI" not in os.environ:
                self.uri = store
            self._check_resumable(run_id)
        self._connect()
        if resumed:
            self._check_run(run_id)
        run = self._call(lambda: mlflow.start_run(run_id=run_id))
        self.parent_id = run.info.run_id
        self.run_name = run.info.run_name or self.parent_id
        self.experiment_id = run.info.experiment_id
        self.resumed = resumed

    def _cannot_continue(self, run_id: str, problem: str) -> TrackingError:
        return TrackingError(
            f"run {run_id} cannot be continued in MLflow: {problem}; point MLFLOW_TRACKING_URI "
            f"at the store that holds it, or finish the job without MLflow: "
            f"{self._resume_command(run_id)} --set tracking.enabled=false"
        )

    def _check_resumable(self, run_id: str) -> None:
        """A local store that does not exist: refused before it is opened (and created)."""
        path = self.uri.removeprefix("sqlite:///").split("?", 1)[0]
        if self.uri.startswith("sqlite:///") and not is_existing_file(path):
            raise self._cannot_continue(
                run_id, f"its MLflow store {path} does not exist (deleted, or another folder)"
            )

    def _check_run(self, run_id: str) -> None:
        """The job's run must still be in the store, and not deleted."""
        assert self.client is not None
        client = self.client

        def get_run() -> Any:
            try:
                return client.get_run(run_id)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise  # a server failure: one line from _call

        run = self._call(get_run)
        if run is None:
            raise self._cannot_continue(
                run_id, f"the run is not in {redact(self.uri)} (deleted for good?)"
            )
        if run.info.lifecycle_stage == "deleted":
            raise self._cannot_continue(
                run_id,
                f"the run is deleted in {redact(self.uri)} (restore it with mlflow runs restore "
                f"--run-id {run_id})",
            )

    def _resume_command(self, run_id: str | None = None) -> str:
        """How to resume this job (the run folder's own command, when known)."""
        if self.resume_command:
            return self.resume_command
        return f"shieldtune tune --resume {run_id or self.parent_id or 'RUN_ID'}"

    def start(self) -> None:
        """Open the job's parent run (one clear error if the tracking server is unreachable)."""
        if not self.enabled:
            return
        for attempt in range(STORE_INIT_ATTEMPTS):
            try:
                self._connect()
                _retrying(self._open_parent, self.uri, START_HINT)
                return
            except Exception as exc:
                # Two jobs creating one new sqlite store at once: the loser's schema setup
                # fails with "table ... already exists"; the store is fine a moment later.
                if "already exists" not in str(exc) or attempt == STORE_INIT_ATTEMPTS - 1:
                    if isinstance(exc, TrackingError):
                        raise
                    raise TrackingError(
                        f"MLflow at {redact(self.uri)} cannot be opened "
                        f"({type(exc).__name__}: {redact(first_line(exc))}); {START_HINT}"
                    ) from None
                time.sleep(0.5 * (attempt + 1))

    def _parent(self) -> tuple[MlflowClient, str]:
        """The client and the parent run's id (only once the run is open)."""
        assert self.client is not None and self.parent_id is not None
        return self.client, self.parent_id

    def _call(self, call: Callable[[], T]) -> T:
        """``call()`` with :func:`_retrying`'s one-line error, naming the run to resume."""
        hint = RESUME_HINT.replace("shieldtune tune --resume RUN_ID", self._resume_command())
        return _retrying(call, self.uri, hint)

    def _open_parent(self) -> None:
        assert self.client is not None
        exp = self.client.get_experiment_by_name(self.settings.experiment)
        if exp is None:
            location = (
                (Path.cwd() / "mlartifacts").as_uri() if self.uri.startswith("sqlite:") else None
            )
            exp_id = self.client.create_experiment(
                self.settings.experiment, artifact_location=location
            )
        else:
            exp_id = exp.experiment_id
        self.experiment_id = exp_id
        tags = {
            "seed": str(self.run.seed),
            "shieldtune.version": self.version,
            **self.run.tags,
        }
        if os.environ.get("SHIELDTUNE_KFP_RUN_ID"):  # a retried KFP task finds its run by it
            tags[KFP_RUN_TAG] = os.environ["SHIELDTUNE_KFP_RUN_ID"]
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        run = mlflow.start_run(
            experiment_id=exp_id,
            run_name=self.settings.run_name or self.run.name,
            tags=tags,
        )
        self.parent_id = run.info.run_id
        self.run_name = run.info.run_name or self.parent_id
        mlflow.log_params(self.run.params)

    def log_audit(self, audit: list[dict[str, Any]]) -> None:
        """The shield audit as a table and an HTML page (see :mod:`~.audit`)."""
        if not self.enabled or not audit:
            return
        client, run_id = self._parent()
        rows = audit_rows(audit)
        columns = {c: [r[c] for r in rows] for c in AUDIT_COLUMNS}
        self._call(partial(client.log_table, run_id, columns, "shield_audit_table.json"))
        self._call(partial(client.log_text, run_id, audit_html(rows), "shield_audit.html"))

    def log_datasets(self, data: TaskData, task_name: str) -> None:
        """The splits as the run's MLflow dataset inputs (name, digest, schema, size; the
        data itself stays where it is): a reviewer sees on the run page what it trained on."""
        if not self.enabled:
            return
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.numpy_dataset import from_numpy

        source = CodeDatasetSource({"mlflow.source.name": data.source})
        for split, context in (("train", "training"), ("val", "validation"), ("test", "testing")):
            part, name = getattr(data, split), f"{task_name}-{split}"
            if isinstance(part, TensorSplit):
                dataset = from_numpy(
                    part.x.numpy(), source=source, targets=part.y.numpy(), name=name
                )
            else:  # streamed: described, not read
                dataset = MetaDataset(source, name=name, digest=f"{len(part)}-samples")
            self._call(
                partial(
                    mlflow.log_input, dataset, context=context, tags={"samples": str(len(part))}
                )
            )

    def start_episode(self, episode: int, member: int | None = None) -> str | None:
        """A child run for one episode, or for one ``member`` of a population; returns its id
        (several may be open at once)."""
        if not self.enabled:
            return None
        assert self.client is not None and self.parent_id is not None
        client, parent = self.client, self.parent_id
        tags = {"episode": str(episode), "mlflow.parentRunId": parent}
        name = f"{self.run_name}/episode-{episode:03d}"
        if member is not None:
            tags["member"], name = str(member), f"{self.run_name}/member-{member:02d}"
        if self.resumed:  # the crashed process may have opened this run already
            found = self._call(
                lambda: client.search_runs(
                    [str(self.experiment_id)],
                    f"tags.mlflow.parentRunId = '{parent}' and tags.episode = '{episode}'"
                    + (f" and tags.member = '{member}'" if member is not None else ""),
                )
            )
            if found:
                self._open_episodes.add(found[0].info.run_id)
                return found[0].info.run_id
        run = self._call(
            lambda: client.create_run(str(self.experiment_id), run_name=name, tags=tags)
        )
        self._open_episodes.add(run.info.run_id)
        return run.info.run_id

    def tag_lineage(self, run_id: str | None, step: int, donor: int, reason: str) -> None:
        """A population member's copy of another: appended to its ``shieldtune.lineage`` tag
        (``step:donor:reason`` entries) and counted as the metric ``exploited``."""
        if not self.enabled or run_id is None:
            return
        client = self.client
        assert client is not None
        run = self._call(partial(client.get_run, run_id))
        lineage = run.data.tags.get(LINEAGE_TAG, "")
        entry = f"{step}:member-{donor:02d}:{reason}"
        self._call(partial(client.set_tag, run_id, LINEAGE_TAG, f"{lineage} {entry}".strip()))
        self._queue(run_id, {"exploited_from": float(donor)}, step)

    def end_episode(self, run_id: str | None, metrics: dict[str, float], episode: int) -> None:
        if not self.enabled or run_id is None:
            return
        self._queue(run_id, metrics, None)
        self.log_parent(metrics, step=episode)
        client = self.client
        self._call(lambda: client.set_terminated(run_id, "FINISHED"))
        self._open_episodes.discard(run_id)

    def log_step(self, run_id: str | None, metrics: dict[str, float], step: int) -> None:
        """One asynchronous batch per environment step in the episode's run."""
        if self.enabled and run_id is not None:
            self._queue(run_id, metrics, step)

    def log_parent(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.enabled:
            self._queue(self.parent_id, metrics, step)

    def _queue(self, run_id: str | None, metrics: dict[str, float], step: int | None) -> None:
        """Enqueue one batch via the client (the fluent API looks the run up on every call),
        or hold it for :meth:`send` while the tuner is inside a checkpointed round."""
        assert self.client is not None and run_id is not None
        batch_dict = {"run_id": run_id, "metrics": dict(metrics), "step": step or 0}
        if self._held is not None:
            self._held.append(batch_dict)
            return
        if self.resumed:  # the crashed process may have logged these already
            self.send([batch_dict], dedupe=True)
            return
        batch = [_metric(k, v, step or 0) for k, v in metrics.items()]
        self.client.log_batch(run_id, metrics=batch, synchronous=False)

    def hold(self) -> None:
        """Hold metric batches from now on; :meth:`take_held` hands them over."""
        self._held = [] if self.enabled else None

    def take_held(self) -> list[dict[str, Any]]:
        held, self._held = self._held or [], None
        return held

    def send(self, batches: list[dict[str, Any]], dedupe: bool = False) -> None:
        """Log held batches synchronously (with retries), after the checkpoint that holds them
        was written. ``dedupe``: skip metrics already in the run at that step (batches a
        crashed process may have sent before it died)."""
        if not self.enabled or not batches:
            return
        client = self.client
        assert client is not None
        for b in batches:
            run_id, step, metrics = b["run_id"], b["step"], b["metrics"]
            if dedupe:
                metrics = {k: v for k, v in metrics.items() if not self._logged_at(run_id, k, step)}
            if metrics:
                batch = [_metric(k, v, step) for k, v in metrics.items()]
                self._call(partial(client.log_batch, run_id, metrics=batch))

    def _logged_at(self, run_id: str, key: str, step: int) -> bool:
        assert self.client is not None
        history = self._call(partial(self.client.get_metric_history, run_id, key))
        return any(m.step == step for m in history)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._call(
                partial(
                    mlflow.log_artifact,
                    str(path),
                    artifact_path=artifact_path,
                    run_id=self.parent_id,
                )
            )

    def publish(
        self,
        model: Any,
        checkpoint: Path,
        example: Any,
        report: dict[str, float],
        evaluate_champion: Callable[[Path], dict[str, float]],
        card: dict[str, Any],
        extra_files: Sequence[Path] = (),
    ) -> dict[str, Any] | None:
        """Register the model (once per run), decide promotion against the current champion,
        and write the model card (run artifact and version description); see
        :mod:`shieldtune.tracking.registry`. ``card`` holds :class:`CardFacts` fields but
        the version, the run and the decision; ``extra_files`` ship in the logged model's
        folder next to ``checkpoint`` (its input preprocessing)."""
        if not (self.enabled and self.settings.log_model):
            return None
        client, run_id = self._parent()
        name = self.run.registered_model_name
        # A retried task or a resumed job finds the version its run registered before.
        version = self._call(partial(version_of_run, client, name, run_id))
        if version is None:
            version = self._log_and_register(model, [checkpoint, *extra_files], example)
        # A server failure while fetching the champion is one line naming the run (a retried
        # task decides again), never a promotion without the comparison.
        promotion = self._promote(client, name, version, report, evaluate_champion)
        text = render_card(
            CardFacts(model_name=name, version=version, run_id=run_id, promotion=promotion, **card)
        )
        tags = {
            "safety_gate": "passed" if report["constraints_satisfied"] else "failed",
            "test_metrics": json.dumps(report),
            "source_run_id": run_id,
            "promoted": str(promotion.promoted).lower(),
            "promotion_reason": promotion.reason,
        }
        for key, value in tags.items():
            self._call(partial(client.set_model_version_tag, name, version, key, value))
        self._call(partial(client.update_model_version, name, version, description=text))
        self._call(partial(client.log_text, run_id, text, "model_card.md"))
        verdict = "promoted to @champion" if promotion.promoted else "not promoted"
        self.set_outcome(f"{name} v{version} {verdict}", promotion.reason)
        return {
            "name": name,
            "version": version,
            "alias": CHAMPION_ALIAS if promotion.promoted else None,
            **promotion.to_dict(),
            "card": text,
        }

    def _promote(
        self,
        client: MlflowClient,
        name: str,
        version: str,
        report: dict[str, float],
        evaluate_champion: Callable[[Path], dict[str, float]],
    ) -> Promotion:
        """Decide against the current champion and move ``@champion`` compare-and-set: two
        challengers finishing together must not both win (the alias ending on the worse one).
        On a local store the whole decision holds the store's lock; on any store the alias
        is re-read just before it is moved and once after, and a champion that changed
        meanwhile is compared with again (a few times at most)."""
        with store_lock(self.uri):
            champion = first = self._call(partial(champion_version, client, name))
            for _ in range(PROMOTION_ATTEMPTS):
                promotion = self._call(
                    partial(
                        decide_promotion,
                        name,
                        report,
                        champion,
                        version,
                        evaluate_champion,
                        self.uri,
                    )
                )
                now = self._call(partial(champion_version, client, name))
                if now != champion:  # another job moved it while this one compared
                    champion = now
                    continue
                if not promotion.promoted:
                    return _moved(promotion, first, champion)
                self._call(
                    partial(client.set_registered_model_alias, name, CHAMPION_ALIAS, version)
                )
                now = self._call(partial(champion_version, client, name))
                if now == version:
                    return _moved(promotion, first, champion)
                champion = now  # moved by another job right after: compare with that one
        return Promotion(
            False,
            f"not promoted: @champion kept moving while this version was compared with it "
            f"(now v{champion}); another job promoted its model at the same time",
            champion,
        )

    def _log_and_register(self, model: Any, files: Sequence[Path], example: Any) -> str:
        from mlflow.models import infer_signature

        with _torch_no_grad():
            output = model(example).numpy()
        # Every call goes through the retry wrapper: a server outage is one line naming
        # the run to resume, never a traceback.
        info = self._call(
            partial(
                mlflow.pytorch.log_model,
                model,
                name="model",
                signature=infer_signature(example.numpy(), output),
                input_example=example.numpy(),
                registered_model_name=self.run.registered_model_name,
                extra_files=[str(f) for f in files],
                serialization_format="pt2",
                pip_requirements=[f"shieldtune=={self.version}"],
            )
        )
        return str(info.registered_model_version)

    def parent_metrics(self) -> dict[str, float]:
        """The latest value of every metric logged into the parent run."""
        if not self.enabled:
            return {}
        client, run_id = self._parent()
        return dict(self._call(partial(client.get_run, run_id)).data.metrics)

    def set_outcome(self, outcome: str, detail: str) -> None:
        """Tag the parent run with the job's outcome and add it to the run's description."""
        if not self.enabled:
            return
        client, run_id = self._parent()
        run = self._call(partial(client.get_run, run_id))
        note = run.data.tags.get(NOTE_TAG, "").split(OUTCOME_HEADING)[0].rstrip()
        note += f"\n\n{OUTCOME_HEADING}\n\n**{outcome}**: {detail}\n"
        for key, value in (("shieldtune.outcome", outcome), (NOTE_TAG, note)):
            self._call(partial(client.set_tag, run_id, key, value))

    def finish(self, status: str = "FINISHED") -> None:
        """Flush, close every run, restore the environment. Each part is tried even if an
        earlier one failed (a run left on MLflow's stack would make its exit handler retry
        for minutes against a dead server); the first error is raised at the end."""
        if not self.enabled:
            return
        client = self.client
        # A store that could not be opened (its error is what the caller reports) left no
        # client and no runs: only the environment is restored.
        closes = (
            []
            if client is None
            else [
                mlflow.flush_async_logging,
                *(partial(client.set_terminated, run_id, status) for run_id in self._open_episodes),
            ]
        )
        errors: list[TrackingError] = []
        for close in closes:
            try:
                self._call(close)
            except TrackingError as exc:
                errors.append(exc)
        while mlflow.active_run() is not None:  # end_run pops the run before it calls the server
            try:
                self._call(partial(mlflow.end_run, status=status))
            except TrackingError as exc:
                errors.append(exc)
        self._open_episodes.clear()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._saved_env:
            mlflow.set_tracking_uri(self._saved_env.get("MLFLOW_TRACKING_URI"))
        if errors:
            raise errors[0]


RESUME_HINT = (
    "the job's state up to the last completed step is saved: resume it with "
    "shieldtune tune --resume RUN_ID"
)
#: Tries to open a store another job may be creating at the same moment.
STORE_INIT_ATTEMPTS = 5
#: Comparisons a promotion makes when other jobs move ``@champion`` meanwhile.
PROMOTION_ATTEMPTS = 4


def _moved(promotion: Promotion, first: str | None, champion: str | None) -> Promotion:
    """``promotion``, saying so when another job moved ``@champion`` during the decision."""
    if first == champion:
        return promotion
    was = f"v{first}" if first else "none"
    note = f" (another job moved @champion from {was} to v{champion} meanwhile: compared again)"
    return dataclasses.replace(promotion, reason=promotion.reason + note)


def _sqlite_folder(uri: str) -> Path | None:
    """The folder of a ``sqlite:///PATH`` store's file (None: another kind of store)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).parent


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on a local (sqlite) store while it is held: MLflow creates and
    migrates a new store's tables when it is first opened, and jobs doing that at the same
    moment break each other's migrations; promotions read, compare and move ``@champion``
    one at a time. (A flock on the store's folder: no file is left behind. Other stores:
    no lock; see :meth:`Tracker._promote`.)"""
    folder = _sqlite_folder(uri)
    try:
        fd = os.open(folder, os.O_RDONLY) if folder is not None else None
    except OSError:  # a missing folder: opening the store says so
        fd = None
    if fd is None:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


START_HINT = "check MLFLOW_TRACKING_URI and that the server runs, or set tracking.enabled=false"


def _retrying(call: Callable[[], T], uri: str, hint: str = RESUME_HINT) -> T:
    """``call()``; MLflow's HTTP client already retries with backoff (tracking.http_retries),
    so a failure that still comes through becomes one clear line instead of a traceback."""
    try:
        return call()
    except (MlflowException, OSError, requests.exceptions.RequestException) as exc:
        raise TrackingError(
            f"MLflow at {redact(uri)} failed after its retries ({redact(first_line(exc))}); {hint}"
        ) from None


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


#: Significant digits a logged value keeps: a proportion of up to a million samples, a loss or
#: a time stays exact to its own precision, and float noise (0.7595000000000001) goes.
SIGNIFICANT_DIGITS = 6


def readable(value: float) -> float:
    """``value`` rounded to :data:`SIGNIFICANT_DIGITS` significant digits."""
    return float(f"{float(value):.{SIGNIFICANT_DIGITS}g}")


def _metric(key: str, value: float, step: int = 0):
    import time

    from mlflow.entities import Metric

    return Metric(key, readable(value), int(time.time() * 1000), step)


def find_controller_state(experiment: str, kfp_run_id: str, file_name: str) -> Path | None:
    """The saved controller state of the newest unfinished tuning run of a KFP run, if any."""
    client = MlflowClient(default_tracking_uri())
    exp = _retrying(partial(client.get_experiment_by_name, experiment), default_tracking_uri())
    if exp is None:
        return None
    runs = _retrying(
        partial(
            client.search_runs,
            [exp.experiment_id],
            f"tags.`{KFP_RUN_TAG}` = '{kfp_run_id}' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        ),
        default_tracking_uri(),
    )
    for run in runs:
        listed = client.list_artifacts(run.info.run_id, CONTROLLER_ARTIFACTS)
        if any(Path(f.path).name == file_name for f in listed):
            return Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run.info.run_id,
                    artifact_path=f"{CONTROLLER_ARTIFACTS}/{file_name}",
                    tracking_uri=default_tracking_uri(),
                )
            )
    return None


def download_policy(model_uri: str) -> Path | None:
    """The ``policy/agent.pt`` logged by the run behind a registered model, or None if absent.

    ``model_uri`` is ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
    """
    from mlflow.exceptions import MlflowException

    try:
        version = model_version(MlflowClient(default_tracking_uri()), model_uri)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower():
            return None
        raise
    run_id = version.tags.get("source_run_id") or version.run_id
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="policy/agent.pt", tracking_uri=default_tracking_uri()
    )
    return Path(local)
