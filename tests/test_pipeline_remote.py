"""shieldtune.pipeline.remote against the KFP stand-in, through the real ``kfp.Client``.

No ``from __future__ import annotations`` here: kfp reads the component's annotations as
real types, and string annotations make ``@dsl.component`` fail.
"""

import hashlib
import logging
import socket
import time
from http import HTTPStatus
from pathlib import Path

import kfp
import pytest
from kfp import compiler, dsl

from shieldtune.errors import ConfigError, ShieldtuneError
from shieldtune.pipeline import remote
from shieldtune.pipeline.remote import KfpError, KfpTarget, UploadResult

from .standins.kfp_standin import ApiError, KfpStandIn

TOKEN = "s3cr3t-t0ken-value"
NAMESPACE = "team-a"
PIPELINE = "shieldtune-tuning"
API = "/apis/v2beta1"
KFP_ENV = ("KFP_HOST", "KFP_NAMESPACE", "KFP_BEARER_TOKEN", "KFP_EXPERIMENT")


@dsl.component(base_image="python:3.11")
def train(learning_rate: float, episodes: int) -> float:
    return learning_rate * episodes


@dsl.pipeline(name="shieldtune-remote-demo")
def demo_pipeline(learning_rate: float = 0.001, episodes: int = 2):
    train(learning_rate=learning_rate, episodes=episodes)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """Keeps kfp.Client away from ~/.config/kfp/context.json and the caller's KFP_* vars.

    kfp computes the context path once, at import, so setting HOME alone is not enough.
    """
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    context = tmp_path / "home" / ".config" / "kfp" / "context.json"
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(context))
    for name in (*KFP_ENV, "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    with KfpStandIn() as standin:
        yield standin


@pytest.fixture
def target(server) -> KfpTarget:
    return KfpTarget(host=server.url, namespace=NAMESPACE, token=TOKEN, experiment="tuning")


def _compile(path: Path, **defaults) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        pipeline_func=demo_pipeline, package_path=str(path), pipeline_parameters=defaults or None
    )
    return path


@pytest.fixture
def package(tmp_path) -> Path:
    return _compile(tmp_path / "pipeline.yaml")


@pytest.fixture
def changed_package(tmp_path) -> Path:
    return _compile(tmp_path / "changed" / "pipeline.yaml", episodes=7)


def _version_name(package: Path) -> str:
    return f"{PIPELINE}-{hashlib.sha256(package.read_bytes()).hexdigest()[:12]}"


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


# -- upload --------------------------------------------------------------------------------


def test_upload_creates_pipeline_from_exact_package_bytes(server, target, package):
    result = remote.upload(target, package, PIPELINE, description="nightly tuning")

    request = server.last_request("POST", f"{API}/pipelines/upload")
    assert request.files["uploadfile"].data == package.read_bytes()
    assert request.query == {"name": PIPELINE, "description": "nightly tuning"}
    assert result.created_pipeline is True
    assert server.pipelines[result.pipeline_id]["name"] == PIPELINE
    assert server.versions[result.version_id]["pipeline_id"] == result.pipeline_id


def test_reupload_of_changed_package_adds_a_content_named_version(
    server, target, package, changed_package
):
    first = remote.upload(target, package, PIPELINE)
    second = remote.upload(target, changed_package, PIPELINE)

    assert second == UploadResult(first.pipeline_id, second.version_id, created_pipeline=False)
    assert second.version_id != first.version_id
    request = server.last_request("POST", f"{API}/pipelines/upload_version")
    assert request.query == {
        "name": _version_name(changed_package),
        "pipelineid": first.pipeline_id,
    }
    assert request.files["uploadfile"].data == changed_package.read_bytes()
    assert len(server.pipelines) == 1
    assert len(server.versions) == 2


def test_reupload_of_identical_package_reuses_its_version(server, target, package, changed_package):
    first = remote.upload(target, package, PIPELINE)
    again = remote.upload(target, package, PIPELINE)
    changed = remote.upload(target, changed_package, PIPELINE)
    changed_again = remote.upload(target, changed_package, PIPELINE)

    # The first version has KFP's default name (the pipeline's), so it is matched by content.
    assert again == UploadResult(first.pipeline_id, first.version_id, created_pipeline=False)
    assert changed_again == changed
    assert len(server.versions) == 2
    assert len(server.requests_to("POST", f"{API}/pipelines/upload_version")) == 1


def test_upload_of_missing_package_is_a_one_line_config_error(server, target, tmp_path):
    with pytest.raises(ConfigError) as raised:
        remote.upload(target, tmp_path / "nope.yaml", PIPELINE)

    assert "does not exist" in _one_line(raised)
    assert server.requests == []


@pytest.mark.parametrize("name", ["pipeline.tar.gz", "pipeline.json", "pipeline"])
def test_upload_of_non_yaml_package_is_a_one_line_config_error(server, target, tmp_path, name):
    path = tmp_path / name
    path.write_text("{}")

    with pytest.raises(ConfigError) as raised:
        remote.upload(target, path, PIPELINE)

    assert ".yaml/.yml" in _one_line(raised)
    assert server.requests == []


def test_upload_of_yaml_that_is_not_a_pipeline_is_a_config_error(server, target, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("learning_rate: 0.1\n")

    with pytest.raises(ConfigError) as raised:
        remote.upload(target, path, PIPELINE)

    assert "not a compiled KFP pipeline" in _one_line(raised)
    assert server.requests == []


# -- run and schedule ----------------------------------------------------------------------


def test_run_sends_params_and_creates_experiment_in_namespace(server, target, package):
    params = {"learning_rate": 0.01, "episodes": 3}

    run_id = remote.run(target, package, PIPELINE, params, run_name="trial-1")

    [create_experiment] = server.requests_to("POST", f"{API}/experiments")
    assert create_experiment.json == {"display_name": "tuning", "namespace": NAMESPACE}
    body = server.last_request("POST", f"{API}/runs").json
    assert body["runtime_config"]["parameters"] == params
    assert body["display_name"] == "trial-1"
    [version] = server.versions.values()
    assert body["pipeline_version_reference"] == {
        "pipeline_id": version["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"],
    }
    [experiment] = server.experiments.values()
    assert server.runs[run_id]["experiment_id"] == experiment["experiment_id"]


def test_run_and_schedule_pass_the_service_account_only_when_asked(server, target, package):
    remote.run(target, package, PIPELINE, {"episodes": 1})
    assert server.last_request("POST", f"{API}/runs").json.get("service_account") is None
    remote.run(target, package, PIPELINE, {"episodes": 1}, service_account="shieldtune-controller")
    assert server.last_request("POST", f"{API}/runs").json["service_account"] == (
        "shieldtune-controller"
    )
    remote.schedule(target, package, PIPELINE, "0 3 * * 1", {}, service_account="sa-2")
    assert server.last_request("POST", f"{API}/recurringruns").json["service_account"] == "sa-2"


def test_second_run_reuses_experiment_pipeline_and_version(server, target, package):
    first = remote.run(target, package, PIPELINE, {"episodes": 1})
    second = remote.run(target, package, PIPELINE, {"episodes": 2})

    assert first != second
    assert len(server.experiments) == 1
    assert len(server.pipelines) == 1
    assert len(server.versions) == 1
    assert server.runs[second]["display_name"].startswith(f"{PIPELINE}-")


def test_run_with_unknown_param_is_a_config_error_before_any_request(server, target, package):
    with pytest.raises(ConfigError) as raised:
        remote.run(target, package, PIPELINE, {"learning_rat": 0.1})

    message = _one_line(raised)
    assert "learning_rat" in message
    assert "episodes, learning_rate" in message
    assert server.requests == []


def test_schedule_sends_six_field_cron_single_concurrency_and_no_catchup(server, target, package):
    recurring_id = remote.schedule(
        target, package, PIPELINE, "0 3 * * 1", {"episodes": 5}, job_name="weekly"
    )

    body = server.last_request("POST", f"{API}/recurringruns").json
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["display_name"] == "weekly"
    assert body["runtime_config"]["parameters"] == {"episodes": 5}
    recurring = server.recurring_runs[recurring_id]
    assert recurring["namespace"] == NAMESPACE
    assert recurring["status"] == "ENABLED"


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("0 3 * * 1", "0 0 3 * * 1"),
        ("*/15  *  * * *", "0 */15 * * * *"),
        ("30 0 3 * * 1-5", "30 0 3 * * 1-5"),
    ],
)
def test_cron_expressions_become_kfp_six_field_form(cron, expected):
    assert remote.to_kfp_cron(cron) == expected


@pytest.mark.parametrize("cron", ["", "@daily", "0 3 * *", "0 0 3 * * 1 2026"])
def test_bad_cron_is_a_one_line_config_error_before_any_request(server, target, package, cron):
    with pytest.raises(ConfigError) as raised:
        remote.schedule(target, package, PIPELINE, cron, {})

    assert "expected 5 fields" in _one_line(raised)
    assert server.requests == []


# -- authentication and secrecy ------------------------------------------------------------


def test_token_is_sent_as_bearer_on_every_request_and_never_leaks(server, target, package):
    remote.upload(target, package, PIPELINE)
    remote.run(target, package, PIPELINE, {"episodes": 1})
    remote.schedule(target, package, PIPELINE, "0 3 * * *", {})

    assert len(server.requests) >= 8
    for request in server.requests:
        assert request.headers["authorization"] == f"Bearer {TOKEN}", request.path
        assert TOKEN.encode() not in request.body
        assert TOKEN not in request.path
        assert TOKEN not in str(request.query)
    assert TOKEN not in repr(target)
    assert TOKEN not in str(target)


def test_without_token_no_authorization_header_is_sent(server, package):
    remote.upload(KfpTarget(host=server.url, namespace=NAMESPACE), package, PIPELINE)

    assert server.requests
    assert all("authorization" not in r.headers for r in server.requests)


def test_without_namespace_the_client_checks_healthz_once(server, package):
    remote.run(KfpTarget(host=server.url), package, PIPELINE, {})

    assert len(server.requests_to("GET", f"{API}/healthz")) == 1
    [experiment] = server.experiments.values()
    assert experiment["namespace"] == ""


def test_kfp_details_links_are_logged_not_printed(server, target, package, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="shieldtune.pipeline.remote"):
        remote.run(target, package, PIPELINE, {})

    assert capsys.readouterr().out == ""
    assert any("Run details:" in record.getMessage() for record in caplog.records)
    assert all(TOKEN not in record.getMessage() for record in caplog.records)


# -- from_env ------------------------------------------------------------------------------


def test_from_env_reads_kfp_variables(monkeypatch):
    monkeypatch.setenv("KFP_HOST", "https://kfp.example.org")
    monkeypatch.setenv("KFP_NAMESPACE", "team-b")
    monkeypatch.setenv("KFP_BEARER_TOKEN", TOKEN)
    monkeypatch.setenv("KFP_EXPERIMENT", "nightly")

    target = KfpTarget.from_env()

    assert target == KfpTarget("https://kfp.example.org", "team-b", TOKEN, "nightly")
    assert TOKEN not in repr(target)


def test_from_env_prefers_explicit_values_and_defaults_experiment(monkeypatch):
    monkeypatch.setenv("KFP_HOST", "https://kfp.example.org")
    monkeypatch.setenv("KFP_NAMESPACE", "")

    target = KfpTarget.from_env(host="http://localhost:8080", token=TOKEN)

    assert target == KfpTarget("http://localhost:8080", None, TOKEN, "shieldtune")


def test_from_env_without_host_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as raised:
        KfpTarget.from_env(namespace="team-a")

    assert "KFP_HOST" in _one_line(raised)


def test_host_without_scheme_is_a_config_error():
    with pytest.raises(ConfigError) as raised:
        KfpTarget(host="localhost:8080")

    assert "http://" in _one_line(raised)


# -- server and connection failures --------------------------------------------------------


def test_http_500_becomes_a_one_line_shieldtune_error(server, target, package, monkeypatch):
    dispatch = server.dispatch

    def failing_runs(request):
        if request.method == "POST" and request.path == f"{API}/runs":
            raise ApiError(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {
                    "error": "db is down",
                    "code": 13,
                    "message": "db is down\nstack...",
                    "details": [],
                },
            )
        return dispatch(request)

    monkeypatch.setattr(server, "dispatch", failing_runs)

    with pytest.raises(ShieldtuneError) as raised:
        remote.run(target, package, PIPELINE, {"episodes": 1})

    assert isinstance(raised.value, KfpError)
    assert raised.value.status == 500
    message = _one_line(raised)
    assert "500 Internal Server Error" in message
    assert "db is down" in message
    assert TOKEN not in message


def test_unauthorized_error_hints_at_token_without_showing_it(server, target, package, monkeypatch):
    def refuse(request):
        raise ApiError(HTTPStatus.UNAUTHORIZED, {"error": f"bad token {TOKEN}"})

    monkeypatch.setattr(server, "dispatch", refuse)

    with pytest.raises(KfpError) as raised:
        remote.upload(target, package, PIPELINE)

    message = _one_line(raised)
    assert "401" in message
    assert "KFP_BEARER_TOKEN" in message
    assert TOKEN not in message


@pytest.fixture
def closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("namespace", [None, NAMESPACE])
def test_unreachable_host_fails_fast_with_a_shieldtune_error(
    closed_port_url, package, namespace, monkeypatch
):
    target = KfpTarget(host=closed_port_url, namespace=namespace, token=TOKEN)
    # "Fast" means no retry loop that waits between attempts (kfp's own health check sleeps
    # 5 x 5 s; urllib3 backs off with time.sleep too). Counting the requested sleeps instead
    # of measuring wall time keeps the test independent of how loaded the machine is.
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)

    with pytest.raises(ShieldtuneError) as raised:
        remote.upload(target, package, PIPELINE)

    assert sum(slept) < 1, f"retried with sleeps {slept}"
    message = _one_line(raised)
    assert "cannot reach the KFP API" in message
    assert closed_port_url in message
    assert TOKEN not in message


# Without the bounded timeouts the upload would block forever; a "timed out" KfpError proves
# a timeout fired. The pytest timeout only turns a regression (a hang) into a quick failure:
# with 1 s timeouts the test normally ends in a few seconds, far below it.
@pytest.mark.timeout(120)
def test_silent_host_times_out_instead_of_hanging(package, monkeypatch):
    monkeypatch.setattr(remote, "REQUEST_TIMEOUT", (1.0, 1.0))
    with socket.socket() as listener:  # accepts connections (kernel backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        host, port = listener.getsockname()
        target = KfpTarget(host=f"http://{host}:{port}", namespace=NAMESPACE, token=TOKEN)

        with pytest.raises(KfpError) as raised:
            remote.upload(target, package, PIPELINE)

    assert "timed out" in _one_line(raised)
