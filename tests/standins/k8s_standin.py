"""A local stand-in for the Kubernetes API server that really runs Jobs, for tests.

No cluster exists here, so tests start this server and point the *real* ``kubernetes`` client
at it over real HTTP. It serves the part of the API that the project's Kubernetes step executor
uses (batch/v1 Jobs, core/v1 Pods and pod logs) and, instead of scheduling containers, runs
each pod's container ``command`` + ``args`` as a local subprocess, so a real
``shieldtune step ...`` executes::

    with K8sApiStandIn(tmp_path / "k8s", volumes={"steps": tmp_path / "pvc"}) as k8s:
        kubeconfig = k8s.write_kubeconfig(tmp_path / "kubeconfig", namespace="team")
        api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        kubernetes.client.BatchV1Api(api).create_namespaced_job("team", job)
        assert k8s.wait_idle(timeout=60)
        assert k8s.jobs("team")[0]["status"]["succeeded"] == 1

What is emulated, as Kubernetes 1.33 does it:

* Job creation fills ``uid``/``resourceVersion``/``creationTimestamp``/``generation``, the
  defaults (``backoffLimit`` 6, ``completions``/``parallelism`` 1, ...), the generated
  ``spec.selector`` and the pod template labels ``controller-uid``, ``job-name``,
  ``batch.kubernetes.io/controller-uid`` and ``batch.kubernetes.io/job-name`` (a Job without
  labels of its own gets the template's). ``metadata.generateName`` works.
* A Job runs one pod at a time, named ``<job>-<5 random chars>``, owned by the Job (an
  ``ownerReference`` plus the ``batch.kubernetes.io/job-tracking`` finalizer until counted).
  Pods go ``Pending`` -> ``Running`` -> ``Succeeded``/``Failed``; the container status is
  ``waiting``/``running``/``terminated`` with ``exitCode`` and reason ``Completed``/``Error``
  (``StartError``, exit code 128, when the command cannot be started). Killed by a signal,
  the exit code is ``128 + signal`` (137, 143) as container runtimes report it. When the
  main process exits, the rest of its process group is killed, as a container's would be.
* Job status: ``active``/``ready``/``terminating``/``succeeded``/``failed``, ``startTime``,
  ``completionTime`` (success only), ``uncountedTerminatedPods``, and the 1.31+ conditions:
  ``SuccessCriteriaMet`` then ``Complete`` (reason ``CompletionsReached``), or
  ``FailureTarget`` then ``Failed`` (reason ``BackoffLimitExceeded`` once failed pods exceed
  ``backoffLimit``, ``DeadlineExceeded`` once ``activeDeadlineSeconds`` passed since
  ``startTime``, ``PodFailurePolicy`` for a ``FailJob`` rule). ``Failed``/``Complete`` are
  added once no pod of the Job is still running. Pods still running when the Job fails (the
  deadline case) are *deleted*, as the real Job controller does: SIGTERM, SIGKILL after the
  grace period, then they disappear from the API with their logs.
* ``podFailurePolicy`` rules (``onExitCodes`` with ``In``/``NotIn``, ``onPodConditions``;
  actions ``FailJob``/``Ignore``/``Count``); evicted pods carry the ``DisruptionTarget``
  condition, so ``Ignore`` on it does not count evictions. ``spec.suspend`` creates no pods.
* ``ttlSecondsAfterFinished``: the Job and its pods are deleted that long after it finished.
* Deletion: ``propagationPolicy`` from the body (``V1DeleteOptions``) or the query.
  ``Background`` removes the Job at once and deletes its pods; ``Foreground`` keeps the Job
  (with ``deletionTimestamp``) until its pods are gone; ``Orphan`` and -- like the real API for
  batch/v1 Jobs -- *no policy at all* leave the pods running, with a ``Warning`` header.
  ``gracePeriodSeconds`` is honoured. Deleting a pod kills its process the same way.
* Errors are ``Status`` objects with the real codes and reasons: 401 ``Unauthorized`` (missing
  or wrong bearer token), 404 ``NotFound``, 405, 409 ``AlreadyExists``, 422 ``Invalid`` (with
  ``details.causes``), 400 ``BadRequest`` (bad selector; logs of a pod still waiting).
* Label selectors (``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``,
  ``a notin (x,y)``) and field selectors on ``metadata.name``, ``metadata.namespace`` and
  (pods) ``status.phase``.
* The container environment is this process's ``os.environ`` + ``extra_env`` + ``HOSTNAME``
  (the pod name) + ``envFrom`` + ``env``; ``PATH`` also gets the running interpreter's
  directory in front (unless already on it), so the test virtualenv's console scripts such
  as ``shieldtune`` are found even when the venv is not activated. ``env`` supports
  ``value`` (with ``$(VAR)`` expansion), ``valueFrom.secretKeyRef``, ``valueFrom.fieldRef``
  (``metadata.name``, ``metadata.namespace``, ``metadata.uid``, ``metadata.labels['k']``,
  ``metadata.annotations['k']``, ``spec.nodeName``, ``spec.serviceAccountName``,
  ``status.podIP``, ``status.hostIP``); ``envFrom`` supports ``secretRef`` (with ``prefix``).
  A missing secret or key that is not ``optional`` leaves the pod ``Pending`` with the
  container waiting in ``CreateContainerConfigError`` (the kubelet keeps retrying, so adding
  it to ``.secrets`` later starts the pod). There are no ConfigMaps: a ``configMapKeyRef`` /
  ``configMapRef`` behaves like a missing ConfigMap. ``command``/``args`` get ``$(VAR)``
  expansion from the container's env (``$$`` escapes), as the kubelet does.
* Faults: ``fault(job, pod_index)`` is asked before each pod of a Job starts (``pod_index``
  counts that Job's pods from 0) and can make the pod ``"fail"`` (exit code 1, reason
  ``Error``, the command never runs), be ``"evict"``-ed (phase ``Failed``, reason
  ``Evicted``, a ``DisruptionTarget`` condition, exit code 137) or ``"hang"`` (a process that
  sleeps forever instead of the command, for deadlines and deletion). ``None`` runs it.

Simplifications, on purpose:

* **Mounts are emulated by path rewriting.** A local process cannot get a mount, so every
  ``command``/``args`` string, ``env`` value (not the inherited ``os.environ``) and
  ``workingDir`` that contains a container ``volumeMounts[].mountPath`` as a path prefix (at
  the start of the string or after a non-path character such as ``=`` or ``:``, and followed
  by ``/`` or the end of the path) has that prefix replaced by the volume's host directory
  (plus ``subPath``). Volumes: ``emptyDir`` -> a fresh per-pod directory under ``workdir``;
  ``persistentVolumeClaim`` -> ``volumes[claimName]`` (unknown claim: the pod stays
  ``Pending``/``Unschedulable`` like a missing PVC); ``secret`` -> a per-pod directory holding
  one file per key; ``hostPath`` -> that path. Other volume types leave the pod ``Pending``.
  Paths inside ``workdir``, any ``volumes`` directory, ``host_paths`` or the running Python
  installation are already host paths
  and are never rewritten (so a test can hand a pod a host path under ``/tmp`` while the pod
  also mounts an emptyDir at ``/tmp``). Paths the program *computes* at run time (e.g.
  ``Path.home()`` without ``HOME`` set) are not rewritten. ``readOnly`` is not enforced.
* Without ``workingDir`` a pod runs in its own scratch directory under ``workdir``.
* ``image``, ``resources``, security contexts, probes, init containers, sidecars and every
  container but the first are ignored; ``restartPolicy: OnFailure`` behaves like ``Never``
  (a new pod per retry instead of restarting the container in place).
* Only ``completions``/``parallelism`` 1 and ``NonIndexed`` Jobs run (others: 422).
* Failed pods are replaced at once (no 10 s, 20 s, ... back-off). The grace period before
  SIGKILL is capped at ``MAX_GRACE_SECONDS``.
* Every namespace exists; Secrets are shared by all namespaces; Jobs whose
  ``ownerReferences`` point at objects the stand-in does not know are *not*
  garbage-collected.
* Validation: with ``validate_version`` set, the Job must pass
  ``kubernetes_validate.validate(job, validate_version, strict=True)``. Strict mode refuses
  unknown fields with 422, where a real API server (``fieldValidation`` defaults to ``Warn``)
  would drop them with a warning -- stricter on purpose, so a misspelt field fails the test.
  On top, the main semantic checks of the API server (names, restartPolicy, volume
  references, env names, non-negative limits) are done.
* No ``watch`` (400: poll instead), no pagination (``limit``/``continue`` ignored), no
  PATCH/PUT; ``resourceVersion`` is a global counter; ``follow`` on logs returns what is
  there now; ``previous`` logs never exist.
* The pod log is one file that the process's stdout *and* stderr write to (the same open
  file, ``stderr=STDOUT``), like a container runtime's log stream, so its order is exactly
  the order of the process's writes, never a race between two pipes. Mind the child's own
  buffering: Python block-buffers stdout written to a file (unless ``PYTHONUNBUFFERED`` is
  set) but line-buffers stderr, so without ``flush=True`` stderr lines come first.

A client quirk worth knowing (the real server triggers it too): ``kubernetes`` 30.1's
``read_namespaced_pod_log`` runs ``json.loads`` on the body first, so a log that happens to be
one JSON document or number comes back as ``str()`` of the parsed value (``{'a': 1}``,
``0.5`` without its newline). Pass ``_preload_content=False`` and decode ``.data`` for the
raw text.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from .http_standin import RequestLog, StandInHandler

__all__ = ["K8sApiStandIn", "RecordedRequest"]

Fault = Callable[[dict[str, Any], int], "str | None"]
Json = dict[str, Any]

NODE_NAME = "standin-node"
HOST_IP = "127.0.0.1"
JOB_TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
#: Characters Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")
_HANG = [sys.executable, "-c", "import time\nwhile True:\n    time.sleep(3600)"]
_EVICTION_MESSAGE = (
    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 64Mi. "
)
_DEFAULT_DELETE_WARNING = (
    '299 - "child pods are preserved by default when jobs are deleted; set '
    "propagationPolicy=Background to remove them or set propagationPolicy=Orphan to "
    'suppress this warning"'
)


# --------------------------------------------------------------------------------------------
# API plumbing: recorded requests, Status errors, helpers


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request the stand-in received, as the client sent it.

    ``headers`` has lower-cased names; ``query`` keeps the last value of each parameter;
    ``body`` is the parsed JSON body (``None`` without one, the raw text if it is not JSON);
    ``status`` is the HTTP status the stand-in answered with.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int = 0


class ApiError(Exception):
    """Raised by a route handler to answer with a Kubernetes ``Status`` error."""

    def __init__(
        self,
        code: HTTPStatus,
        reason: str,
        message: str,
        details: Json | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.body: Json = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": int(code),
        }
        if details is not None:
            self.body["details"] = details


@dataclasses.dataclass
class _Reply:
    status: HTTPStatus
    body: Any
    content_type: str = "application/json"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _resource_names(kind: str) -> tuple[str, str]:
    """(group, plural) of a kind, for Status details and messages."""
    return ("batch", "jobs") if kind == "Job" else ("", "pods")


def _qualified(kind: str) -> str:
    group, plural = _resource_names(kind)
    return f"{plural}.{group}" if group else plural


def _not_found(kind: str, name: str) -> ApiError:
    group, plural = _resource_names(kind)
    details = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return ApiError(
        HTTPStatus.NOT_FOUND, "NotFound", f'{_qualified(kind)} "{name}" not found', details
    )


def _bad_request(message: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, "BadRequest", message)


@dataclasses.dataclass(frozen=True)
class _Cause:
    field: str
    reason: str  # FieldValueRequired, FieldValueInvalid, ...
    message: str  # "Required value", 'Invalid value: "x": why', ...


def _invalid(name: str, causes: list[_Cause]) -> ApiError:
    listed = ", ".join(f"{c.field}: {c.message}" for c in causes)
    if len(causes) > 1:
        listed = f"[{listed}]"
    return ApiError(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "Invalid",
        f'Job.batch "{name}" is invalid: {listed}',
        {
            "name": name,
            "group": "batch",
            "kind": "Job",
            "causes": [
                {"reason": c.reason, "message": c.message, "field": c.field} for c in causes
            ],
        },
    )


def _suffix() -> str:
    return "".join(random.choices(_SUFFIX_CHARS, k=5))


def _condition(kind: str, reason: str, message: str, status: str = "True") -> Json:
    now = _now()
    return {
        "type": kind,
        "status": status,
        "lastProbeTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }


def _has_condition(obj: Json, kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in obj.get("status", {}).get("conditions") or []
    )


# --------------------------------------------------------------------------------------------
# selectors


def _split_requirements(selector: str) -> list[str]:
    """Splits a selector on the commas that are not inside ``( )``."""
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _label_selector(selector: str | None) -> Callable[[dict[str, str]], bool]:
    """A predicate on a label dict for a label selector string (400 if unparsable)."""
    if not selector:
        return lambda labels: True
    checks: list[Callable[[dict[str, str]], bool]] = []
    for requirement in _split_requirements(selector):
        if match := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", requirement):
            key, operator = match[1], match[2]
            values = {v.strip() for v in match[3].split(",") if v.strip()}
            if operator == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif match := re.fullmatch(r"!\s*([^=!\s]+)", requirement):
            checks.append(lambda labels, k=match[1]: k not in labels)
        elif match := re.fullmatch(r"([^=!\s]+)\s*(!=|==|=)\s*([^=!\s]*)", requirement):
            key, operator, value = match[1], match[2], match[3]
            if operator == "!=":
                checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif re.fullmatch(r"[^=!\s(),]+", requirement):
            checks.append(lambda labels, k=requirement: k in labels)
        else:
            raise _bad_request(
                f"unable to parse requirement: found '{requirement}', expected: '=', '!=', "
                "'==', 'in', notin'"
            )
    return lambda labels: all(check(labels) for check in checks)


_FIELDS: dict[str, Callable[[Json], str]] = {
    "metadata.name": lambda o: o["metadata"]["name"],
    "metadata.namespace": lambda o: o["metadata"]["namespace"],
    "status.phase": lambda o: o.get("status", {}).get("phase", ""),
}


def _field_selector(selector: str | None, kind: str) -> Callable[[Json], bool]:
    """A predicate on an object for a field selector (equality only, like the real API)."""
    if not selector:
        return lambda obj: True
    checks: list[Callable[[Json], bool]] = []
    for requirement in _split_requirements(selector):
        match = re.fullmatch(r"([^=!\s]+)\s*(!=|==|=)\s*(\S*)", requirement)
        if match is None:
            raise _bad_request(f"invalid selector: '{selector}'; can't understand '{requirement}'")
        field, operator, value = match[1], match[2], match[3]
        getter = _FIELDS.get(field)
        if getter is None or (field == "status.phase" and kind != "Pod"):
            raise _bad_request(
                f'field label not supported: {field} (the stand-in knows "metadata.name", '
                '"metadata.namespace" and, for pods, "status.phase")'
            )
        if operator == "!=":
            checks.append(lambda obj, g=getter, v=value: g(obj) != v)
        else:
            checks.append(lambda obj, g=getter, v=value: g(obj) == v)
    return lambda obj: all(check(obj) for check in checks)


# --------------------------------------------------------------------------------------------
# Job validation


def _schema_causes(job: Json, version: str) -> list[_Cause]:
    """What ``kubernetes_validate`` (strict) finds wrong with a Job, as API causes."""
    import kubernetes_validate  # only needed when validating

    try:
        kubernetes_validate.validate(job, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = error.json_path.removeprefix("$").removeprefix(".") or "<root>"
        if error.validator == "required" and (m := re.match(r"'([^']+)'", error.message)):
            field = f"{path}.{m[1]}" if path != "<root>" else m[1]
            return [_Cause(field, "FieldValueRequired", "Required value")]
        if error.validator == "additionalProperties" and (
            m := re.search(r"\('([^']+)'", error.message)
        ):
            return [
                _Cause(
                    f"{path}.{m[1]}" if path != "<root>" else m[1],
                    "FieldValueInvalid",
                    f'Invalid value: unknown field "{m[1]}" (strict schema validation '
                    f"against Kubernetes {version}: {error.message})",
                )
            ]
        return [_Cause(path, "FieldValueInvalid", f"Invalid value: {error.message}")]
    except (kubernetes_validate.SchemaNotFoundError, KeyError) as error:
        return [_Cause("kind", "FieldValueInvalid", f"Invalid value: {error}")]
    return []


def _semantic_causes(job: Json) -> list[_Cause]:
    """The API server's own Job checks that a JSON schema cannot express (the main ones)."""
    causes: list[_Cause] = []

    def invalid(field: str, value: Any, why: str) -> None:
        causes.append(
            _Cause(field, "FieldValueInvalid", f"Invalid value: {json.dumps(value)}: {why}")
        )

    def required(field: str, why: str = "") -> None:
        causes.append(
            _Cause(field, "FieldValueRequired", "Required value" + (f": {why}" if why else ""))
        )

    metadata = job.get("metadata") or {}
    name = metadata.get("name")
    if not name and not metadata.get("generateName"):
        required("metadata.name", "name or generateName is required")
    elif name and not (_DNS_SUBDOMAIN.fullmatch(name) and len(name) <= 63):
        invalid(
            "metadata.name",
            name,
            "a lowercase RFC 1123 subdomain of at most 63 characters (it is used as the "
            "job-name label value) must consist of lower case alphanumeric characters, '-' or "
            "'.', and must start and end with an alphanumeric character",
        )
    spec = job.get("spec") or {}
    for field in ("backoffLimit", "ttlSecondsAfterFinished"):
        if (spec.get(field) or 0) < 0:
            invalid(f"spec.{field}", spec[field], "must be greater than or equal to 0")
    if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
        invalid("spec.activeDeadlineSeconds", spec["activeDeadlineSeconds"], "must be > 0")
    if spec.get("selector") is not None and not spec.get("manualSelector"):
        invalid(
            "spec.selector",
            spec["selector"],
            "`selector` will be auto-generated (set manualSelector to choose it)",
        )
    for field in ("completions", "parallelism"):
        if spec.get(field, 1) != 1:
            invalid(f"spec.{field}", spec[field], "the stand-in only runs 1 (stand-in limit)")
    if spec.get("completionMode", "NonIndexed") != "NonIndexed":
        invalid(
            "spec.completionMode",
            spec["completionMode"],
            "the stand-in only runs NonIndexed Jobs (stand-in limit)",
        )
    pod_spec = (spec.get("template") or {}).get("spec") or {}
    restart = pod_spec.get("restartPolicy")
    base = "spec.template.spec"
    if restart is None:
        required(f"{base}.restartPolicy", 'valid values: "OnFailure", "Never"')
    elif restart not in ("OnFailure", "Never"):
        causes.append(
            _Cause(
                f"{base}.restartPolicy",
                "FieldValueNotSupported",
                f'Unsupported value: "{restart}": supported values: "OnFailure", "Never"',
            )
        )
    elif spec.get("podFailurePolicy") and restart != "Never":
        invalid(
            f"{base}.restartPolicy",
            restart,
            'only "Never" is supported when podFailurePolicy is specified',
        )
    volume_names = [v.get("name") for v in pod_spec.get("volumes") or []]
    for index, volume_name in enumerate(volume_names):
        if volume_name in volume_names[:index]:
            causes.append(
                _Cause(
                    f"{base}.volumes[{index}].name",
                    "FieldValueDuplicate",
                    f'Duplicate value: "{volume_name}"',
                )
            )
    containers = pod_spec.get("containers") or []
    if not containers:
        required(f"{base}.containers")
    seen: set[str] = set()
    for index, container in enumerate(containers):
        where = f"{base}.containers[{index}]"
        container_name = container.get("name") or ""
        if not _DNS_LABEL.fullmatch(container_name) or len(container_name) > 63:
            invalid(f"{where}.name", container_name, "must be an RFC 1123 label")
        elif container_name in seen:
            causes.append(
                _Cause(
                    f"{where}.name", "FieldValueDuplicate", f'Duplicate value: "{container_name}"'
                )
            )
        seen.add(container_name)
        for env_index, env in enumerate(container.get("env") or []):
            if not _ENV_NAME.fullmatch(env.get("name") or ""):
                invalid(
                    f"{where}.env[{env_index}].name",
                    env.get("name"),
                    "a valid environment variable name must consist of alphabetic "
                    "characters, digits, '_', '-', or '.', and must not start with a digit",
                )
        mount_paths: set[str] = set()
        for mount_index, mount in enumerate(container.get("volumeMounts") or []):
            if mount.get("name") not in volume_names:
                causes.append(
                    _Cause(
                        f"{where}.volumeMounts[{mount_index}].name",
                        "FieldValueNotFound",
                        f'Not found: "{mount.get("name")}"',
                    )
                )
            mount_path = mount.get("mountPath") or ""
            if not mount_path.startswith("/"):
                invalid(
                    f"{where}.volumeMounts[{mount_index}].mountPath",
                    mount_path,
                    "must be an absolute path (stand-in: mounts are emulated by rewriting "
                    "absolute paths)",
                )
            elif mount_path in mount_paths:
                causes.append(
                    _Cause(
                        f"{where}.volumeMounts[{mount_index}].mountPath",
                        "FieldValueInvalid",
                        f'Invalid value: "{mount_path}": must be unique',
                    )
                )
            mount_paths.add(mount_path)
    return causes


# --------------------------------------------------------------------------------------------
# runtime records


@dataclasses.dataclass
class _PodRun:
    """A pod object plus the local process (if any) that plays its container."""

    pod: Json
    job_uid: str | None
    index: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    exited: bool = False
    fault_checked: bool = False
    ran: bool = False  # the command really ran, so a log exists
    counted: bool = False  # the Job controller has accounted for its termination
    kill_at: float | None = None  # monotonic time to escalate to SIGKILL

    @property
    def key(self) -> tuple[str, str]:
        return self.pod["metadata"]["namespace"], self.pod["metadata"]["name"]

    @property
    def phase(self) -> str:
        return self.pod["status"]["phase"]

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def deleting(self) -> bool:
        return "deletionTimestamp" in self.pod["metadata"]

    @property
    def alive(self) -> bool:
        return self.process is not None and not self.exited

    @property
    def log_path(self) -> Path:
        return self.directory / "log"


@dataclasses.dataclass
class _JobRun:
    """A Job object plus the controller's bookkeeping for it."""

    job: Json
    started: float | None = None  # monotonic startTime
    finished: float | None = None  # monotonic time of the Complete/Failed condition
    target: tuple[str, str, str] | None = None  # (terminal condition, reason, message)
    pods_created: int = 0
    deleting: bool = False  # foreground deletion: waits for its pods

    @property
    def uid(self) -> str:
        return self.job["metadata"]["uid"]

    @property
    def key(self) -> tuple[str, str]:
        return self.job["metadata"]["namespace"], self.job["metadata"]["name"]


class _WaitingError(Exception):
    """The container cannot start yet (kubelet would retry): reason, message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _Unschedulable(Exception):
    """The pod cannot be scheduled (e.g. its PVC does not exist)."""


# --------------------------------------------------------------------------------------------
# HTTP server


class _Handler(StandInHandler):
    server: _Server

    def _handle(self) -> None:
        raw = self.read_request()
        body: Any = None
        if raw.body:
            try:
                body = json.loads(raw.body)
            except ValueError:
                body = raw.body.decode("utf-8", "replace")
        request = RecordedRequest(raw.method, raw.path, raw.query, raw.headers, body)
        standin = self.server.standin
        try:
            reply = standin.dispatch(request)
        except ApiError as error:
            reply = _Reply(error.code, error.body)
        except Exception as error:  # a stand-in bug: answer 500 and report it on exit
            standin.errors.append(f"{request.method} {request.path}:\n{traceback.format_exc()}")
            reply = _Reply(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, "InternalError", repr(error)).body,
            )
        standin.record(dataclasses.replace(request, status=int(reply.status)))
        if reply.content_type == "application/json":
            data = json.dumps(reply.body).encode("utf-8")
        else:
            data = str(reply.body).encode("utf-8")
        self.reply(reply.status, data, reply.content_type, reply.headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, standin: K8sApiStandIn) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.standin = standin


Route = tuple[str, re.Pattern[str], Callable[..., _Reply]]
_NS = r"/namespaces/(?P<namespace>[^/]+)"
_NAME = r"(?P<name>[^/]+)"


# --------------------------------------------------------------------------------------------
# the stand-in


class K8sApiStandIn(RequestLog[RecordedRequest]):
    """A fake Kubernetes API server on 127.0.0.1 that runs Job pods as local processes.

    Use it as a context manager (or ``start()``/``stop()``); leaving it kills every pod
    process and stops the server. ``url`` is the API server address; ``write_kubeconfig``
    writes a kubeconfig for it. ``requests`` lists what clients sent; ``jobs()``/``pods()``
    show the objects; ``running_processes()``/``wait_idle()`` let tests wait for the work.

    ``volumes`` maps PVC claim names to host directories and ``secrets`` Secret names to
    their (plain string) data; both are public dicts a test may change while pods wait.
    ``fault(job, pod_index)`` may return ``"fail"``, ``"evict"`` or ``"hang"`` for a pod.
    ``extra_env`` is added to every container's environment (under the container's own
    ``env``). ``host_paths`` are directories whose paths are never rewritten (see the module
    docstring); ``workdir`` and the ``volumes`` directories always are among them.
    """

    #: Longest grace period (seconds) between SIGTERM and SIGKILL, whatever the pod asks for.
    MAX_GRACE_SECONDS = 2.0
    #: How often the controller loop looks at processes, deadlines and TTLs.
    TICK_SECONDS = 0.05

    def __init__(
        self,
        workdir: Path,
        *,
        token: str = "test-token",
        volumes: dict[str, Path] | None = None,
        secrets: dict[str, dict[str, str]] | None = None,
        fault: Fault | None = None,
        validate_version: str | None = "1.33.0",
        extra_env: dict[str, str] | None = None,
        host_paths: Iterable[Path] = (),
    ) -> None:
        super().__init__()
        self.workdir = Path(workdir).resolve()
        self.token = token
        self.volumes: dict[str, Path] = {k: Path(v) for k, v in (volumes or {}).items()}
        self.secrets: dict[str, dict[str, str]] = dict(secrets or {})
        self.fault = fault
        self.validate_version = validate_version
        self.extra_env = dict(extra_env or {})
        self.host_paths = [Path(p) for p in host_paths]
        #: Exceptions raised inside the controller loop or ``fault`` (raised again on exit).
        self.errors: list[str] = []
        self._jobs: dict[str, _JobRun] = {}  # by uid, in creation order
        self._pods: dict[tuple[str, str], _PodRun] = {}  # by (namespace, name)
        self._fingerprints: dict[str, str] = {}
        self._resource_version = 1000
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        jobs = r"/apis/batch/v1" + _NS + r"/jobs"
        pods = r"/api/v1" + _NS + r"/pods"
        self._routes: list[Route] = [
            ("GET", re.compile(r"/version/?"), self._version),
            ("GET", re.compile(r"/apis/batch/v1/jobs"), self._list_jobs),
            ("GET", re.compile(jobs), self._list_jobs),
            ("POST", re.compile(jobs), self._create_job),
            ("DELETE", re.compile(jobs), self._delete_jobs),
            ("GET", re.compile(jobs + "/" + _NAME), self._read_job),
            ("GET", re.compile(jobs + "/" + _NAME + "/status"), self._read_job),
            ("DELETE", re.compile(jobs + "/" + _NAME), self._delete_job),
            ("GET", re.compile(r"/api/v1/pods"), self._list_pods),
            ("GET", re.compile(pods), self._list_pods),
            ("DELETE", re.compile(pods), self._delete_pods),
            ("GET", re.compile(pods + "/" + _NAME), self._read_pod),
            ("GET", re.compile(pods + "/" + _NAME + "/status"), self._read_pod),
            ("DELETE", re.compile(pods + "/" + _NAME), self._delete_pod_route),
            ("GET", re.compile(pods + "/" + _NAME + "/log"), self._read_log),
        ]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> K8sApiStandIn:
        """Starts the HTTP server and the controller loop."""
        if self._server is not None:
            raise RuntimeError("the Kubernetes stand-in is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._server = _Server(self)
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="k8s-standin-http",
                daemon=True,
            ),
            threading.Thread(target=self._control_loop, name="k8s-standin-ctrl", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Kills every pod process (and its process group) and stops the server."""
        if self._server is None:
            return
        self._stop.set()
        self._wake.set()
        self._threads[1].join(timeout=10)
        with self._lock:
            runs = list(self._pods.values())
        for run in runs:
            if run.alive:
                assert run.process is not None
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(run.process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.process.wait(timeout=10)
                run.exited = True
        self._server.shutdown()
        self._server.server_close()
        self._threads[0].join(timeout=10)
        self._server = None
        self._threads = []

    def __enter__(self) -> K8sApiStandIn:
        return self.start()

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.stop()
        if self.errors and exc_type is None:
            raise RuntimeError("the Kubernetes stand-in failed:\n" + "\n".join(self.errors))

    @property
    def url(self) -> str:
        """The API server address, e.g. ``http://127.0.0.1:41234``."""
        if self._server is None:
            raise RuntimeError("the Kubernetes stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def write_kubeconfig(self, path: Path, namespace: str = "team") -> Path:
        """Writes a kubeconfig (bearer token, current context in ``namespace``) to ``path``."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {"cluster": "standin", "user": "standin", "namespace": namespace},
                }
            ],
            "current-context": "standin",
            "preferences": {},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def api_client(self, namespace: str = "team") -> Any:
        """A ``kubernetes.client.ApiClient`` for this server (kubeconfig under ``workdir``)."""
        import kubernetes

        kubeconfig = self.write_kubeconfig(self.workdir / f"kubeconfig-{namespace}", namespace)
        return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))

    # -- what tests look at ------------------------------------------------------------------

    def jobs(self, namespace: str | None = None) -> list[Json]:
        """The current Job objects (deep copies), in creation order."""
        with self._lock:
            return [
                copy.deepcopy(run.job)
                for run in self._jobs.values()
                if namespace is None or run.key[0] == namespace
            ]

    def pods(self, namespace: str | None = None) -> list[Json]:
        """The current Pod objects (deep copies), in creation order."""
        with self._lock:
            return [
                copy.deepcopy(run.pod)
                for run in self._pods.values()
                if namespace is None or run.key[0] == namespace
            ]

    def pod_log(self, namespace: str, name: str) -> str:
        """A pod's combined stdout/stderr so far ("" if it never ran)."""
        with self._lock:
            run = self._pods[(namespace, name)]
            return run.log_path.read_text(errors="replace") if run.ran else ""

    def running_processes(self) -> int:
        """How many pod processes (main processes) are alive right now."""
        with self._lock:
            return sum(1 for run in self._pods.values() if run.alive and _still_running(run))

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no pod process runs, no pod is terminating and every Job is finished.

        Returns ``False`` if that did not happen within ``timeout`` seconds (e.g. a pod
        waits forever for a missing PVC or Secret).
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                busy = any(
                    run.alive or run.deleting or run.phase in ("Pending", "Running")
                    for run in self._pods.values()
                ) or any(
                    run.finished is None and not run.job["spec"].get("suspend")
                    for run in self._jobs.values()
                )
            if not busy:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    # -- request plumbing --------------------------------------------------------------------

    def dispatch(self, request: RecordedRequest) -> _Reply:
        """Authenticates a request and runs the handler for its route."""
        if request.headers.get("authorization") != f"Bearer {self.token}":
            raise ApiError(HTTPStatus.UNAUTHORIZED, "Unauthorized", "Unauthorized")
        if request.query.get("watch") in ("true", "1"):
            raise _bad_request("the Kubernetes stand-in does not serve watch; poll instead")
        path_matched = False
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(request.path)
            if match:
                path_matched = True
                if method == request.method:
                    reply = self._call(handler, request, match.groupdict())
                    self._wake.set()  # let the controller react at once
                    return reply
        if path_matched:
            raise ApiError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                f"the server does not allow this method on the requested resource "
                f"(the stand-in serves no {request.method} here)",
            )
        raise ApiError(
            HTTPStatus.NOT_FOUND, "NotFound", "the server could not find the requested resource"
        )

    def _call(
        self, handler: Callable[..., _Reply], request: RecordedRequest, groups: dict[str, str]
    ) -> _Reply:
        """Runs a handler under the lock and deep-copies its JSON answer."""
        with self._lock:
            reply = handler(request, **groups)
            reply.body = copy.deepcopy(reply.body)
        return reply

    # -- routes: misc ------------------------------------------------------------------------

    def _version(self, request: RecordedRequest) -> _Reply:
        version = self.validate_version or "1.33.0"
        major, minor = version.split(".")[:2]
        return _Reply(
            HTTPStatus.OK,
            {
                "major": major,
                "minor": minor,
                "gitVersion": f"v{version}",
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.24.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            },
        )

    # -- routes: jobs ------------------------------------------------------------------------

    def _find_job(self, namespace: str, name: str) -> _JobRun:
        for run in self._jobs.values():
            if run.key == (namespace, name):
                return run
        raise _not_found("Job", name)

    def _list_jobs(self, request: RecordedRequest, namespace: str | None = None) -> _Reply:
        labels = _label_selector(request.query.get("labelSelector"))
        fields = _field_selector(request.query.get("fieldSelector"), "Job")
        items = [
            run.job
            for run in self._jobs.values()
            if (namespace is None or run.key[0] == namespace)
            and labels(run.job["metadata"].get("labels") or {})
            and fields(run.job)
        ]
        return _Reply(HTTPStatus.OK, self._list("JobList", "batch/v1", items))

    def _list(self, kind: str, api_version: str, items: list[Json]) -> Json:
        return {
            "kind": kind,
            "apiVersion": api_version,
            "metadata": {"resourceVersion": str(self._resource_version)},
            "items": items,
        }

    def _read_job(self, request: RecordedRequest, namespace: str, name: str) -> _Reply:
        return _Reply(HTTPStatus.OK, self._job_reply(self._find_job(namespace, name).job))

    @staticmethod
    def _job_reply(job: Json) -> Json:
        return {"kind": "Job", "apiVersion": "batch/v1", **job}

    def _create_job(self, request: RecordedRequest, namespace: str) -> _Reply:
        body = request.body
        if not isinstance(body, dict):
            raise _bad_request("the request body must be a JSON object (a batch/v1 Job)")
        job: Json = copy.deepcopy(body)
        job.setdefault("apiVersion", "batch/v1")
        job.setdefault("kind", "Job")
        if (job["apiVersion"], job["kind"]) != ("batch/v1", "Job"):
            raise _bad_request(
                f"the API version in the data ({job['apiVersion']}) and kind ({job['kind']}) "
                "do not match the expected batch/v1 Job"
            )
        metadata = job.setdefault("metadata", {})
        if metadata.get("namespace") not in (None, namespace):
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        display_name = metadata.get("name") or metadata.get("generateName") or ""
        causes = _schema_causes(job, self.validate_version) if self.validate_version else []
        causes = causes or _semantic_causes(job)
        if causes:
            raise _invalid(display_name, causes)
        if not metadata.get("name"):
            metadata["name"] = metadata["generateName"] + _suffix()
        name = metadata["name"]
        if any(run.key == (namespace, name) for run in self._jobs.values()):
            raise ApiError(
                HTTPStatus.CONFLICT,
                "AlreadyExists",
                f'jobs.batch "{name}" already exists',
                {"name": name, "group": "batch", "kind": "jobs"},
            )
        uid = str(uuid.uuid4())
        metadata.update(
            namespace=namespace,
            uid=uid,
            creationTimestamp=_now(),
            generation=1,
            resourceVersion=self._next_version(),
        )
        job.pop("status", None)
        self._default_job(job)
        job["status"] = {}
        job.pop("apiVersion")
        job.pop("kind")
        self._jobs[uid] = _JobRun(job)
        self._fingerprints[uid] = _fingerprint(job)
        return _Reply(HTTPStatus.CREATED, self._job_reply(job))

    @staticmethod
    def _default_job(job: Json) -> None:
        """Fills the defaults and generated labels the API server adds to a new Job."""
        metadata, spec = job["metadata"], job["spec"]
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault(
            "podReplacementPolicy",
            "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed",
        )
        template = spec["template"]
        template_metadata = template.setdefault("metadata", {})
        user_labels = dict(template_metadata.get("labels") or {})
        generated = {
            "batch.kubernetes.io/controller-uid": metadata["uid"],
            "batch.kubernetes.io/job-name": metadata["name"],
            "controller-uid": metadata["uid"],
            "job-name": metadata["name"],
        }
        if not spec.get("manualSelector"):
            spec["selector"] = {
                "matchLabels": {"batch.kubernetes.io/controller-uid": metadata["uid"]}
            }
        template_metadata["labels"] = {**user_labels, **generated}
        if not metadata.get("labels"):
            metadata["labels"] = dict(template_metadata["labels"])
        pod_spec = template["spec"]
        pod_spec.setdefault("terminationGracePeriodSeconds", 30)
        pod_spec.setdefault("dnsPolicy", "ClusterFirst")
        pod_spec.setdefault("schedulerName", "default-scheduler")
        pod_spec.setdefault("securityContext", {})
        for container in pod_spec["containers"]:
            image = container.get("image") or ""
            latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
            container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            container.setdefault("resources", {})

    def _delete_options(self, request: RecordedRequest) -> tuple[str | None, float | None]:
        """(propagationPolicy, gracePeriodSeconds) from the query or the DeleteOptions body."""
        body = request.body if isinstance(request.body, dict) else {}
        policy = request.query.get("propagationPolicy") or body.get("propagationPolicy")
        if body.get("orphanDependents") is not None and policy is None:
            policy = "Orphan" if body["orphanDependents"] else "Background"
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise _bad_request(f'unsupported propagationPolicy "{policy}"')
        grace = request.query.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
        return policy, None if grace is None else float(grace)

    def _delete_job(self, request: RecordedRequest, namespace: str, name: str) -> _Reply:
        run = self._find_job(namespace, name)
        policy, grace = self._delete_options(request)
        headers = {} if policy else {"Warning": _DEFAULT_DELETE_WARNING}
        returned = self._remove_job(run, policy or "Orphan", grace)
        if policy == "Background":
            details = {"name": name, "group": "batch", "kind": "jobs", "uid": run.uid}
            status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
            return _Reply(HTTPStatus.OK, {**status, "details": details}, headers=headers)
        return _Reply(HTTPStatus.OK, self._job_reply(returned), headers=headers)

    def _delete_jobs(self, request: RecordedRequest, namespace: str) -> _Reply:
        labels = _label_selector(request.query.get("labelSelector"))
        fields = _field_selector(request.query.get("fieldSelector"), "Job")
        policy, grace = self._delete_options(request)
        deleted = [
            self._remove_job(run, policy or "Orphan", grace)
            for run in list(self._jobs.values())
            if run.key[0] == namespace
            and labels(run.job["metadata"].get("labels") or {})
            and fields(run.job)
        ]
        headers = {} if policy else {"Warning": _DEFAULT_DELETE_WARNING}
        return _Reply(HTTPStatus.OK, self._list("JobList", "batch/v1", deleted), headers=headers)

    def _remove_job(self, run: _JobRun, policy: str, grace: float | None) -> Json:
        """Deletes a Job with a propagation policy; returns the object as last seen."""
        job = run.job
        job["metadata"].setdefault("deletionTimestamp", _now())
        job["metadata"]["deletionGracePeriodSeconds"] = 0
        pods = self._pods_of(run)
        if policy == "Orphan":
            for pod_run in pods:
                pod_run.pod["metadata"].pop("ownerReferences", None)
                _drop_finalizer(pod_run.pod)
                pod_run.job_uid = None
            job["metadata"]["finalizers"] = ["orphan"]
            snapshot = copy.deepcopy(job)
            del self._jobs[run.uid]
            return snapshot
        for pod_run in pods:
            self._delete_pod(pod_run, grace)
        if policy == "Foreground" and pods:
            job["metadata"]["finalizers"] = ["foregroundDeletion"]
            run.deleting = True
            return job
        snapshot = copy.deepcopy(job)
        del self._jobs[run.uid]
        return snapshot

    # -- routes: pods ------------------------------------------------------------------------

    def _find_pod(self, namespace: str, name: str) -> _PodRun:
        run = self._pods.get((namespace, name))
        if run is None:
            raise _not_found("Pod", name)
        return run

    def _selected_pods(self, request: RecordedRequest, namespace: str | None) -> list[_PodRun]:
        labels = _label_selector(request.query.get("labelSelector"))
        fields = _field_selector(request.query.get("fieldSelector"), "Pod")
        return [
            run
            for run in self._pods.values()
            if (namespace is None or run.key[0] == namespace)
            and labels(run.pod["metadata"].get("labels") or {})
            and fields(run.pod)
        ]

    def _list_pods(self, request: RecordedRequest, namespace: str | None = None) -> _Reply:
        items = [run.pod for run in self._selected_pods(request, namespace)]
        return _Reply(HTTPStatus.OK, self._list("PodList", "v1", items))

    def _read_pod(self, request: RecordedRequest, namespace: str, name: str) -> _Reply:
        pod = self._find_pod(namespace, name).pod
        return _Reply(HTTPStatus.OK, {"kind": "Pod", "apiVersion": "v1", **pod})

    def _delete_pod_route(self, request: RecordedRequest, namespace: str, name: str) -> _Reply:
        run = self._find_pod(namespace, name)
        _, grace = self._delete_options(request)
        self._delete_pod(run, grace)
        return _Reply(HTTPStatus.OK, {"kind": "Pod", "apiVersion": "v1", **run.pod})

    def _delete_pods(self, request: RecordedRequest, namespace: str) -> _Reply:
        _, grace = self._delete_options(request)
        runs = self._selected_pods(request, namespace)
        for run in runs:
            self._delete_pod(run, grace)
        return _Reply(HTTPStatus.OK, self._list("PodList", "v1", [run.pod for run in runs]))

    def _read_log(self, request: RecordedRequest, namespace: str, name: str) -> _Reply:
        run = self._find_pod(namespace, name)
        container = run.pod["spec"]["containers"][0]["name"]
        asked = request.query.get("container")
        if asked not in (None, container):
            raise _bad_request(f"container {asked} is not valid for pod {name}")
        if request.query.get("previous") in ("true", "1"):
            raise _bad_request(
                f'previous terminated container "{container}" in pod "{name}" not found'
            )
        if not run.ran and not run.terminal:
            statuses = run.pod["status"].get("containerStatuses") or [{}]
            waiting = statuses[0].get("state", {}).get("waiting", {})
            reason = waiting.get("reason", "ContainerCreating")
            raise _bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {reason}'
            )
        data = run.log_path.read_bytes() if run.ran else b""
        if "limitBytes" in request.query:
            data = data[: int(request.query["limitBytes"])]
        text = data.decode("utf-8", "replace")
        if "tailLines" in request.query:
            lines = text.splitlines(keepends=True)
            tail = int(request.query["tailLines"])
            text = "".join(lines[-tail:] if tail else [])
        return _Reply(HTTPStatus.OK, text, content_type="text/plain")

    # -- the controller loop -----------------------------------------------------------------

    def _control_loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._tick(time.monotonic())
            except Exception:  # keep supervising; report on exit
                error = traceback.format_exc()
                if error not in self.errors and len(self.errors) < 20:
                    self.errors.append(error)
            self._wake.wait(self.TICK_SECONDS)
            self._wake.clear()

    def _send(self, run: _PodRun, sig: int) -> None:
        """Signals a pod's process group.

        Only under the lock, while the main process is not reaped (reaping also happens under
        the lock), so the process group id cannot have been reused by an unrelated process.
        """
        if run.alive:
            assert run.process is not None
            _signal_group(run.process.pid, sig)

    def _tick(self, now: float) -> None:
        for run in list(self._pods.values()):
            self._supervise(run, now)
        for job_run in list(self._jobs.values()):
            self._sync_job(job_run, now)
        for run in list(self._pods.values()):
            if run.deleting and run.terminal and (run.counted or self._owner(run) is None):
                del self._pods[run.key]
            elif run.phase == "Pending" and not run.deleting:
                self._try_start(run)
        for obj in [r.job for r in self._jobs.values()] + [r.pod for r in self._pods.values()]:
            uid = obj["metadata"]["uid"]
            fingerprint = _fingerprint(obj)
            if self._fingerprints.get(uid) != fingerprint:
                obj["metadata"]["resourceVersion"] = self._next_version()
                self._fingerprints[uid] = _fingerprint(obj)

    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _owner(self, run: _PodRun) -> _JobRun | None:
        return self._jobs.get(run.job_uid) if run.job_uid else None

    def _pods_of(self, job_run: _JobRun) -> list[_PodRun]:
        return [run for run in self._pods.values() if run.job_uid == job_run.uid]

    # -- pods --------------------------------------------------------------------------------

    def _supervise(self, run: _PodRun, now: float) -> None:
        """Notices a pod process's exit and escalates overdue kills."""
        if not run.alive:
            return
        assert run.process is not None
        if _still_running(run):
            if run.kill_at is not None and now >= run.kill_at:
                self._send(run, signal.SIGKILL)
                run.kill_at = None
            return
        # The main process exited but is not reaped yet, so its process group id is still
        # ours: kill what is left of the "container", then reap.
        _signal_group(run.process.pid, signal.SIGKILL)
        code = run.process.wait()
        run.exited = True
        exit_code = code if code >= 0 else 128 - code
        self._terminate(run, exit_code, "Completed" if exit_code == 0 else "Error")

    def _delete_pod(self, run: _PodRun, grace: float | None) -> None:
        """Marks a pod deleted and stops its process: SIGTERM, SIGKILL after the grace."""
        metadata = run.pod["metadata"]
        if grace is None:
            grace = float(run.pod["spec"].get("terminationGracePeriodSeconds", 30))
        if run.deleting and grace >= float(metadata.get("deletionGracePeriodSeconds", 0)):
            return
        metadata["deletionTimestamp"] = _now()
        metadata["deletionGracePeriodSeconds"] = int(grace)
        if run.alive:
            if grace <= 0:
                self._send(run, signal.SIGKILL)
            else:
                self._send(run, signal.SIGTERM)
                run.kill_at = time.monotonic() + min(grace, self.MAX_GRACE_SECONDS)
        elif not run.terminal:
            # Never started: nothing to kill; the pod ends Failed.
            self._terminate(run, 137, "ContainerStatusUnknown", started=False)

    def _create_pod(self, job_run: _JobRun) -> None:
        job = job_run.job
        namespace, job_name = job_run.key
        generate_name = f"{job_name[:58]}-"
        name = generate_name + _suffix()
        while (namespace, name) in self._pods:
            name = generate_name + _suffix()
        template = job["spec"]["template"]
        uid = str(uuid.uuid4())
        pod_metadata: Json = {
            "name": name,
            "generateName": generate_name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": self._next_version(),
            "creationTimestamp": _now(),
            "labels": dict(template["metadata"].get("labels") or {}),
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": job_name,
                    "uid": job_run.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "finalizers": [JOB_TRACKING_FINALIZER],
        }
        if template["metadata"].get("annotations"):
            pod_metadata["annotations"] = dict(template["metadata"]["annotations"])
        spec = copy.deepcopy(template["spec"])
        spec.setdefault("serviceAccountName", spec.get("serviceAccount", "default"))
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        container = spec["containers"][0]
        pod: Json = {
            "metadata": pod_metadata,
            "spec": spec,
            "status": {
                "phase": "Pending",
                "qosClass": "BestEffort",
                "conditions": [],
                "containerStatuses": [
                    _container_status(
                        container, {"waiting": {"reason": "ContainerCreating"}}, ready=False
                    )
                ],
            },
        }
        directory = self.workdir / "pods" / f"{namespace}.{name}"
        directory.mkdir(parents=True)
        run = _PodRun(pod, job_run.uid, job_run.pods_created, directory)
        job_run.pods_created += 1
        self._pods[run.key] = run
        self._fingerprints[uid] = _fingerprint(pod)

    def _try_start(self, run: _PodRun) -> None:
        """Schedules a pending pod, then starts its container if its inputs are ready."""
        pod, status = run.pod, run.pod["status"]
        container = pod["spec"]["containers"][0]
        try:
            host_dirs = self._volume_dirs(run)
        except _Unschedulable as why:
            _set_pod_condition(
                pod, _condition("PodScheduled", "Unschedulable", str(why), status="False")
            )
            return
        if "nodeName" not in pod["spec"]:
            pod["spec"]["nodeName"] = NODE_NAME
            status.update(hostIP=HOST_IP, hostIPs=[{"ip": HOST_IP}], startTime=_now())
            _set_pod_condition(pod, _condition("PodScheduled", "", "", status="True"))
            _set_pod_condition(pod, _condition("Initialized", "", "", status="True"))
        try:
            argv, env, cwd = self._container_process(run, container, host_dirs)
        except _WaitingError as waiting:
            state = {"waiting": {"reason": waiting.reason, "message": waiting.message}}
            status["containerStatuses"] = [_container_status(container, state, ready=False)]
            return
        if not run.fault_checked:
            run.fault_checked = True
            decision = None
            if self.fault is not None:
                try:
                    job_run = self._owner(run)
                    job = copy.deepcopy(self._job_reply(job_run.job)) if job_run else {}
                    decision = self.fault(job, run.index)
                except Exception:
                    self.errors.append("fault() raised:\n" + traceback.format_exc())
                    decision = "fail"
            if decision == "fail":
                self._terminate(run, 1, "Error")
                return
            if decision == "evict":
                self._terminate(run, 137, "Error")
                status.update(reason="Evicted", message=_EVICTION_MESSAGE)
                _set_pod_condition(
                    pod, _condition("DisruptionTarget", "TerminationByKubelet", _EVICTION_MESSAGE)
                )
                return
            if decision == "hang":
                argv = list(_HANG)
            elif decision is not None:
                raise ValueError(f"fault() returned {decision!r}; expected fail/evict/hang/None")
        if not argv:
            self._terminate(
                run,
                128,
                "StartError",
                message="the stand-in cannot run image entrypoints: the container needs a command",
            )
            return
        try:
            with run.log_path.open("wb") as log:
                run.process = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: killable with its children
                )
        except OSError as error:
            self._terminate(
                run,
                128,
                "StartError",
                message=f"failed to create containerd task: failed to create shim task: OCI "
                f"runtime create failed: exec: {argv[0]!r}: {error.strerror or error}",
            )
            return
        run.ran = True
        now = _now()
        status["phase"] = "Running"
        status.update(podIP=HOST_IP, podIPs=[{"ip": HOST_IP}])
        state = {"running": {"startedAt": now}}
        status["containerStatuses"] = [
            _container_status(container, state, ready=True, started=True, run=run)
        ]
        for kind in ("PodReadyToStartContainers", "ContainersReady", "Ready"):
            _set_pod_condition(pod, _condition(kind, "", "", status="True"))

    def _terminate(
        self,
        run: _PodRun,
        exit_code: int,
        reason: str,
        *,
        message: str | None = None,
        started: bool = True,
    ) -> None:
        """Moves a pod to Succeeded/Failed with a terminated container state."""
        pod, status = run.pod, run.pod["status"]
        container = pod["spec"]["containers"][0]
        now = _now()
        previous = (status.get("containerStatuses") or [{}])[0].get("state", {})
        started_at = previous.get("running", {}).get("startedAt", now)
        terminated: Json = {"exitCode": exit_code, "reason": reason, "finishedAt": now}
        if started:
            terminated["startedAt"] = started_at
        if message:
            terminated["message"] = message
        if run.process is not None:
            terminated["containerID"] = f"standin://{run.process.pid}"
        status["phase"] = "Succeeded" if exit_code == 0 else "Failed"
        status.setdefault("startTime", now)
        status["containerStatuses"] = [
            _container_status(container, {"terminated": terminated}, ready=False, run=run)
        ]
        for kind in ("ContainersReady", "Ready"):
            _set_pod_condition(pod, _condition(kind, "PodCompleted", "", status="False"))
        _set_pod_condition(pod, _condition("PodReadyToStartContainers", "", "", status="False"))

    def _volume_dirs(self, run: _PodRun) -> dict[str, Path]:
        """Host directory of each pod volume (raises ``_Unschedulable`` for a missing PVC)."""
        dirs: dict[str, Path] = {}
        for volume in run.pod["spec"].get("volumes") or []:
            name = volume["name"]
            if "emptyDir" in volume:
                dirs[name] = run.directory / "volumes" / name
                dirs[name].mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if claim not in self.volumes:
                    raise _Unschedulable(
                        f'0/1 nodes are available: persistentvolumeclaim "{claim}" not found. '
                        "preemption: 0/1 nodes are available: 1 Preemption is not helpful "
                        "for scheduling."
                    )
                dirs[name] = self.volumes[claim]
                dirs[name].mkdir(parents=True, exist_ok=True)
            elif "hostPath" in volume:
                dirs[name] = Path(volume["hostPath"]["path"])
            elif "secret" in volume:
                source = volume["secret"]
                data = self.secrets.get(source.get("secretName", ""))
                directory = run.directory / "volumes" / name
                directory.mkdir(parents=True, exist_ok=True)
                if data is None and not source.get("optional"):
                    raise _Unschedulable(
                        f'MountVolume.SetUp failed for volume "{name}" : secret '
                        f'"{source.get("secretName")}" not found'
                    )
                items = source.get("items") or [{"key": k, "path": k} for k in data or {}]
                for item in items:
                    if data is not None and item["key"] in data:
                        target = directory / item["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_text(data[item["key"]])
                dirs[name] = directory
            else:
                kinds = sorted(set(volume) - {"name"})
                raise _Unschedulable(f"volume {name!r}: type {kinds} not supported by stand-in")
        return dirs

    def _container_process(
        self, run: _PodRun, container: Json, host_dirs: dict[str, Path]
    ) -> tuple[list[str], dict[str, str], Path]:
        """argv, environment and working directory for a pod's container process."""
        pod = run.pod
        namespace = pod["metadata"]["namespace"]
        defined: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                ref = source["secretRef"]
                data = self.secrets.get(ref.get("name", ""))
                if data is None:
                    if ref.get("optional"):
                        continue
                    raise _WaitingError(
                        "CreateContainerConfigError", f'secret "{ref.get("name")}" not found'
                    )
                defined.update(
                    {prefix + k: v for k, v in data.items() if _ENV_NAME.fullmatch(prefix + k)}
                )
            elif "configMapRef" in source:
                ref = source["configMapRef"]
                if not ref.get("optional"):
                    raise _WaitingError(
                        "CreateContainerConfigError", f'configmap "{ref.get("name")}" not found'
                    )
        for env in container.get("env") or []:
            name = env["name"]
            if "valueFrom" not in env:
                defined[name] = _expand(env.get("value", ""), defined)
                continue
            source = env["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                data = self.secrets.get(ref.get("name", ""))
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    message = (
                        f'secret "{ref.get("name")}" not found'
                        if data is None
                        else f"couldn't find key {ref['key']} in Secret "
                        f"{namespace}/{ref.get('name')}"
                    )
                    raise _WaitingError("CreateContainerConfigError", message)
                defined[name] = data[ref["key"]]
            elif "fieldRef" in source:
                defined[name] = _field_value(pod, source["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                if not ref.get("optional"):
                    raise _WaitingError(
                        "CreateContainerConfigError", f'configmap "{ref.get("name")}" not found'
                    )
            else:
                defined[name] = ""  # resourceFieldRef: no resources here
        argv = [_expand(a, defined) for a in container.get("command") or []]
        argv += [_expand(a, defined) for a in container.get("args") or []]
        mounts = []
        for mount in container.get("volumeMounts") or []:
            host = host_dirs[mount["name"]]
            if mount.get("subPath"):
                host = host / mount["subPath"]
                host.mkdir(parents=True, exist_ok=True)
            mounts.append((mount["mountPath"].rstrip("/") or "/", host))
        rewrite = self._rewriter(mounts)
        env = {**os.environ, **self.extra_env, "HOSTNAME": pod["metadata"]["name"]}
        env["PATH"] = _with_interpreter_dir(env.get("PATH", os.defpath))
        env.update({k: rewrite(v) for k, v in defined.items()})
        if container.get("workingDir"):
            cwd = Path(rewrite(container["workingDir"]))
        else:
            cwd = run.directory / "scratch"
        cwd.mkdir(parents=True, exist_ok=True)
        return [rewrite(a) for a in argv], env, cwd

    def _rewriter(self, mounts: list[tuple[str, Path]]) -> Callable[[str], str]:
        """A function that rewrites container mount paths in a string to host directories."""
        mounts = [(path, host) for path, host in mounts if path != "/"]
        if not mounts:
            return lambda value: value
        by_path = dict(mounts)
        alternatives = "|".join(re.escape(p) for p in sorted(by_path, key=len, reverse=True))
        pattern = re.compile(rf"(?<![\w./-])({alternatives})(?=/|$|[^\w.-])")
        # The running Python is a host path too (a checkout under /tmp must keep its venv).
        python = (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable))
        keep = [self.workdir, *self.volumes.values(), *self.host_paths, *python]
        keep = [Path(os.path.abspath(k)) for k in keep]

        def replace(match: re.Match[str]) -> str:
            token = re.match(r"[^\s:;,=\"']*", match.string[match.start() :])
            candidate = Path(os.path.abspath(token[0] if token else match[1]))
            if any(candidate == k or k in candidate.parents for k in keep):
                return match[0]  # already a host path the test handed over
            return str(by_path[match[1]])

        return lambda value: pattern.sub(replace, value)

    # -- jobs --------------------------------------------------------------------------------

    def _sync_job(self, job_run: _JobRun, now: float) -> None:
        """One pass of the Job controller over one Job."""
        job, spec = job_run.job, job_run.job["spec"]
        status = job["status"]
        pods = self._pods_of(job_run)
        if job_run.deleting:  # foreground deletion: gone once its pods are
            for run in pods:
                run.counted = run.counted or run.terminal
            if not pods:
                del self._jobs[job_run.uid]
            return
        finished = job_run.finished is not None
        failure: tuple[str, str] | None = None
        for run in pods:
            if run.counted or not run.terminal:
                continue
            run.counted = True
            _drop_finalizer(run.pod)
            if finished or job_run.target is not None:
                if run.phase == "Failed" and not finished:
                    status["failed"] = status.get("failed", 0) + 1
                continue
            if run.phase == "Succeeded":
                status["succeeded"] = status.get("succeeded", 0) + 1
                continue
            action, message = _pod_failure_action(spec, run.pod)
            if action == "Ignore":
                continue
            status["failed"] = status.get("failed", 0) + 1
            if action == "FailJob":
                failure = ("PodFailurePolicy", message)
        suspended = bool(spec.get("suspend"))
        if not finished and job_run.target is None and not suspended:
            if job_run.started is None:
                job_run.started = now
                status["startTime"] = _now()
            deadline = spec.get("activeDeadlineSeconds")
            if status.get("succeeded", 0) >= spec.get("completions", 1):
                job_run.target = (
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                )
            elif failure is not None:
                job_run.target = ("Failed", *failure)
            elif status.get("failed", 0) > spec.get("backoffLimit", 6):
                job_run.target = (
                    "Failed",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )
            elif deadline is not None and now - job_run.started >= deadline:
                job_run.target = (
                    "Failed",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                )
            if job_run.target is not None:
                kind, reason, message = job_run.target
                interim = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
                _add_job_condition(job, _condition(interim, reason, message))
                for run in pods:
                    if not run.terminal:
                        self._delete_pod(run, None)
        if suspended and not finished and not _has_condition(job, "Suspended"):
            _add_job_condition(job, _condition("Suspended", "JobSuspended", "Job suspended"))
        not_done = [run for run in pods if not run.terminal]
        if job_run.target is not None and not finished and not not_done:
            kind, reason, message = job_run.target
            _add_job_condition(job, _condition(kind, reason, message))
            if kind == "Complete":
                status["completionTime"] = _now()
            job_run.finished = now
            finished = True
        if not finished and job_run.target is None and not suspended:
            blocking = [
                run
                for run in not_done
                if not run.deleting or spec.get("podReplacementPolicy") == "Failed"
            ]
            if not blocking:
                self._create_pod(job_run)
                pods = self._pods_of(job_run)
                not_done = [run for run in pods if not run.terminal]
        active = [run for run in not_done if not run.deleting]
        status["active"] = 0 if finished else len(active)
        status["ready"] = 0 if finished else sum(1 for run in active if run.phase == "Running")
        status["terminating"] = sum(1 for run in not_done if run.deleting)
        status["uncountedTerminatedPods"] = {}
        for counter in ("active", "failed", "succeeded"):
            if not status.get(counter):
                status.pop(counter, None)  # zero counters are omitted, as in the real API
        ttl = spec.get("ttlSecondsAfterFinished")
        if finished and ttl is not None and now - (job_run.finished or now) >= ttl:
            self._remove_job(job_run, "Foreground", None)


# --------------------------------------------------------------------------------------------
# module helpers used by the stand-in


def _with_interpreter_dir(path: str) -> str:
    """``PATH`` with the running interpreter's directory first (the venv's console scripts)."""
    scripts = str(Path(sys.executable).parent)
    return path if scripts in path.split(os.pathsep) else os.pathsep.join([scripts, path])


def _fingerprint(obj: Json) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _still_running(run: _PodRun) -> bool:
    """Whether a pod's main process still runs, without reaping it (keeps its pgid ours)."""
    assert run.process is not None
    try:
        info = os.waitid(os.P_PID, run.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return run.process.poll() is None
    return info is None


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _drop_finalizer(pod: Json) -> None:
    finalizers = [f for f in pod["metadata"].get("finalizers", []) if f != JOB_TRACKING_FINALIZER]
    if finalizers:
        pod["metadata"]["finalizers"] = finalizers
    else:
        pod["metadata"].pop("finalizers", None)


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known variables are replaced, ``$$`` escapes ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return env.get(match[1], match[0])

    return _VAR_REF.sub(replace, value)


def _field_value(pod: Json, path: str) -> str:
    """The value of a downward-API ``fieldRef``."""
    metadata = pod["metadata"]
    if match := re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path):
        return (metadata.get(match[1]) or {}).get(match[2], "")
    values = {
        "metadata.name": metadata["name"],
        "metadata.namespace": metadata["namespace"],
        "metadata.uid": metadata["uid"],
        "spec.nodeName": pod["spec"].get("nodeName", NODE_NAME),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.podIP": HOST_IP,
        "status.hostIP": HOST_IP,
    }
    return values.get(path, "")


def _container_status(
    container: Json,
    state: Json,
    *,
    ready: bool,
    started: bool = False,
    run: _PodRun | None = None,
) -> Json:
    status: Json = {
        "name": container["name"],
        "image": container.get("image") or "",
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "started": started,
        "state": state,
    }
    if run is not None and run.process is not None:
        status["containerID"] = f"standin://{run.process.pid}"
    return status


def _set_pod_condition(pod: Json, condition: Json) -> None:
    """Adds or replaces a pod condition (keeping the transition time if status is unchanged)."""
    condition = {k: v for k, v in condition.items() if v != "" and k != "lastProbeTime"}
    conditions = pod["status"].setdefault("conditions", [])
    for index, existing in enumerate(conditions):
        if existing["type"] == condition["type"]:
            if existing.get("status") == condition["status"]:
                condition["lastTransitionTime"] = existing.get("lastTransitionTime")
            conditions[index] = condition
            return
    conditions.append(condition)


def _add_job_condition(job: Json, condition: Json) -> None:
    job["status"].setdefault("conditions", []).append(condition)


def _pod_failure_action(spec: Json, pod: Json) -> tuple[str, str]:
    """The ``podFailurePolicy`` action for a failed pod ("Count" when no rule matches)."""
    policy = spec.get("podFailurePolicy") or {}
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    terminated = [
        (cs["name"], cs["state"]["terminated"]["exitCode"])
        for cs in pod["status"].get("containerStatuses") or []
        if "terminated" in cs.get("state", {})
    ]
    for index, rule in enumerate(policy.get("rules") or []):
        action = rule["action"]
        if "onExitCodes" in rule:
            requirement = rule["onExitCodes"]
            values = set(requirement.get("values") or [])
            for container_name, code in terminated:
                if requirement.get("containerName") not in (None, container_name) or code == 0:
                    continue
                matched = code in values if requirement["operator"] == "In" else code not in values
                if matched:
                    return action, (
                        f"Container {container_name} for pod {namespace}/{name} failed with "
                        f"exit code {code} matching {action} rule at index {index}"
                    )
        for pattern in rule.get("onPodConditions") or []:
            wanted = pattern.get("status", "True")
            for condition in pod["status"].get("conditions") or []:
                if condition["type"] == pattern["type"] and condition["status"] == wanted:
                    return action, (
                        f"Pod {namespace}/{name} has condition {pattern['type']} matching "
                        f"{action} rule at index {index}"
                    )
    return "Count", ""
