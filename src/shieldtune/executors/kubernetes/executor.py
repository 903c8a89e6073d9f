"""``kubernetes`` backend: each environment step is a Kubernetes Job.

For a batch of steps (one per environment) the controller writes each request
to the step store, creates one Job per step, polls them every
``kubernetes.poll_seconds`` and reads each result back from the store. A Job
that fails, is evicted, vanishes or outlives ``active_deadline_seconds`` (plus a
grace period) is deleted and retried as a new Job, at most
``tuner.step_retries`` times; then the step is reported with every attempt's
reason in a :class:`StepFailedError`. Whatever happens (an error, Ctrl-C, the
SIGTERM Kubernetes sends before killing the controller pod), Jobs this
controller started are deleted on the way out; ``ttlSecondsAfterFinished`` and
the owner reference to the controller pod are the backstops if the controller
is killed outright.

``close()`` may run in another thread than ``run_many`` (the tuner trains a round
in a thread and closes the executor from the main thread when interrupted): once
it has started, no new Job is created, and a ``run_many`` still polling stops
with a :class:`ClusterError` instead of retrying the steps whose Jobs ``close()``
deleted.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from shieldtune.config import KubernetesConfig
from shieldtune.errors import ClusterError, StepFailedError, first_line
from shieldtune.executors.kubernetes.api import default_namespace, load_api_client
from shieldtune.executors.kubernetes.jobs import Owner, step_job, step_labels
from shieldtune.executors.step_files import REQUEST_FILE, StepStore, read_result, request_payload
from shieldtune.job import StepSpec
from shieldtune.training.step import StepRequest, StepResult

#: Polling gives up once the API has failed this many calls in a row...
MAX_API_ERRORS = 5
#: ...and for this long (back-off plus poll time since its last answer): an API server restart
#: or a control-plane upgrade takes tens of seconds, whatever ``poll_seconds`` is. (Counting
#: calls alone gave up after about 35 x ``poll_seconds``: 17 s at 0.5 s, less than a restart.)
API_OUTAGE_SECONDS = 120.0
#: Extra time past ``activeDeadlineSeconds`` before the controller itself gives up on a Job.
DEADLINE_GRACE_SECONDS = 60.0


@dataclass
class Attempt:
    job: str
    outcome: str = "running"
    reason: str = ""


@dataclass
class _Step:
    step_id: str
    request: StepRequest
    attempts: list[Attempt] = field(default_factory=list)
    started: float = 0.0
    result: StepResult | None = None

    @property
    def job(self) -> str:
        return self.attempts[-1].job


def cpu_threads(quantity: str) -> int:
    """Torch threads for a CPU limit such as ``"2"`` or ``"1500m"`` (at least one)."""
    cores = float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    return max(1, math.floor(cores))


def owner_from_env() -> Owner | None:
    """The controller pod (from the downward API variables the tune component sets)."""
    name, uid = os.environ.get("SHIELDTUNE_POD_NAME"), os.environ.get("SHIELDTUNE_POD_UID")
    return Owner(name, uid) if name and uid else None


def _safe_tracking_uri() -> str | None:
    """The controller's MLflow URI for the pods, unless it embeds credentials."""
    from urllib.parse import urlsplit

    from shieldtune.tracking.tracker import default_tracking_uri

    uri = default_tracking_uri()
    return None if urlsplit(uri).password or "@" in urlsplit(uri).netloc else uri


class KubernetesStepExecutor:
    def __init__(
        self,
        kubernetes: KubernetesConfig,
        steps: StepSpec,
        store: StepStore,
        *,
        retries: int = 2,
        api_client: client.ApiClient | None = None,
        namespace: str | None = None,
        mlflow_run_id: str | None = None,
        kfp_run_id: str | None = None,
        owner: Owner | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.k = kubernetes
        self.store = store
        self.retries = retries
        self._steps = steps
        self._api = api_client or load_api_client(self.k.context)
        self._batch = client.BatchV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self.namespace = namespace or self.k.namespace or default_namespace(self.k.context)
        self.owner = owner if owner is not None else owner_from_env()
        controller = self.owner.name if self.owner else socket.gethostname()
        kfp_run_id = kfp_run_id or os.environ.get("SHIELDTUNE_KFP_RUN_ID")
        self._label_args = (mlflow_run_id, kfp_run_id, controller)
        uri = _safe_tracking_uri() if self.k.transport == "mlflow" else None
        self._env = {"MLFLOW_TRACKING_URI": uri} if uri else {}
        self._sleep = sleep
        self._timeout = self.k.active_deadline_seconds + DEADLINE_GRACE_SECONDS
        self._live: set[str] = set()
        #: Set by close(); _submit and close() hold the lock, so no Job is created after it.
        self._closed = threading.Event()
        self._lock = threading.Lock()
        #: Seconds slept in back-off since the API last answered (see API_OUTAGE_SECONDS).
        self._outage_s = 0.0
        #: Every attempt of every step this executor ran: step id, Job, outcome, reason.
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ public
    def run(self, request: StepRequest) -> StepResult:
        return self.run_many([request])[0]

    def run_many(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        steps = [_Step(secrets.token_hex(5), r) for r in requests]
        for s in steps:
            self.store.put(s.step_id, REQUEST_FILE, request_payload(s.request, self._steps))
        try:
            for s in steps:
                self._submit(s)
            api_errors = 0
            while any(s.result is None for s in steps):
                self._sleep(self.k.poll_seconds)
                for s in steps:
                    if s.result is not None:
                        continue
                    self._check_open()
                    try:
                        self._advance(s)
                        api_errors, self._outage_s = 0, 0.0
                    except (ApiException, urllib3.exceptions.HTTPError) as exc:
                        api_errors = self._api_error(exc, api_errors)
        finally:
            if not self._closed.is_set():  # else close() deletes them
                for s in steps:
                    if s.result is None and s.attempts:
                        self._delete(s.job)
        return [s.result for s in steps if s.result is not None]

    def close(self) -> None:
        """Delete every Job still running (interrupt, error) and release the client; from
        now on no Job is created (see the module docstring)."""
        with self._lock:
            self._closed.set()
        for name in list(self._live):
            self._delete(name)
        self._api.close()

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed.is_set():
            raise ClusterError(
                "the kubernetes executor was closed (interrupted) while its steps ran; "
                "their Jobs are deleted"
            )

    def _submit(self, s: _Step) -> None:
        name = f"shieldtune-step-{s.step_id}-{len(s.attempts) + 1}"
        body = step_job(
            name,
            self.store.uri,
            s.step_id,
            self.k,
            step_labels(s.step_id, *self._label_args),
            owner=self.owner,
            env=self._env,
            threads=cpu_threads(self.k.cpu_limit),
        )
        with self._lock:
            self._check_open()
            try:
                self._batch.create_namespaced_job(self.namespace, body)
            except ApiException as exc:
                raise ClusterError(
                    f"cannot create Job {name} in namespace {self.namespace}: {_describe(exc)}"
                ) from None
            except urllib3.exceptions.HTTPError as exc:
                raise ClusterError(
                    f"Kubernetes API unreachable creating Job {name}: {exc}"
                ) from None
            self._live.add(name)
        s.attempts.append(Attempt(name))
        s.started = time.monotonic()

    def _advance(self, s: _Step) -> None:
        """Poll the step's current Job once; finish, retry or keep waiting."""
        try:
            job = self._batch.read_namespaced_job(s.job, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return self._failed(s, "the Job disappeared (deleted by someone else?)")
        status = job.status
        conditions = {c.type: c for c in (status.conditions or []) if c.status == "True"}
        if "Complete" in conditions or (status.succeeded or 0) > 0:
            try:
                result = read_result(self.store, s.step_id, len(s.attempts))
            except StepFailedError as exc:
                return self._failed(s, str(exc))
            self._finish_attempt(s, "succeeded", "")
            s.result = result
            self.store.delete(s.step_id)
            return None
        if "Failed" in conditions:
            reason = conditions["Failed"].reason or "Failed"
            return self._failed(s, f"{reason}: {self._pod_reason(s.job)}")
        if time.monotonic() - s.started > self._timeout:
            return self._failed(s, f"no result after {self._timeout:.0f} s (controller timeout)")
        return None

    def _failed(self, s: _Step, reason: str) -> None:
        self._check_open()  # close() deleted the Job: that is no failure of the step
        self._finish_attempt(s, "failed", reason)
        if len(s.attempts) > self.retries:
            tried = "; ".join(f"{a.job}: {a.reason}" for a in s.attempts)
            raise StepFailedError(
                f"step {s.step_id} failed {len(s.attempts)} times "
                f"(tuner.step_retries={self.retries}): {tried}"
            )
        self._submit(s)

    def _finish_attempt(self, s: _Step, outcome: str, reason: str) -> None:
        attempt = s.attempts[-1]
        attempt.outcome, attempt.reason = outcome, reason
        self.history.append({"step_id": s.step_id, **vars(attempt)})
        self._delete(attempt.job)

    def _pod_reason(self, job_name: str) -> str:
        """Why the Job's pods failed (evicted, exit code, ...), for the error report."""
        try:
            pods = self._core.list_namespaced_pod(
                self.namespace, label_selector=f"job-name={job_name}"
            ).items
        except (ApiException, urllib3.exceptions.HTTPError):
            return "pod status unavailable"
        if not pods:
            # The Eviction API and a plain delete remove the pod itself, and the Job controller
            # fails the Job as soon as the pod terminates: nothing is left to read by now. (Only
            # a kubelet's node-pressure eviction leaves the pod behind, Failed, reason Evicted.)
            return "its pod is gone (evicted or deleted)"
        reasons = []
        for pod in pods:
            st = pod.status
            if st.reason:
                reasons.append(f"pod {st.reason}" + (f" ({st.message})" if st.message else ""))
            # Set by the Eviction API, preemption and taint eviction before they delete a pod.
            disrupted = [
                c.reason or "DisruptionTarget"
                for c in st.conditions or []
                if c.type == "DisruptionTarget" and c.status == "True"
            ]
            if disrupted:
                reasons.append(f"pod disrupted: {disrupted[0]}")
            elif pod.metadata.deletion_timestamp is not None:
                reasons.append("pod deleted")
            for cs in st.container_statuses or []:
                term = cs.state.terminated if cs.state else None
                if term is not None:
                    reasons.append(f"container exit code {term.exit_code} ({term.reason})")
        return "; ".join(reasons) or "no pod details"

    def _delete(self, name: str) -> None:
        try:
            self._batch.delete_namespaced_job(name, self.namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                return  # keep it in _live so close() tries again
        except urllib3.exceptions.HTTPError:
            return
        self._live.discard(name)

    def _api_error(self, exc: Exception, count: int) -> int:
        status = getattr(exc, "status", None)
        if status in (401, 403):
            raise ClusterError(
                f"Kubernetes API refused to read Jobs in {self.namespace}: {_describe(exc)}; "
                "the controller's service account needs create/get/delete on jobs and list "
                "on pods (the Role in manifests/base/rbac.yaml)"
            ) from None
        count += 1
        if count >= MAX_API_ERRORS and self._outage_s >= API_OUTAGE_SECONDS:
            raise ClusterError(
                f"Kubernetes API failed {count} times in a row ({self._outage_s:.0f} s) while "
                f"polling step Jobs: {_describe(exc)}"
            ) from None
        pause = min(30.0, self.k.poll_seconds * 2**count)
        self._sleep(pause)
        self._outage_s += pause + self.k.poll_seconds
        return count


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return first_line(exc)
