"""The ``kubernetes`` executor with the real client over HTTP against the API stand-in.

Every Job the executor creates is validated by the stand-in against the Kubernetes 1.33
schema (strict) and really runs ``shieldtune step`` as a local process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest

from shieldtune.config import config_from_dict
from shieldtune.control.tuner import run_tuning
from shieldtune.errors import ClusterError, StepFailedError
from shieldtune.executors.kubernetes.api import default_namespace, load_api_client
from shieldtune.executors.kubernetes.executor import KubernetesStepExecutor, cpu_threads
from shieldtune.executors.kubernetes.jobs import Owner, label_value, step_job, step_labels
from shieldtune.executors.local import LocalStepExecutor
from shieldtune.executors.step_files import DirStepStore
from shieldtune.job import Job
from shieldtune.training.step import StepRequest

from .conftest import tiny_cli_args, tiny_dict
from .standins.k8s_standin import K8sApiStandIn
from .test_executors import HYPER, assert_same_result
from .test_tuner import read_jsonl

K8S_VERSION = "1.33.0"
CLAIM = "shieldtune-steps"


def k8s_config(tmp_path: Path, **kubernetes):
    """A tiny job on the kubernetes executor, step files on a 'PVC' that is a local folder."""
    return config_from_dict(
        tiny_dict(
            tracking={"enabled": False},
            safety={"constraints": ["fgsm_robust_acc >= 0.1"]},
            tuner={"executor": "kubernetes", "output_dir": str(tmp_path / "runs")},
            kubernetes={
                "namespace": "team",
                "transport": "volume",
                "volume_claim": CLAIM,
                "controller_volume_path": str(tmp_path / "pvc"),
                "cpu_limit": "1",
                "poll_seconds": 0.1,
                **kubernetes,
            },
        )
    )


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """The stand-in, with the kubeconfig the executor finds through $KUBECONFIG."""
    (tmp_path / "pvc").mkdir()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with K8sApiStandIn(
        tmp_path / "k8s", volumes={CLAIM: tmp_path / "pvc"}, host_paths=[tmp_path]
    ) as k8s:
        monkeypatch.setenv("KUBECONFIG", str(k8s.write_kubeconfig(tmp_path / "kubeconfig")))
        yield k8s


def executor_for(cfg, tmp_path: Path) -> KubernetesStepExecutor:
    store = DirStepStore(tmp_path / "pvc" / "steps", uri_path="/shared/steps")
    return KubernetesStepExecutor(
        cfg.kubernetes,
        Job.from_config(cfg).steps,
        store,
        retries=cfg.tuner.step_retries,
        mlflow_run_id="0123abcd",
        kfp_run_id="kfp-run-1",
    )


def test_parallel_steps_run_as_jobs_and_match_in_process_training(tmp_path, cluster, tiny_data):
    cfg = k8s_config(tmp_path)
    fresh = [StepRequest(None, HYPER, 300, seed=s) for s in (1, 2)]
    executor = executor_for(cfg, tmp_path)
    try:
        results = executor.run_many(fresh)
    finally:
        executor.close()
    local = LocalStepExecutor(Job.from_config(cfg).steps.runner(tiny_data))
    for request, result in zip(fresh, results, strict=True):
        assert_same_result(result, local.run(request))
        assert result.attempts == 1
    creates = cluster.requests_to("POST", "/apis/batch/v1/namespaces/team/jobs")
    assert len(creates) == 2
    # Both Jobs were created before the controller polled either: they ran side by side.
    first_poll = next(i for i, r in enumerate(cluster.requests) if r.method == "GET")
    assert cluster.requests.index(creates[1]) < first_poll
    labels = creates[0].body["metadata"]["labels"]
    assert labels["shieldtune.dev/mlflow-run-id"] == "0123abcd"
    assert labels["shieldtune.dev/kfp-run-id"] == "kfp-run-1"
    assert creates[0].headers["authorization"] == "Bearer test-token"
    # Finished Jobs are deleted and the step files removed; nothing is left running.
    assert cluster.wait_idle(timeout=30)
    assert cluster.jobs("team") == [] and list((tmp_path / "pvc" / "steps").iterdir()) == []
    assert [h["outcome"] for h in executor.history] == ["succeeded", "succeeded"]


def test_an_evicted_step_is_retried_as_a_new_job(tmp_path, cluster):
    evicted: list[str] = []

    def evict_first_job(job: dict, pod_index: int) -> str | None:
        if not evicted:
            evicted.append(job["metadata"]["name"])
            return "evict"
        return None

    cluster.fault = evict_first_job
    executor = executor_for(k8s_config(tmp_path), tmp_path)
    try:
        [result] = executor.run_many([StepRequest(None, HYPER, 300, seed=1)])
    finally:
        executor.close()
    assert result.attempts == 2
    first, second = executor.history
    assert first["job"] == evicted[0] and first["outcome"] == "failed"
    assert "Evicted" in first["reason"] and second["outcome"] == "succeeded"
    assert first["job"].endswith("-1") and second["job"].endswith("-2")


def test_a_step_failing_every_attempt_is_reported_with_each_reason(tmp_path, cluster):
    cluster.fault = lambda job, pod_index: "fail"
    executor = executor_for(k8s_config(tmp_path, backoff_limit=1), tmp_path)
    cfg_retries = executor.retries
    try:
        with pytest.raises(StepFailedError) as err:
            executor.run_many([StepRequest(None, HYPER, 300, seed=1)])
    finally:
        executor.close()
    message = str(err.value)
    assert f"failed {cfg_retries + 1} times" in message and "\n" not in message
    assert message.count("BackoffLimitExceeded") == cfg_retries + 1
    assert "exit code 1" in message
    assert cluster.wait_idle(timeout=30) and cluster.jobs("team") == []


def test_a_step_past_its_deadline_is_killed_and_reported(tmp_path, cluster):
    cluster.fault = lambda job, pod_index: "hang"
    data = k8s_config(tmp_path, active_deadline_seconds=1).to_dict()
    data["tuner"]["step_retries"] = 0
    cfg = config_from_dict(data)
    executor = executor_for(cfg, tmp_path)
    try:
        with pytest.raises(StepFailedError, match="DeadlineExceeded"):
            executor.run_many([StepRequest(None, HYPER, 300, seed=1)])
    finally:
        executor.close()
    assert cluster.wait_idle(timeout=30)
    assert cluster.running_processes() == 0 and cluster.jobs("team") == []


def test_interrupted_controller_deletes_the_jobs_it_started(tmp_path, cluster):
    cluster.fault = lambda job, pod_index: "hang"  # steps that would never finish
    (tmp_path / "runs").mkdir()
    overrides = {
        "tracking.enabled": False,
        "tuner.executor": "kubernetes",
        "tuner.num_envs": 2,
        "tuner.output_dir": str(tmp_path / "runs"),
        "kubernetes.namespace": "team",
        "kubernetes.transport": "volume",
        "kubernetes.volume_claim": CLAIM,
        "kubernetes.controller_volume_path": str(tmp_path / "pvc"),
        "kubernetes.poll_seconds": 0.1,
    }
    args = tiny_cli_args(*(f"{k}={json.dumps(v)}" for k, v in overrides.items()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "shieldtune.cli", "tune", *args],
        env=os.environ.copy(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while cluster.running_processes() < 2:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the controller never started two step pods"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # what Kubernetes sends a pod it stops
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
    assert "shieldtune: interrupted" in proc.stderr.read()
    assert cluster.wait_idle(timeout=30)
    assert cluster.jobs("team") == [] and cluster.running_processes() == 0
    # Hung Jobs never finish, so only the controller's own DELETEs can have removed them.
    deleted = [
        r for r in cluster.requests if r.method == "DELETE" and "/jobs/shieldtune-step-" in r.path
    ]
    assert len(deleted) == 2 and all(r.status < 300 for r in deleted)


def test_tuning_job_with_parallel_envs_on_kubernetes_matches_the_local_run(
    tmp_path, cluster, tiny_data
):
    sections = {"env": {"steps_per_episode": 2}, "tuner": {"episodes": 2, "num_envs": 2}}
    cfg = k8s_config(tmp_path)
    data = cfg.to_dict()
    for section, values in sections.items():
        data[section].update(values)
    on_k8s = run_tuning(config_from_dict(data), data=tiny_data)
    data["tuner"].update(executor="local", output_dir=str(tmp_path / "local"))
    local = run_tuning(config_from_dict(data), data=tiny_data)
    assert (on_k8s.executor, on_k8s.num_envs, on_k8s.steps_run) == ("kubernetes", 2, 4)
    strip = ("train_seconds", "eval_seconds")
    k8s_steps = [
        {k: v for k, v in r.items() if k not in strip}
        for r in read_jsonl(Path(on_k8s.output_dir) / "steps.jsonl")
    ]
    local_steps = [
        {k: v for k, v in r.items() if k not in strip}
        for r in read_jsonl(Path(local.output_dir) / "steps.jsonl")
    ]
    assert k8s_steps == local_steps
    # 2 fresh models + 4 segments, each one Job, all cleaned up.
    assert len(cluster.requests_to("POST", "/apis/batch/v1/namespaces/team/jobs")) == 6
    assert cluster.jobs("team") == []


# --------------------------------------------------------------------------- Job spec


@pytest.mark.parametrize(
    "kubernetes",
    [
        {"transport": "volume", "volume_claim": CLAIM},
        {"transport": "mlflow", "gpus": 1, "image": "registry.example.com/shieldtune:0.1.0-cuda"},
    ],
    ids=["volume", "mlflow-gpu"],
)
def test_generated_job_validates_and_is_locked_down(kubernetes):
    k = config_from_dict({"kubernetes": kubernetes}).kubernetes
    labels = step_labels("abc123", "f" * 32, "5b1c6a3e-aaaa-bbbb-cccc-1234567890ab", "ctl-pod")
    job = step_job(
        "shieldtune-step-abc123-1",
        "mlflow:" + "f" * 32,
        "abc123",
        k,
        labels,
        owner=Owner("ctl-pod", "0d7c7c4e-1111-2222-3333-444455556666"),
        env={"MLFLOW_TRACKING_URI": "http://shieldtune-mlflow:5000"},
        threads=2,
    )
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    spec = job["spec"]
    assert spec["backoffLimit"] == k.backoff_limit
    assert spec["activeDeadlineSeconds"] == k.active_deadline_seconds
    assert spec["ttlSecondsAfterFinished"] == k.ttl_seconds_after_finished
    assert job["metadata"]["ownerReferences"][0]["kind"] == "Pod"
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "scratch", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert container["resources"]["limits"].get("nvidia.com/gpu") == (
        str(k.gpus) if k.gpus else None
    )
    assert container["envFrom"] == [{"secretRef": {"name": "shieldtune-mlflow", "optional": True}}]


def test_label_values_are_cut_to_what_kubernetes_accepts():
    assert label_value("a" * 80 + "-") == "a" * 63
    assert label_value("pod/name with spaces") == "pod-name-with-spaces"
    assert label_value("---") == ""


def test_cpu_limit_sets_the_step_threads():
    assert (cpu_threads("2"), cpu_threads("1500m"), cpu_threads("250m")) == (2, 1, 1)


# --------------------------------------------------------------------------- auth


def test_in_cluster_auth_uses_the_service_account_token(tmp_path, monkeypatch):
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (sa / "namespace").write_text("kubeflow-user-example-com")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    api = load_api_client(service_account_dir=sa)
    assert api.configuration.host == "https://10.0.0.1:443"
    assert api.configuration.api_key["authorization"].lower() == "bearer sa-token"
    assert default_namespace(service_account_dir=sa) == "kubeflow-user-example-com"
    api.close()


def test_kubeconfig_auth_reaches_the_api_and_reads_the_context_namespace(tmp_path, cluster):
    api = load_api_client()
    from kubernetes import client

    assert client.BatchV1Api(api).list_namespaced_job("team").items == []
    assert default_namespace() == "team"
    api.close()


def test_missing_credentials_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nope"))
    with pytest.raises(ClusterError, match="cannot load Kubernetes credentials") as err:
        load_api_client()
    assert "\n" not in str(err.value)


def test_step_files_never_travel_through_the_pod_log(tmp_path, cluster):
    executor = executor_for(k8s_config(tmp_path), tmp_path)
    try:
        executor.run_many([StepRequest(None, HYPER, 300, seed=1)])
    finally:
        executor.close()
    assert cluster.requests, "the executor talked to the API"
    assert [r for r in cluster.requests if r.path.endswith("/log")] == []


def test_step_files_can_travel_as_mlflow_artifacts_of_the_tuning_run(
    tmp_path, cluster, tiny_data, monkeypatch
):
    """The default transport: no shared volume, the pod reads and writes the run's artifacts."""
    from mlflow.tracking import MlflowClient

    from shieldtune.executors.step_files import MlflowStepStore

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("steps", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    data = k8s_config(tmp_path).to_dict()
    data["kubernetes"].update(transport="mlflow", volume_claim=None)
    data["tracking"]["enabled"] = True
    cfg = config_from_dict(data)
    executor = KubernetesStepExecutor(
        cfg.kubernetes, Job.from_config(cfg).steps, MlflowStepStore(run_id), mlflow_run_id=run_id
    )
    request = StepRequest(None, HYPER, 300, seed=1)
    try:
        [result] = executor.run_many([request])
    finally:
        executor.close()
    assert_same_result(
        result, LocalStepExecutor(Job.from_config(cfg).steps.runner(tiny_data)).run(request)
    )
    [job] = cluster.requests_to("POST", "/apis/batch/v1/namespaces/team/jobs")
    container = job.body["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["--store", f"mlflow:{run_id}"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": uri} in container["env"]
    [folder] = client.list_artifacts(run_id, "steps")
    names = {Path(f.path).name for f in client.list_artifacts(run_id, folder.path)}
    assert names == {"request.pt", "result.pt"}  # kept as the step's audit trail
