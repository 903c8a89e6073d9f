"""Talks to a Kubeflow Pipelines API: upload a compiled pipeline, run it, schedule it.

Everything goes through the official ``kfp.Client``, so authentication and the request shapes
are KFP's own; this module adds what a CLI needs on top:

* **Idempotent uploads.** ``upload`` never fails because a pipeline already exists: it adds the
  package as a new pipeline *version* named ``<pipeline>-<sha256[:12]>``, and reuses a version
  with the same content instead of piling up duplicates. Pipelines are uploaded as *shared*
  (not namespaced) pipelines, because ``kfp.Client.get_pipeline_id`` only looks those up.
* **One-line errors.** HTTP errors and unreachable hosts become :class:`KfpError` (a
  :class:`~shieldtune.errors.ShieldtuneError`) whose message names the status and reason;
  bad input becomes :class:`~shieldtune.errors.ConfigError` before anything is sent.
* **The bearer token stays secret.** It is never part of ``repr(target)``, of an error message
  or of a log line.
* **Bounded waits.** ``kfp.Client`` sets no timeout at all; here every request gets a 10 s
  connect / 120 s read timeout, and the health check ``kfp.Client`` makes at construction
  (only when no namespace is known) is one attempt with a 10 s read timeout instead of kfp's
  five attempts 5 s apart. A refused connection or unknown host therefore fails in well
  under a second; a host that silently drops packets in about 40 s (urllib3 tries a connect
  four times); a host that accepts connections but never answers in 40 s (health check) or
  120 s (first upload, when a namespace is given).
* **Quiet stdout.** ``kfp.Client`` prints "... details: <link>" lines; they are logged at INFO
  on this module's logger instead, so a CLI's stdout stays machine-readable.

Not thread-safe: stdout capture and warning filters are process-wide while a call runs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kfp
import urllib3
import yaml
from kfp_server_api.exceptions import ApiException

from shieldtune.config import load_yaml
from shieldtune.errors import ConfigError, ShieldtuneError, first_line, is_existing_file

log = logging.getLogger(__name__)

ENV_HOST = "KFP_HOST"
ENV_NAMESPACE = "KFP_NAMESPACE"
ENV_TOKEN = "KFP_BEARER_TOKEN"
ENV_EXPERIMENT = "KFP_EXPERIMENT"
DEFAULT_EXPERIMENT = "shieldtune"

#: (connect, read) seconds for every API request; kfp.Client itself sets no timeout at all.
REQUEST_TIMEOUT = (10.0, 120.0)
_HTTP_CONFLICT = 409
_MAX_DETAIL = 200


class KfpError(ShieldtuneError):
    """The KFP API refused a request or could not be reached.

    ``status`` is the HTTP status code, or ``None`` when no HTTP answer came back (connection
    refused, DNS failure, timeout, TLS error).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class KfpTarget:
    """Where and as whom to talk to KFP, and which experiment runs go into.

    ``namespace`` is the Kubernetes namespace (profile) of a multi-user KFP; leave it ``None``
    for a single-user deployment. ``token`` is sent as ``Authorization: Bearer <token>``; it is
    left out of ``repr`` so that logging a target can't leak it.
    """

    host: str
    namespace: str | None = None
    token: str | None = field(default=None, repr=False)
    experiment: str = DEFAULT_EXPERIMENT

    def __post_init__(self) -> None:
        if not self.host.startswith(("http://", "https://")):
            # kfp.Client would silently prefix https://, which hides a typo'd port-forward URL.
            raise ConfigError(
                f"KFP host {self.host!r} must start with http:// or https:// "
                f"(e.g. http://localhost:8080); check --host / {ENV_HOST}"
            )
        if not self.experiment.strip():
            raise ConfigError(f"KFP experiment name is empty; set {ENV_EXPERIMENT} or omit it")

    @classmethod
    def from_env(
        cls,
        host: str | None = None,
        namespace: str | None = None,
        token: str | None = None,
        experiment: str | None = None,
    ) -> KfpTarget:
        """Builds a target from explicit values, falling back to ``KFP_*`` env variables.

        Explicit arguments (e.g. CLI flags) win; empty strings count as unset, so
        ``KFP_NAMESPACE=`` behaves like no namespace. Tokens come from the environment
        rather than a flag so they stay out of shell history and ``ps`` output.
        """

        def pick(value: str | None, env: str) -> str | None:
            return value or os.environ.get(env) or None

        resolved_host = pick(host, ENV_HOST)
        if resolved_host is None:
            raise ConfigError(
                f"no Kubeflow Pipelines host: pass --host or set {ENV_HOST} "
                "(e.g. http://localhost:8080)"
            )
        return cls(
            host=resolved_host,
            namespace=pick(namespace, ENV_NAMESPACE),
            token=pick(token, ENV_TOKEN),
            experiment=pick(experiment, ENV_EXPERIMENT) or DEFAULT_EXPERIMENT,
        )


@dataclass(frozen=True)
class UploadResult:
    """What :func:`upload` left on the server: the pipeline and the version holding the package.

    ``created_pipeline`` is true when this call created the pipeline itself (its first version
    then carries KFP's default name, the pipeline's name), false when it added or reused a
    version of an existing pipeline.
    """

    pipeline_id: str
    version_id: str
    created_pipeline: bool


# -- public operations ---------------------------------------------------------------------


def upload(
    target: KfpTarget, package_path: str | Path, pipeline_name: str, description: str = ""
) -> UploadResult:
    """Uploads a compiled pipeline YAML so that it can be run by version id.

    A new name creates the pipeline. An existing name (KFP answers 409) adds the package as
    version ``f"{pipeline_name}-{sha256(package)[:12]}"``; if a version with that name, or the
    pipeline's first version with identical content, already exists, it is reused, so
    uploading the same package twice is a no-op rather than an error or a duplicate.
    """
    package = _read_package(package_path)
    name = _check_pipeline_name(pipeline_name)
    with _session(target, f"uploading pipeline {name!r}") as client:
        return _upload(client, package, name, description)


def run(
    target: KfpTarget,
    package_path: str | Path,
    pipeline_name: str,
    params: Mapping[str, Any],
    run_name: str | None = None,
    service_account: str | None = None,
) -> str:
    """Uploads the package (see :func:`upload`) and starts one run of that version.

    The run goes into ``target.experiment`` in ``target.namespace``, created if missing.
    Parameters are checked against the pipeline's inputs first, so a typo is a
    ``ConfigError`` here instead of a run that fails on the cluster. Returns the run id.
    """
    package = _read_package(package_path)
    name = _check_pipeline_name(pipeline_name)
    _check_params(package, params)
    run_name = run_name or f"{name}-{_timestamp()}"
    with _session(target, f"starting a run of pipeline {name!r}") as client:
        uploaded = _upload(client, package, name, description="")
        experiment = client.create_experiment(target.experiment, namespace=target.namespace)
        started = client.run_pipeline(
            experiment.experiment_id,
            run_name,
            pipeline_id=uploaded.pipeline_id,
            version_id=uploaded.version_id,
            params=dict(params),
            service_account=service_account,
        )
    log.info("started KFP run %s (%s) of pipeline %s", started.run_id, run_name, name)
    return started.run_id


def schedule(
    target: KfpTarget,
    package_path: str | Path,
    pipeline_name: str,
    cron: str,
    params: Mapping[str, Any],
    job_name: str | None = None,
    service_account: str | None = None,
) -> str:
    """Uploads the package and creates an enabled recurring run of that version.

    ``cron`` is a standard 5-field expression (``"0 3 * * 1"``), converted to KFP's 6-field
    form by a leading ``0`` seconds field, or already a 6-field KFP expression. The recurring
    run has ``max_concurrency=1`` (a slow tuning run never overlaps the next one) and
    ``no_catchup=True`` (a paused schedule doesn't fire a backlog when resumed). Returns the
    recurring run id.
    """
    kfp_cron = to_kfp_cron(cron)
    package = _read_package(package_path)
    name = _check_pipeline_name(pipeline_name)
    _check_params(package, params)
    job_name = job_name or f"{name}-scheduled"
    with _session(target, f"scheduling pipeline {name!r}") as client:
        uploaded = _upload(client, package, name, description="")
        experiment = client.create_experiment(target.experiment, namespace=target.namespace)
        recurring = client.create_recurring_run(
            experiment.experiment_id,
            job_name,
            cron_expression=kfp_cron,
            max_concurrency=1,
            no_catchup=True,
            pipeline_id=uploaded.pipeline_id,
            version_id=uploaded.version_id,
            params=dict(params),
            enabled=True,
            service_account=service_account,
        )
    log.info(
        "created KFP recurring run %s (%s, cron %r) of pipeline %s",
        recurring.recurring_run_id,
        job_name,
        kfp_cron,
        name,
    )
    return recurring.recurring_run_id


def to_kfp_cron(cron: str) -> str:
    """KFP's 6-field cron (seconds first) for a standard 5-field or a 6-field expression.

    KFP's scheduler reads the first field as seconds, so a plain ``"0 3 * * 1"`` passed as is
    would be refused or, worse, mean something else; hence the explicit conversion.
    """
    fields = cron.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise ConfigError(
        f"cron expression {cron!r} has {len(fields)} fields; expected 5 fields "
        "'minute hour day-of-month month day-of-week' (e.g. '0 3 * * 1') "
        "or KFP's 6 fields with seconds first (e.g. '0 0 3 * * 1')"
    )


# -- upload internals ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Package:
    path: Path
    data: bytes
    documents: list[Any]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _read_package(package_path: str | Path) -> _Package:
    path = Path(package_path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(
            f"pipeline package {str(path)!r} must be a compiled pipeline .yaml/.yml file"
        )
    if not is_existing_file(path):
        raise ConfigError(f"pipeline package {str(path)!r} does not exist; compile it first")
    data = path.read_bytes()
    try:
        documents = load_yaml(data, all_documents=True)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"pipeline package {str(path)!r} is not valid YAML: {first_line(error, _MAX_DETAIL)}"
        ) from error
    if not documents or not isinstance(documents[0], dict) or "pipelineInfo" not in documents[0]:
        raise ConfigError(
            f"pipeline package {str(path)!r} is not a compiled KFP pipeline (no pipelineInfo)"
        )
    return _Package(path, data, documents)


def _check_pipeline_name(pipeline_name: str) -> str:
    name = pipeline_name.strip()
    if not name:
        raise ConfigError("pipeline name is empty")
    return name


def _check_params(package: _Package, params: Mapping[str, Any]) -> None:
    """Refuses parameters that the pipeline doesn't declare (KFP may only notice at run time)."""
    root_inputs = package.documents[0].get("root", {}).get("inputDefinitions", {})
    known = set(root_inputs.get("parameters", {}))
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"unknown pipeline parameter(s) {', '.join(unknown)}; "
            f"the pipeline takes: {', '.join(sorted(known)) or 'no parameters'}"
        )


def _upload(client: kfp.Client, package: _Package, name: str, description: str) -> UploadResult:
    try:
        pipeline = client.upload_pipeline(
            str(package.path), pipeline_name=name, description=description or None
        )
    except ApiException as error:
        if error.status != _HTTP_CONFLICT:
            raise
    else:
        # KFP created the pipeline with one version holding the package; upload_pipeline
        # returns only the pipeline, so look that version up.
        versions = client.list_pipeline_versions(pipeline.pipeline_id).pipeline_versions
        if not versions:
            raise KfpError(f"KFP created pipeline {name!r} but lists no version of it")
        log.info("created KFP pipeline %s (%s)", name, pipeline.pipeline_id)
        return UploadResult(pipeline.pipeline_id, versions[0].pipeline_version_id, True)

    try:
        pipeline_id = client.get_pipeline_id(name)
    except ValueError as error:  # more than one pipeline with that display name
        raise KfpError(str(error).strip()) from None
    if pipeline_id is None:
        raise KfpError(
            f"KFP says pipeline {name!r} exists but does not list it as a shared pipeline; "
            "pick another pipeline name"
        )
    version_name = f"{name}-{package.digest[:12]}"
    existing = _matching_version(client, pipeline_id, package, name, version_name)
    if existing is not None:
        log.info("KFP pipeline %s already has this package as version %s", name, existing)
        return UploadResult(pipeline_id, existing, False)
    try:
        version = client.upload_pipeline_version(
            str(package.path),
            pipeline_version_name=version_name,
            pipeline_id=pipeline_id,
            description=description or None,
        )
    except ApiException as error:
        if error.status != _HTTP_CONFLICT:
            raise
        # Someone uploaded the same version between our lookup and our upload.
        existing = _matching_version(client, pipeline_id, package, name, version_name)
        if existing is None:
            raise
        return UploadResult(pipeline_id, existing, False)
    log.info("added version %s to KFP pipeline %s", version_name, name)
    return UploadResult(pipeline_id, version.pipeline_version_id, False)


def _matching_version(
    client: kfp.Client, pipeline_id: str, package: _Package, name: str, version_name: str
) -> str | None:
    """Id of a version that already holds this package, if any.

    Versions this module added are found by their content-hash name. The first version,
    created together with the pipeline, carries KFP's default name (the pipeline's), so it is
    compared by content instead.
    """
    candidates = _versions_named(client, pipeline_id, [version_name, name])
    for version in candidates:
        if version.name == version_name:
            return version.pipeline_version_id
    for version in candidates:
        if version.name == name and _same_spec(version.pipeline_spec, package.documents):
            return version.pipeline_version_id
    return None


def _versions_named(client: kfp.Client, pipeline_id: str, names: list[str]) -> list[Any]:
    """The pipeline's versions with one of these names (version names are unique per pipeline)."""
    # 8 is filter.proto's IN, sent as a number the way kfp.Client sends its own filters.
    predicate = {"operation": 8, "key": "name", "stringValues": {"values": names}}
    response = client.list_pipeline_versions(
        pipeline_id, page_size=len(names), filter=json.dumps({"predicates": [predicate]})
    )
    return list(response.pipeline_versions or [])


def _same_spec(stored: Any, documents: list[Any]) -> bool:
    """Whether KFP's stored spec is this package's (KFP wraps it when a platform spec exists)."""
    local = [documents[0]]
    if len(documents) > 1:
        local.append({"pipeline_spec": documents[0], "platform_spec": documents[1]})
    return _canonical(stored) in {_canonical(doc) for doc in local}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


# -- client and error handling -------------------------------------------------------------


class _Client(kfp.Client):
    """``kfp.Client`` whose construction-time health check is a single, bounded attempt."""

    def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
        # kfp retries this 5x with 5 s sleeps (25 s before a refused connection is reported)
        # and logs a traceback per attempt; one attempt with a timeout is enough for a CLI.
        # The read timeout is short because urllib3 retries a GET's read timeout 3 times.
        timeout = (REQUEST_TIMEOUT[0], min(REQUEST_TIMEOUT[1], 10.0))
        return self._healthz_api.healthz_service_get_healthz(_request_timeout=timeout)


def _connect(target: KfpTarget) -> kfp.Client:
    kwargs: dict[str, Any] = {"host": target.host, "existing_token": target.token}
    if target.namespace:
        kwargs["namespace"] = target.namespace  # also skips the construction-time healthz
    with warnings.catch_warnings():
        # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later versions."
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"kfp\.")
        client = _Client(**kwargs)
    _bound_request_time(client)
    return client


def _bound_request_time(client: kfp.Client) -> None:
    """Gives every request a default timeout (the generated API client sends none)."""
    rest_client = client._healthz_api.api_client.rest_client  # shared by all of kfp's APIs
    request = rest_client.request

    @functools.wraps(request)
    def bounded(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return request(*args, _request_timeout=_request_timeout or REQUEST_TIMEOUT, **kwargs)

    rest_client.request = bounded


@contextlib.contextmanager
def _session(target: KfpTarget, action: str) -> Iterator[kfp.Client]:
    """A connected client; KFP failures inside become one-line ``KfpError``s."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield _connect(target)
    except ApiException as error:
        raise KfpError(_describe_api_error(error, target, action), error.status) from None
    except urllib3.exceptions.HTTPError as error:
        cause = getattr(error, "reason", None) or error
        raise KfpError(
            _scrub(
                f"cannot reach the KFP API at {target.host} while {action} "
                f"({first_line(cause, _MAX_DETAIL)}); check --host / {ENV_HOST} and that it is up",
                target,
            )
        ) from None
    finally:
        for line in printed.getvalue().splitlines():
            if line.strip():
                log.info("kfp: %s", line.strip())


def _describe_api_error(error: ApiException, target: KfpTarget, action: str) -> str:
    if not error.status:  # no HTTP answer: kfp_server_api reports TLS errors as status 0
        return _scrub(
            f"cannot talk to the KFP API at {target.host} while {action}: "
            f"{first_line(error.reason, _MAX_DETAIL)}",
            target,
        )
    message = f"KFP API at {target.host} answered HTTP {error.status} {error.reason or ''}"
    message = f"{message.rstrip()} while {action}"
    detail = _error_detail(error.body)
    if detail:
        message += f": {detail}"
    if error.status in (401, 403):
        message += f" (check {ENV_TOKEN} and {ENV_NAMESPACE})"
    return _scrub(message, target)


def _error_detail(body: Any) -> str:
    """The server's own one-line explanation from a KFP JSON error body, if there is one."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        for key in ("error_details", "message", "error_message", "error"):
            if isinstance(parsed.get(key), str) and parsed[key].strip():
                return first_line(parsed[key], _MAX_DETAIL)
        return ""
    return first_line(body, _MAX_DETAIL) if isinstance(body, str) else ""


def _scrub(message: str, target: KfpTarget) -> str:
    """Belt and braces: a server may echo the Authorization header back in an error body."""
    if target.token:
        message = message.replace(target.token, "***")
    return " ".join(message.split())


__all__ = [
    "KfpError",
    "KfpTarget",
    "UploadResult",
    "run",
    "schedule",
    "to_kfp_cron",
    "upload",
]
