"""An in-memory stand-in for the Kubeflow Pipelines v2beta1 REST API, for tests.

No cluster exists here, so tests start this server and point the *real* ``kfp.Client`` at it
over real HTTP. The server keeps pipelines, pipeline versions, experiments, runs and recurring
runs in dicts, answers with JSON shaped like ``kfp_server_api``'s ``V2beta1*`` models (so the
generated client deserializes it), and records every request it receives in ``.requests``::

    with KfpStandIn() as kfp_server:
        client = kfp.Client(host=kfp_server.url, namespace="team", existing_token="tok")
        client.upload_pipeline("pipeline.yaml", pipeline_name="demo")
        upload = kfp_server.last_request("POST", "/apis/v2beta1/pipelines/upload")
        assert upload.files["uploadfile"].data == Path("pipeline.yaml").read_bytes()

Only what the project's KFP code needs is served; any other route answers 404 (and is
recorded, so a test can see what was attempted). Simplifications, on purpose:

* lists return every match in creation order: ``page_size``/``sort_by`` are ignored and
  there is never a ``next_page_token``;
* like KFP's protojson output, unset fields are left out of replies, so the client reads an
  empty list or string as ``None``;
* ``filter`` understands the predicates ``EQUALS``, ``NOT_EQUALS``, ``IN`` and ``IS_SUBSTRING``
  (given by name or by enum number, as ``kfp.Client`` sends them) on the resource's own fields;
* uploads must be a compiled pipeline YAML (``.yaml``/``.yml``); tarballs and zips are refused;
* runs never progress by themselves; a test moves them with ``set_run_state``;
* a run whose parameters are not inputs of the pipeline is refused with 400 (stricter than
  KFP, which may only fail such a run once it executes).
"""

from __future__ import annotations

import copy
import dataclasses
import email.parser
import email.policy
import json
import re
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Any

import yaml

from .http_standin import RequestLog, StandInHandler

API = "/apis/v2beta1"

# gRPC status codes, which KFP puts in the "code" field of JSON errors.
_GRPC_INVALID_ARGUMENT = 3
_GRPC_NOT_FOUND = 5
_GRPC_ALREADY_EXISTS = 6

# filter.proto's Predicate.Operation, by name and number (kfp.Client sends either).
_OPERATIONS = {
    1: "EQUALS",
    2: "NOT_EQUALS",
    8: "IN",
    9: "IS_SUBSTRING",
}


@dataclasses.dataclass(frozen=True)
class UploadedFile:
    """One file part of a multipart/form-data request."""

    filename: str | None
    content_type: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request the stand-in received, as the client sent it.

    ``headers`` has lower-cased names (HTTP header names are case-insensitive); ``query`` keeps
    the last value of each parameter; ``json`` is the parsed JSON body (``None`` if the body
    was not JSON); ``files``/``form`` are the parts of a multipart body.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    files: dict[str, UploadedFile] = dataclasses.field(default_factory=dict)
    form: dict[str, str] = dataclasses.field(default_factory=dict)
    status: int = 0


class ApiError(Exception):
    """Raised by a route handler to answer with an HTTP error and a JSON body."""

    def __init__(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


def _rpc_error(status: HTTPStatus, grpc_code: int, message: str) -> ApiError:
    """An error shaped like KFP's grpc-gateway errors (``google.rpc.Status`` plus ``error``)."""
    return ApiError(
        status, {"error": message, "code": grpc_code, "message": message, "details": []}
    )


def _upload_error(status: HTTPStatus, message: str, details: str) -> ApiError:
    """An error shaped like KFP's upload endpoints' errors (plain HTTP handlers)."""
    return ApiError(status, {"error_message": message, "error_details": details})


def _not_found(what: str, ident: str) -> ApiError:
    return _rpc_error(
        HTTPStatus.NOT_FOUND, _GRPC_NOT_FOUND, f"{what} {ident} not found: NotFoundError"
    )


def _invalid(message: str) -> ApiError:
    return _rpc_error(HTTPStatus.BAD_REQUEST, _GRPC_INVALID_ARGUMENT, message)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_id() -> str:
    return str(uuid.uuid4())


def _omit_unset(resource: dict[str, Any]) -> dict[str, Any]:
    """Drops unset fields, as KFP's protojson output does (an empty list reads as ``None``)."""
    return {key: value for key, value in resource.items() if value not in (None, "", [])}


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, UploadedFile], dict]:
    """Splits a multipart/form-data body into its file parts and its plain fields."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise _upload_error(HTTPStatus.BAD_REQUEST, "Failed to read pipeline", "not multipart")
    files: dict[str, UploadedFile] = {}
    form: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if part.get_filename() is None:
            form[name] = data.decode("utf-8")
        else:
            files[name] = UploadedFile(part.get_filename(), part.get_content_type(), data)
    return files, form


def _read_pipeline_spec(upload: UploadedFile | None) -> dict[str, Any]:
    """The PipelineSpec (first YAML document) of an uploaded, compiled pipeline."""
    if upload is None:
        raise _upload_error(
            HTTPStatus.BAD_REQUEST, "Failed to read pipeline from file", "no uploadfile part"
        )
    if not (upload.filename or "").endswith((".yaml", ".yml")):
        raise _upload_error(
            HTTPStatus.BAD_REQUEST,
            "Failed to read a pipeline spec file",
            f"the stand-in only accepts .yaml/.yml packages, got {upload.filename!r}",
        )
    try:
        spec = next(yaml.safe_load_all(upload.data), None)
    except yaml.YAMLError as error:
        raise _upload_error(
            HTTPStatus.BAD_REQUEST, "Failed to read a pipeline spec file", str(error)
        ) from error
    if not isinstance(spec, dict) or "pipelineInfo" not in spec or "root" not in spec:
        raise _upload_error(
            HTTPStatus.BAD_REQUEST,
            "Failed to read a pipeline spec file",
            "not a compiled pipeline (no pipelineInfo/root)",
        )
    return spec


def _input_parameters(pipeline_spec: dict[str, Any]) -> set[str]:
    """Names of a pipeline's run parameters (its root input definitions)."""
    if "pipeline_spec" in pipeline_spec:  # kfp.Client wraps it when a platform spec exists
        pipeline_spec = pipeline_spec["pipeline_spec"]
    root_inputs = pipeline_spec.get("root", {}).get("inputDefinitions", {})
    return set(root_inputs.get("parameters", {}))


def _matches(resource: dict[str, Any], predicate: dict[str, Any]) -> bool:
    operation = predicate.get("operation")
    operation = _OPERATIONS.get(operation, operation)  # type: ignore[arg-type]
    key = predicate.get("key")
    if key not in resource:
        raise _invalid(f"Invalid input error: filter key {key!r} is not supported")
    actual = resource[key]
    if operation == "IN":
        values = predicate.get("stringValues") or predicate.get("string_values") or {}
        return actual in values.get("values", [])
    expected = next(
        (
            predicate[field]
            for field in ("stringValue", "string_value", "intValue", "int_value")
            if field in predicate
        ),
        None,
    )
    if operation == "EQUALS":
        return actual == expected
    if operation == "NOT_EQUALS":
        return actual != expected
    if operation == "IS_SUBSTRING":
        return str(expected) in str(actual)
    raise _invalid(f"Invalid input error: filter operation {operation!r} is not supported")


def _apply_filter(resources: list[dict[str, Any]], raw_filter: str | None) -> list[dict]:
    if not raw_filter:
        return resources
    try:
        predicates = json.loads(raw_filter).get("predicates", [])
    except (ValueError, AttributeError) as error:
        raise _invalid(f"Invalid input error: cannot parse filter {raw_filter!r}") from error
    return [r for r in resources if all(_matches(r, p) for p in predicates)]


def _page(field: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    """One page holding every match (the stand-in never paginates)."""
    return {field: [_omit_unset(r) for r in resources], "total_size": len(resources)}


class _Handler(StandInHandler):
    server: _Server

    def _handle(self) -> None:
        raw = self.read_request()
        body = raw.body
        content_type = raw.headers.get("content-type", "")
        request = RecordedRequest(raw.method, raw.path, raw.query, raw.headers, body)
        try:
            if content_type.startswith("multipart/form-data"):
                files, form = _parse_multipart(content_type, body)
                request = dataclasses.replace(request, files=files, form=form)
            elif body:
                try:
                    request = dataclasses.replace(request, json=json.loads(body))
                except ValueError as error:
                    raise _invalid(f"Invalid input error: body is not JSON: {error}") from error
            status, payload = HTTPStatus.OK, self.server.standin.dispatch(request)
        except ApiError as error:
            status, payload = error.status, error.body
        self.server.standin.record(dataclasses.replace(request, status=int(status)))
        self.reply(status, json.dumps(payload).encode("utf-8"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, standin: KfpStandIn) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.standin = standin


Route = tuple[str, re.Pattern[str], Callable[..., dict[str, Any]]]


class KfpStandIn(RequestLog[RecordedRequest]):
    """A fake KFP API server on 127.0.0.1 (ephemeral port), served from a background thread.

    Use it as a context manager, or call ``start()`` and ``stop()``. ``url`` is the value for
    ``kfp.Client(host=...)``. State is in the public dicts (``pipelines``, ``versions``,
    ``experiments``, ``runs``, ``recurring_runs``, keyed by id) and received requests are in
    ``requests``.
    """

    def __init__(self, *, multi_user: bool = False) -> None:
        super().__init__()
        self.multi_user = multi_user
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[Route] = [
            ("GET", re.compile(r"/healthz"), self._healthz),
            ("POST", re.compile(r"/pipelines/upload"), self._upload_pipeline),
            ("POST", re.compile(r"/pipelines/upload_version"), self._upload_version),
            ("GET", re.compile(r"/pipelines"), self._list_pipelines),
            ("GET", re.compile(r"/pipelines/names/(?P<name>[^/]+)"), self._pipeline_by_name),
            ("GET", re.compile(r"/pipelines/(?P<pipeline_id>[^/]+)"), self._get_pipeline),
            ("GET", re.compile(r"/pipelines/(?P<pipeline_id>[^/]+)/versions"), self._list_versions),
            (
                "GET",
                re.compile(r"/pipelines/(?P<pipeline_id>[^/]+)/versions/(?P<version_id>[^/]+)"),
                self._get_version,
            ),
            ("POST", re.compile(r"/experiments"), self._create_experiment),
            ("GET", re.compile(r"/experiments"), self._list_experiments),
            ("GET", re.compile(r"/experiments/(?P<experiment_id>[^/:]+)"), self._get_experiment),
            ("POST", re.compile(r"/runs"), self._create_run),
            ("GET", re.compile(r"/runs"), self._list_runs),
            ("GET", re.compile(r"/runs/(?P<run_id>[^/:]+)"), self._get_run),
            ("POST", re.compile(r"/recurringruns"), self._create_recurring_run),
            ("GET", re.compile(r"/recurringruns"), self._list_recurring_runs),
            (
                "GET",
                re.compile(r"/recurringruns/(?P<recurring_run_id>[^/:]+)"),
                self._get_recurring_run,
            ),
        ]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> KfpStandIn:
        if self._server is not None:
            raise RuntimeError("the KFP stand-in is already running")
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long stop() may wait for the loop to notice
            name="kfp-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> KfpStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the KFP stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- what tests look at ----------------------------------------------------------------

    def last_request(self, method: str, path: str) -> RecordedRequest:
        matching = self.requests_to(method, path)
        if not matching:
            seen = [f"{r.method} {r.path}" for r in self.requests]
            raise AssertionError(f"no {method} {path} request; received: {seen}")
        return matching[-1]

    def set_run_state(self, run_id: str, state: str) -> None:
        """Moves a run to a KFP runtime state (``"SUCCEEDED"``, ``"FAILED"``, ...)."""
        with self._lock:
            run = self.runs[run_id]
            run["state"] = state
            if state in {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"}:
                run["finished_at"] = _now()

    # -- plumbing --------------------------------------------------------------------------

    def dispatch(self, request: RecordedRequest) -> dict[str, Any]:
        """Runs the handler for a request's route (under the state lock)."""
        if request.path.startswith(API):
            route_path = request.path[len(API) :]
            for method, pattern, handler in self._routes:
                match = pattern.fullmatch(route_path)
                if method == request.method and match:
                    with self._lock:  # a copy, so later changes can't race the reply
                        return _omit_unset(copy.deepcopy(handler(request, **match.groupdict())))
        raise _rpc_error(HTTPStatus.NOT_FOUND, _GRPC_NOT_FOUND, "Not Found")

    # -- healthz ---------------------------------------------------------------------------

    def _healthz(self, request: RecordedRequest) -> dict[str, Any]:
        return {"multi_user": self.multi_user, "pipeline_store": "database"}

    # -- pipelines and versions ------------------------------------------------------------

    def _add_version(
        self, pipeline_id: str, name: str, display_name: str, description: str, spec: dict
    ) -> dict[str, Any]:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": _new_id(),
            "name": name,
            "display_name": display_name,
            "description": description,
            "created_at": _now(),
            "pipeline_spec": spec,
        }
        self.versions[version["pipeline_version_id"]] = version
        return version

    def _upload_pipeline(self, request: RecordedRequest) -> dict[str, Any]:
        spec = _read_pipeline_spec(request.files.get("uploadfile"))
        query = request.query
        filename = request.files["uploadfile"].filename or ""
        name = query.get("name") or query.get("display_name") or filename.rsplit(".", 1)[0]
        display_name = query.get("display_name") or name
        namespace = query.get("namespace", "")
        if any(p["name"] == name and p["namespace"] == namespace for p in self.pipelines.values()):
            raise _upload_error(
                HTTPStatus.CONFLICT,
                "Failed to create a pipeline and a pipeline version",
                f"Failed to create a pipeline and a pipeline version. The pipeline already "
                f"exists: a pipeline named {name!r} already exists in namespace {namespace!r}",
            )
        pipeline = {
            "pipeline_id": _new_id(),
            "name": name,
            "display_name": display_name,
            "description": query.get("description", ""),
            "created_at": _now(),
            "namespace": namespace,
        }
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        self._add_version(
            pipeline["pipeline_id"], name, display_name, pipeline["description"], spec
        )
        return pipeline

    def _upload_version(self, request: RecordedRequest) -> dict[str, Any]:
        spec = _read_pipeline_spec(request.files.get("uploadfile"))
        query = request.query
        pipeline_id = query.get("pipelineid", "")
        if pipeline_id not in self.pipelines:
            raise _upload_error(
                HTTPStatus.BAD_REQUEST,
                "Failed to create a pipeline version",
                f"unknown or missing pipelineid {pipeline_id!r}",
            )
        filename = request.files["uploadfile"].filename or ""
        name = query.get("name") or query.get("display_name") or filename.rsplit(".", 1)[0]
        if any(
            v["pipeline_id"] == pipeline_id and v["name"] == name for v in self.versions.values()
        ):
            raise _upload_error(
                HTTPStatus.CONFLICT,
                "Failed to create a pipeline version",
                f"a version named {name!r} already exists in pipeline {pipeline_id}",
            )
        display_name = query.get("display_name") or name
        return self._add_version(
            pipeline_id, name, display_name, query.get("description", ""), spec
        )

    def _list_pipelines(self, request: RecordedRequest) -> dict[str, Any]:
        pipelines = list(self.pipelines.values())
        if namespace := request.query.get("namespace"):
            pipelines = [p for p in pipelines if p["namespace"] == namespace]
        return _page("pipelines", _apply_filter(pipelines, request.query.get("filter")))

    def _pipeline_by_name(self, request: RecordedRequest, name: str) -> dict[str, Any]:
        namespace = request.query.get("namespace", "")
        for pipeline in self.pipelines.values():
            if pipeline["name"] == name and pipeline["namespace"] == namespace:
                return pipeline
        raise _not_found("Pipeline", name)

    def _get_pipeline(self, request: RecordedRequest, pipeline_id: str) -> dict[str, Any]:
        if pipeline_id not in self.pipelines:
            raise _not_found("Pipeline", pipeline_id)
        return self.pipelines[pipeline_id]

    def _list_versions(self, request: RecordedRequest, pipeline_id: str) -> dict[str, Any]:
        if pipeline_id not in self.pipelines:
            raise _not_found("Pipeline", pipeline_id)
        versions = [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]
        return _page("pipeline_versions", _apply_filter(versions, request.query.get("filter")))

    def _get_version(
        self, request: RecordedRequest, pipeline_id: str, version_id: str
    ) -> dict[str, Any]:
        version = self.versions.get(version_id)
        if version is None or version["pipeline_id"] != pipeline_id:
            raise _not_found("PipelineVersion", version_id)
        return version

    # -- experiments -----------------------------------------------------------------------

    def _create_experiment(self, request: RecordedRequest) -> dict[str, Any]:
        body = request.json or {}
        name = body.get("display_name", "")
        namespace = body.get("namespace") or ""
        if not name:
            raise _invalid("Invalid input error: Experiment name is empty")
        for experiment in self.experiments.values():
            if experiment["display_name"] == name and experiment["namespace"] == namespace:
                raise _rpc_error(
                    HTTPStatus.CONFLICT,
                    _GRPC_ALREADY_EXISTS,
                    f"Failed to create a new experiment. The name {name} already exists",
                )
        experiment = {
            "experiment_id": _new_id(),
            "display_name": name,
            "description": body.get("description", ""),
            "created_at": _now(),
            "namespace": namespace,
            "storage_state": "AVAILABLE",
        }
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _list_experiments(self, request: RecordedRequest) -> dict[str, Any]:
        experiments = list(self.experiments.values())
        if namespace := request.query.get("namespace"):
            experiments = [e for e in experiments if e["namespace"] == namespace]
        return _page("experiments", _apply_filter(experiments, request.query.get("filter")))

    def _get_experiment(self, request: RecordedRequest, experiment_id: str) -> dict[str, Any]:
        if experiment_id not in self.experiments:
            raise _not_found("Experiment", experiment_id)
        return self.experiments[experiment_id]

    # -- runs and recurring runs -----------------------------------------------------------

    def _namespace_of(self, experiment_id: str) -> str:
        return self.experiments.get(experiment_id, {}).get("namespace", "")

    def _validated_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """Fields shared by runs and recurring runs, after KFP-like validation."""
        experiment_id = body.get("experiment_id", "")
        if experiment_id and experiment_id not in self.experiments:
            raise _not_found("Experiment", experiment_id)
        if not body.get("display_name"):
            raise _invalid("Invalid input error: display_name is empty")
        reference = body.get("pipeline_version_reference")
        spec = body.get("pipeline_spec")
        if (reference is None) == (spec is None):
            raise _invalid(
                "Invalid input error: exactly one of pipeline_spec and "
                "pipeline_version_reference must be set"
            )
        if reference is not None:
            version = self.versions.get(reference.get("pipeline_version_id", ""))
            if version is None or version["pipeline_id"] != reference.get("pipeline_id"):
                raise _not_found("PipelineVersion", str(reference))
            spec = version["pipeline_spec"]
        runtime_config = body.get("runtime_config") or {}
        unknown = set(runtime_config.get("parameters") or {}) - _input_parameters(spec)
        if unknown:
            raise _invalid(f"Invalid input error: Unrecognized input parameter: {sorted(unknown)}")
        return {
            "experiment_id": experiment_id,
            "display_name": body["display_name"],
            "description": body.get("description"),
            "pipeline_spec": body.get("pipeline_spec"),
            "pipeline_version_reference": reference,
            "runtime_config": runtime_config,
            "service_account": body.get("service_account"),
            "created_at": _now(),
        }

    def _create_run(self, request: RecordedRequest) -> dict[str, Any]:
        run = self._validated_job(request.json or {})
        run.update(
            run_id=_new_id(),
            storage_state="AVAILABLE",
            state="PENDING",
            scheduled_at=run["created_at"],
        )
        self.runs[run["run_id"]] = run
        return run

    def _list_runs(self, request: RecordedRequest) -> dict[str, Any]:
        runs = list(self.runs.values())
        if experiment_id := request.query.get("experiment_id"):
            runs = [r for r in runs if r["experiment_id"] == experiment_id]
        elif namespace := request.query.get("namespace"):
            runs = [r for r in runs if self._namespace_of(r["experiment_id"]) == namespace]
        return _page("runs", _apply_filter(runs, request.query.get("filter")))

    def _get_run(self, request: RecordedRequest, run_id: str) -> dict[str, Any]:
        if run_id not in self.runs:
            raise _not_found("Run", run_id)
        return self.runs[run_id]

    def _create_recurring_run(self, request: RecordedRequest) -> dict[str, Any]:
        body = request.json or {}
        recurring_run = self._validated_job(body)
        trigger = body.get("trigger") or {}
        if ("cron_schedule" in trigger) == ("periodic_schedule" in trigger):
            raise _invalid(
                "Invalid input error: a recurring run needs exactly one of "
                "trigger.cron_schedule and trigger.periodic_schedule"
            )
        max_concurrency = int(body.get("max_concurrency") or 0)
        if not 1 <= max_concurrency <= 10:
            raise _invalid(
                "Invalid input error: max concurrency of the recurring run should be in the "
                f"range of [1, 10], got {max_concurrency}"
            )
        mode = body.get("mode", "ENABLE")
        recurring_run.update(
            recurring_run_id=_new_id(),
            trigger=trigger,
            max_concurrency=str(max_concurrency),  # int64 fields are strings in KFP's JSON
            no_catchup=body.get("no_catchup", False),
            mode=mode,
            status="ENABLED" if mode == "ENABLE" else "DISABLED",
            namespace=self._namespace_of(recurring_run["experiment_id"]),
            updated_at=recurring_run["created_at"],
        )
        self.recurring_runs[recurring_run["recurring_run_id"]] = recurring_run
        return recurring_run

    def _list_recurring_runs(self, request: RecordedRequest) -> dict[str, Any]:
        found = list(self.recurring_runs.values())
        if experiment_id := request.query.get("experiment_id"):
            found = [r for r in found if r["experiment_id"] == experiment_id]
        elif namespace := request.query.get("namespace"):
            found = [r for r in found if r["namespace"] == namespace]
        # KFP's proto names this field recurringRuns, and kfp_server_api expects exactly that.
        return _page("recurringRuns", _apply_filter(found, request.query.get("filter")))

    def _get_recurring_run(self, request: RecordedRequest, recurring_run_id: str) -> dict:
        if recurring_run_id not in self.recurring_runs:
            raise _not_found("RecurringRun", recurring_run_id)
        return self.recurring_runs[recurring_run_id]


__all__ = ["KfpStandIn", "RecordedRequest", "UploadedFile"]
