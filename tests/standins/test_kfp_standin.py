"""The KFP stand-in, driven by the real ``kfp.Client`` over real HTTP.

No ``from __future__ import annotations`` here: kfp reads the component's annotations as
real types, and string annotations make ``@dsl.component`` fail.
"""

import json
import urllib.error
import urllib.request
from pathlib import Path

import kfp
import pytest
from kfp import compiler, dsl
from kfp_server_api.exceptions import ApiException

from .kfp_standin import KfpStandIn

# kfp.Client warns on every construction that it needs a KFP >= 2.0.0-beta.2 backend.
pytestmark = pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")

TOKEN = "secret-token"
NAMESPACE = "team-a"
PIPELINE = "shieldtune-tuning"


@dsl.component(base_image="python:3.11")
def train(learning_rate: float, episodes: int) -> float:
    return learning_rate * episodes


@dsl.pipeline(name="shieldtune-demo")
def demo_pipeline(learning_rate: float = 0.001, episodes: int = 2):
    train(learning_rate=learning_rate, episodes=episodes)


@pytest.fixture(autouse=True)
def isolated_kfp_home(tmp_path, monkeypatch):
    """Keeps kfp.Client away from the real ~/.config/kfp/context.json.

    kfp computes that path once, at import, so setting HOME alone is not enough.
    """
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    context = tmp_path / "home" / ".config" / "kfp" / "context.json"
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(context))
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    return context


@pytest.fixture
def server():
    with KfpStandIn() as standin:
        yield standin


@pytest.fixture
def client(server):
    return kfp.Client(host=server.url, namespace=NAMESPACE, existing_token=TOKEN)


@pytest.fixture
def package(tmp_path) -> Path:
    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(pipeline_func=demo_pipeline, package_path=str(path))
    return path


@pytest.fixture
def uploaded(client, package):
    return client.upload_pipeline(str(package), pipeline_name=PIPELINE, description="nightly")


@pytest.fixture
def experiment(client):
    return client.create_experiment("tuning", namespace=NAMESPACE)


def test_client_construction_without_namespace_checks_healthz(server, isolated_kfp_home):
    client = kfp.Client(host=server.url)

    assert [(r.method, r.path) for r in server.requests] == [("GET", "/apis/v2beta1/healthz")]
    assert "authorization" not in server.requests[0].headers
    assert client.get_user_namespace() == ""
    assert not isolated_kfp_home.exists()


def test_client_construction_with_namespace_sends_nothing(server, client):
    assert server.requests == []
    assert client.get_user_namespace() == NAMESPACE


def test_upload_pipeline_sends_package_name_description_and_token(server, client, package):
    pipeline = client.upload_pipeline(str(package), pipeline_name=PIPELINE, description="nightly")

    request = server.last_request("POST", "/apis/v2beta1/pipelines/upload")
    assert request.query == {"name": PIPELINE, "description": "nightly"}
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.files["uploadfile"].filename == "pipeline.yaml"
    assert request.files["uploadfile"].data == package.read_bytes()
    assert pipeline.display_name == PIPELINE
    assert pipeline.description == "nightly"
    assert server.pipelines[pipeline.pipeline_id]["name"] == PIPELINE


def test_upload_keeps_package_bytes_exactly(server, client, package):
    crlf_package = package.with_name("crlf.yaml")
    text = "# packaged on Windows, é\n" + package.read_text()
    crlf_package.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))

    client.upload_pipeline(str(crlf_package), pipeline_name=PIPELINE)

    upload = server.last_request("POST", "/apis/v2beta1/pipelines/upload")
    assert upload.files["uploadfile"].data == crlf_package.read_bytes()


def test_get_pipeline_id_finds_by_display_name(client, uploaded):
    assert client.get_pipeline_id(PIPELINE) == uploaded.pipeline_id
    assert client.get_pipeline_id("no-such-pipeline") is None


def test_duplicate_pipeline_upload_is_refused_with_409(server, client, package, uploaded):
    with pytest.raises(ApiException) as raised:
        client.upload_pipeline(str(package), pipeline_name=PIPELINE)

    assert raised.value.status == 409
    assert "already exists" in json.loads(raised.value.body)["error_details"]
    assert list(server.pipelines) == [uploaded.pipeline_id]


def test_new_version_upload_by_pipeline_name(server, client, package, uploaded):
    version = client.upload_pipeline_version(
        str(package), pipeline_version_name="v2", pipeline_name=PIPELINE
    )

    request = server.last_request("POST", "/apis/v2beta1/pipelines/upload_version")
    assert request.query == {"name": "v2", "pipelineid": uploaded.pipeline_id}
    assert request.files["uploadfile"].data == package.read_bytes()
    assert version.pipeline_id == uploaded.pipeline_id
    versions = client.list_pipeline_versions(uploaded.pipeline_id).pipeline_versions
    assert [v.display_name for v in versions] == [PIPELINE, "v2"]
    assert versions[1].pipeline_version_id == version.pipeline_version_id


def test_version_upload_errors(client, package, uploaded):
    client.upload_pipeline_version(str(package), "v2", pipeline_id=uploaded.pipeline_id)
    with pytest.raises(ApiException) as duplicate:
        client.upload_pipeline_version(str(package), "v2", pipeline_id=uploaded.pipeline_id)
    # An unknown pipeline name resolves to no id, and the client sends no pipelineid at all.
    with pytest.raises(ApiException) as unknown:
        client.upload_pipeline_version(str(package), "v3", pipeline_name="no-such-pipeline")

    assert duplicate.value.status == 409
    assert unknown.value.status == 400


def test_create_experiment_sends_namespace_and_is_idempotent(server, client):
    first = client.create_experiment("tuning", namespace=NAMESPACE)
    again = client.create_experiment("tuning")  # falls back to the client's namespace

    [create] = server.requests_to("POST", "/apis/v2beta1/experiments")
    assert create.json == {"display_name": "tuning", "namespace": NAMESPACE}
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert again.experiment_id == first.experiment_id
    lookup = server.last_request("GET", "/apis/v2beta1/experiments")
    assert lookup.query["namespace"] == NAMESPACE
    assert json.loads(lookup.query["filter"])["predicates"][0]["stringValue"] == "tuning"


def test_get_experiment_by_name_is_scoped_to_namespace(client, experiment):
    found = client.get_experiment(experiment_name="tuning", namespace=NAMESPACE)

    assert found.experiment_id == experiment.experiment_id
    assert found.namespace == NAMESPACE
    with pytest.raises(ValueError, match="No experiment is found"):
        client.get_experiment(experiment_name="tuning", namespace="team-b")


def test_run_from_package_sends_spec_and_params(server, client, package, experiment):
    params = {"learning_rate": 0.01, "episodes": 3}
    run = client.run_pipeline(
        experiment_id=experiment.experiment_id,
        job_name="trial-1",
        pipeline_package_path=str(package),
        params=params,
    )

    body = server.last_request("POST", "/apis/v2beta1/runs").json
    assert body["experiment_id"] == experiment.experiment_id
    assert body["display_name"] == "trial-1"
    assert body["runtime_config"]["parameters"] == params
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "shieldtune-demo"
    assert "pipeline_version_reference" not in body
    assert run.run_id in server.runs
    assert run.state == "PENDING"
    assert run.runtime_config.parameters == params


def test_run_from_uploaded_version(server, client, uploaded, experiment):
    [version] = client.list_pipeline_versions(uploaded.pipeline_id).pipeline_versions
    run = client.run_pipeline(
        experiment_id=experiment.experiment_id,
        job_name="trial-2",
        pipeline_id=uploaded.pipeline_id,
        version_id=version.pipeline_version_id,
        params={"episodes": 4},
    )

    body = server.last_request("POST", "/apis/v2beta1/runs").json
    assert body["pipeline_version_reference"] == {
        "pipeline_id": uploaded.pipeline_id,
        "pipeline_version_id": version.pipeline_version_id,
    }
    assert "pipeline_spec" not in body
    assert run.pipeline_version_reference.pipeline_version_id == version.pipeline_version_id


def test_run_with_a_parameter_the_pipeline_lacks_is_refused(server, client, package, experiment):
    with pytest.raises(ApiException) as raised:
        client.run_pipeline(
            experiment_id=experiment.experiment_id,
            job_name="typo",
            pipeline_package_path=str(package),
            params={"learning_rat": 0.1},
        )

    assert raised.value.status == 400
    assert "learning_rat" in raised.value.body
    assert server.runs == {}


def test_create_run_from_package_and_wait_for_completion(server, client, package):
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments={"episodes": 1},
        run_name="one-off",
        experiment_name="adhoc",
        namespace=NAMESPACE,
    )
    server.set_run_state(result.run_id, "SUCCEEDED")
    finished = client.wait_for_run_completion(result.run_id, timeout=10, sleep_duration=0)

    [experiment] = server.experiments.values()
    assert (experiment["display_name"], experiment["namespace"]) == ("adhoc", NAMESPACE)
    assert server.runs[result.run_id]["experiment_id"] == experiment["experiment_id"]
    assert finished.state == "SUCCEEDED"
    assert finished.finished_at is not None


def test_recurring_run_sends_cron_concurrency_and_catchup(server, client, uploaded, experiment):
    [version] = client.list_pipeline_versions(uploaded.pipeline_id).pipeline_versions
    recurring = client.create_recurring_run(
        experiment.experiment_id,
        "nightly-tuning",
        cron_expression="0 0 3 * * *",
        max_concurrency=1,
        no_catchup=True,
        pipeline_id=uploaded.pipeline_id,
        version_id=version.pipeline_version_id,
        params={"episodes": 5},
    )

    body = server.last_request("POST", "/apis/v2beta1/recurringruns").json
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["runtime_config"]["parameters"] == {"episodes": 5}
    assert recurring.trigger.cron_schedule.cron == "0 0 3 * * *"
    assert recurring.max_concurrency == "1"  # an int64: kfp_server_api types it as str
    assert recurring.no_catchup is True
    assert recurring.status == "ENABLED"
    assert recurring.namespace == NAMESPACE
    listed = client.list_recurring_runs(experiment_id=experiment.experiment_id)
    assert [r.recurring_run_id for r in listed.recurring_runs] == [recurring.recurring_run_id]


def test_recurring_run_concurrency_out_of_range_is_refused(client, package, experiment):
    with pytest.raises(ApiException) as raised:
        client.create_recurring_run(
            experiment.experiment_id,
            "too-parallel",
            cron_expression="0 0 3 * * *",
            max_concurrency=11,
            pipeline_package_path=str(package),
        )

    assert raised.value.status == 400


def test_list_filter_by_operation_name(client, uploaded):
    by_name = json.dumps(
        {"predicates": [{"operation": "IS_SUBSTRING", "key": "display_name", "stringValue": "tun"}]}
    )
    miss = by_name.replace("tun", "xyz")

    assert [p.pipeline_id for p in client.list_pipelines(filter=by_name).pipelines] == [
        uploaded.pipeline_id
    ]
    assert client.list_pipelines(filter=miss).pipelines is None  # KFP omits empty lists


def test_unknown_route_is_404_and_recorded(server, client, uploaded):
    with pytest.raises(ApiException) as raised:
        client.delete_pipeline(uploaded.pipeline_id)

    assert raised.value.status == 404
    request = server.last_request("DELETE", f"/apis/v2beta1/pipelines/{uploaded.pipeline_id}")
    assert request.status == 404


def test_stop_closes_the_port():
    standin = KfpStandIn().start()
    url = standin.url
    with urllib.request.urlopen(f"{url}/apis/v2beta1/healthz", timeout=5) as response:
        assert json.load(response) == {"multi_user": False, "pipeline_store": "database"}
    standin.stop()

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/apis/v2beta1/healthz", timeout=5)
    with pytest.raises(RuntimeError):
        _ = standin.url
