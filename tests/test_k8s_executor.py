"""The ``kubernetes`` executor against the real Kubernetes control plane (tests/cluster).

kube-apiserver v1.37.2 validates, defaults and admits every Job the executor creates; the real
kube-controller-manager's Job controller decides Job status (``backoffLimit``,
``activeDeadlineSeconds``, pod replacement), its garbage collector removes deleted Jobs' pods and
Jobs whose owner is gone, its TTL controller removes finished Jobs. The one simulated part is the
node agent (tests/cluster/node_agent.py), a stand-in kubelet that runs each step pod's command
as a local process: the Job's ``shieldtune step ...`` resolves to this virtualenv's console
script (the agent puts its Python's bin folder first on PATH; the image is not pulled).

Step files travel with ``kubernetes.transport=volume``: a hostPath PersistentVolume bound to the
claim ``shieldtune-steps`` (tests/cluster/steps.py); the agent maps the pods' ``/shared`` onto
it. One test uses ``transport=mlflow`` with a real ``mlflow server``. What the executor asked
the API server is read from the API server's own audit log, under the executor's own identity.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes import client

from shieldtune.cli import main
from shieldtune.config import Config, config_from_dict
from shieldtune.errors import ClusterError, StepFailedError
from shieldtune.executors.kubernetes.api import default_namespace, load_api_client
from shieldtune.executors.kubernetes.executor import (
    MAX_API_ERRORS,
    KubernetesStepExecutor,
    cpu_threads,
)
from shieldtune.executors.kubernetes.jobs import Owner, label_value, step_job, step_labels
from shieldtune.executors.local import LocalStepExecutor
from shieldtune.executors.step_files import DirStepStore
from shieldtune.job import Job
from shieldtune.training.step import StepRequest, StepResult

from .cluster.steps import (
    CLAIM,
    MOUNT_PATH,
    WAIT_S,
    Disruptor,
    StepCluster,
    step_processes,
    wait_for_processes,
    wait_gone,
)
from .cluster.waits import wait_for
from .conftest import tiny_cli_args, tiny_dict
from .test_executors import HYPER, assert_same_result
from .test_tuner import read_jsonl

#: The schema version kubernetes-validate checks the generated Job against offline.
K8S_VERSION = "1.33.0"
#: A step budget no test waits for: the step pod is still training when the test acts.
ENDLESS = 10_000_000
#: Keys of a step record that measure time (or retries), not what was trained.
TIMING_KEYS = ("train_seconds", "eval_seconds", "attempts")


def k8s_config(
    cluster: StepCluster, tmp_path: Path, *, tracking: bool = False, **kubernetes: Any
) -> Config:
    """The tiny job on the kubernetes executor in ``cluster``'s namespace; one torch thread
    in the controller (``training.threads``) and in the pods (``cpu_limit`` 1)."""
    return config_from_dict(
        tiny_dict(
            tracking={"enabled": tracking},
            safety={"constraints": ["fgsm_robust_acc >= 0.1"]},
            training={"threads": 1},
            tuner={"executor": "kubernetes", "output_dir": str(tmp_path / "runs")},
            kubernetes={
                "namespace": cluster.namespace,
                "transport": "volume",
                "volume_claim": CLAIM,
                "volume_mount_path": MOUNT_PATH,
                "controller_volume_path": str(cluster.volume),
                "cpu_limit": "1",
                "poll_seconds": 0.2,
                **kubernetes,
            },
        )
    )


def with_sections(cfg: Config, **sections: dict[str, Any]) -> Config:
    data = cfg.to_dict()
    for section, values in sections.items():
        data[section].update(values)
    return config_from_dict(data)


def executor_for(cfg: Config, cluster: StepCluster, **kwargs: Any) -> KubernetesStepExecutor:
    """The executor as the tuner builds it, credentials from ``$KUBECONFIG``."""
    store = DirStepStore(cluster.volume / "steps", uri_path=f"{MOUNT_PATH}/steps")
    return KubernetesStepExecutor(
        cfg.kubernetes,
        Job.from_config(cfg).steps,
        store,
        retries=cfg.tuner.step_retries,
        mlflow_run_id="0123abcd",
        kfp_run_id="kfp-run-1",
        **kwargs,
    )


def run_steps(executor: KubernetesStepExecutor, requests: list[StepRequest]) -> list[StepResult]:
    try:
        return executor.run_many(requests)
    finally:
        executor.close()


def tune_cli(*overrides: str) -> list[str]:
    """``shieldtune tune`` on the tiny config with ``key=value`` overrides."""
    return [sys.executable, "-m", "shieldtune.cli", "tune", *tiny_cli_args(*overrides)]


def cli_overrides(cfg: Config, *sections: str) -> list[str]:
    """``--set`` assignments that reproduce ``sections`` of ``cfg`` on the command line."""
    data = cfg.to_dict()
    return [
        f"{section}.{key}={json.dumps(value)}"
        for section in sections
        for key, value in data[section].items()
        if value is not None
    ]


def wait_for_controller_steps(
    proc: subprocess.Popen[str], cluster: StepCluster, count: int
) -> list[int]:
    """Wait until ``count`` step pods of the controller ``proc`` train; fail at once, with
    its stderr, if it exits first."""

    def probe() -> list[int] | None:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"the controller exited with {proc.returncode}: {err[-3000:]}")
        pids = step_processes(cluster.namespace)
        return pids if len(pids) >= count else None

    return wait_for(probe, f"{count} step pods of the controller training", WAIT_S)


def steps_without_timing(path: Path) -> list[str]:
    """The step records as canonical JSON (NaN compares equal that way), timing keys dropped."""
    return [
        json.dumps({k: v for k, v in r.items() if k not in TIMING_KEYS}, sort_keys=True)
        for r in read_jsonl(path)
    ]


# --------------------------------------------------------------------------- end to end


@pytest.mark.cluster
def test_parallel_steps_run_as_jobs_and_match_in_process_training(
    tmp_path, step_cluster, tiny_data
):
    cluster = step_cluster
    cfg = k8s_config(cluster, tmp_path)
    fresh = [StepRequest(None, HYPER, 300, seed=s) for s in (1, 2)]
    executor = executor_for(cfg, cluster)
    results = run_steps(executor, fresh)
    local = LocalStepExecutor(Job.from_config(cfg).steps.runner(tiny_data))
    for request, result in zip(fresh, results, strict=True):
        assert_same_result(result, local.run(request))
        assert result.attempts == 1
    assert [h["outcome"] for h in executor.history] == ["succeeded", "succeeded"]
    # Finished Jobs are deleted (Background: the garbage collector removes their pods) and the
    # step files removed; nothing is left running.
    cluster.wait_idle()
    assert list((cluster.volume / "steps").iterdir()) == []
    calls = wait_for(lambda: cluster.requests() or None, "the executor's audit events")
    creates = [i for i, e in enumerate(calls) if e["verb"] == "create"]
    polls = [i for i, e in enumerate(calls) if e["verb"] == "get"]
    assert len(creates) == 2 and polls
    # Both Jobs were created before the controller polled either: they ran side by side.
    assert max(creates) < min(polls)
    assert all(calls[i]["responseStatus"]["code"] == 201 for i in creates)
    labels = cluster.created_jobs()[0]["metadata"]["labels"]
    assert labels["shieldtune.dev/mlflow-run-id"] == "0123abcd"
    assert labels["shieldtune.dev/kfp-run-id"] == "kfp-run-1"
    deletes = [e for e in calls if e["verb"] == "delete"]
    assert len(deletes) == 2 and all(e["responseStatus"]["code"] == 200 for e in deletes)
    # Only the Role's calls (manifests/base/rbac.yaml): Jobs create/get/delete, pods list;
    # in particular no pods/log: step files never travel through the pod log.
    assert {(e["objectRef"]["resource"], e["verb"]) for e in calls} <= {
        ("jobs", "create"),
        ("jobs", "get"),
        ("jobs", "delete"),
        ("pods", "list"),
    }


@pytest.mark.cluster
def test_tune_with_two_members_on_kubernetes_matches_the_local_run(tmp_path, step_cluster):
    """``shieldtune tune`` with a population of two: both members' steps run as Jobs at the
    same time, and every step record equals the local executor's (one torch thread each)."""
    cluster = step_cluster
    cfg = k8s_config(cluster, tmp_path)
    common = [
        *cli_overrides(cfg, "kubernetes"),
        "kubernetes.namespace=null",  # the kubeconfig context's namespace, as for a user
        "tracking.enabled=false",
        "safety.constraints=['fgsm_robust_acc >= 0.1']",
        "training.threads=1",
        "tuner.episodes=1",
        "tuner.num_envs=2",
    ]
    k8s_runs, local_runs = tmp_path / "k8s-runs", tmp_path / "local-runs"
    proc = subprocess.run(
        tune_cli(
            *common, "tuner.executor=kubernetes", f"tuner.output_dir={json.dumps(str(k8s_runs))}"
        ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    local = tiny_cli_args(
        *common, "tuner.executor=local", f"tuner.output_dir={json.dumps(str(local_runs))}"
    )
    assert main(["tune", *local]) == 0
    [k8s_steps] = k8s_runs.glob("*/steps.jsonl")
    [local_steps] = local_runs.glob("*/steps.jsonl")
    records = read_jsonl(k8s_steps)
    assert len(records) == 6 and {r["env_index"] for r in records} == {0, 1}
    assert steps_without_timing(k8s_steps) == steps_without_timing(local_steps)
    cluster.wait_idle()
    calls = cluster.requests(resource="jobs")
    # 2 fresh models + 6 segments, one Job each, always two created before the next poll.
    verbs = [e["verb"] for e in calls if e["verb"] != "delete"]
    assert verbs.count("create") == 8
    batches = "".join("c" if v == "create" else "g" for v in verbs).split("g")
    assert [b for b in batches if b] == ["cc"] * 4
    assert {e["responseStatus"]["code"] for e in calls if e["verb"] == "delete"} == {200}


@pytest.mark.cluster
def test_an_apiserver_restart_mid_step_is_ridden_out(tmp_path, step_cluster, control_plane):
    """The API server goes away while a step trains; the executor's polling keeps going and
    the step completes (the node agent's and the controllers' watches recover too).

    Nothing here depends on how long anything takes: the step's process is stopped (SIGSTOP)
    for the whole outage, so the step is in flight before, during and after it, and the API
    server stays down until the executor has failed ``MAX_API_ERRORS`` polls in a row (each
    failure is followed by a back-off sleep longer than ``poll_seconds``), the count at which
    it used to give up: it must tolerate an outage by time (``API_OUTAGE_SECONDS``), not by a
    count of calls."""
    cluster = step_cluster
    cfg = k8s_config(cluster, tmp_path)
    backoffs: list[float] = []

    def sleep(seconds: float) -> None:
        if seconds > cfg.kubernetes.poll_seconds:
            backoffs.append(seconds)
        time.sleep(seconds)

    executor = executor_for(cfg, cluster, sleep=sleep)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["results"] = run_steps(executor, [StepRequest(None, HYPER, 300, seed=1)])
        except Exception as exc:  # reported below
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    pids = wait_for_processes(cluster.namespace, 1)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        control_plane.restart_apiserver(
            while_down=lambda: wait_for(
                lambda: len(backoffs) >= MAX_API_ERRORS,
                f"{MAX_API_ERRORS} failed polls while the API server is down",
                WAIT_S,
            )
        )
        # The same process is still there, stopped: the step spans the whole outage.
        assert step_processes(cluster.namespace) == pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    worker.join(timeout=600)
    assert not worker.is_alive(), "the executor never returned"
    assert "error" not in outcome, outcome.get("error")
    [result] = outcome["results"]
    assert result.attempts == 1
    assert [h["outcome"] for h in executor.history] == ["succeeded"]
    cluster.wait_idle()


# --------------------------------------------------------------------------- failure paths


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("action", "detail"),
    [
        # The pod is usually gone by the time the Job has failed; if not, it says why.
        ("evict", r"its pod is gone \(evicted or deleted\)|pod disrupted: EvictionByEvictionAPI"),
        ("delete", r"its pod is gone \(evicted or deleted\)|pod deleted"),
        ("kill", r"container exit code 137 \(Error\)"),
    ],
    ids=["eviction-api", "pod-deleted", "process-killed"],
)
def test_a_disrupted_step_is_retried_as_a_new_job(tmp_path, step_cluster, action, detail):
    """The first step pod is evicted, deleted or its process killed; the real Job controller
    fails that Job (backoffLimit 0) and the executor retries the step as a new Job."""
    cluster = step_cluster
    executor = executor_for(k8s_config(cluster, tmp_path), cluster)
    first = lambda pod, index: action if index == 0 else None  # noqa: E731
    with Disruptor(cluster, first) as disruptor:
        [result] = run_steps(executor, [StepRequest(None, HYPER, 300, seed=1)])
    assert [a for _, a in disruptor.injected] == [action], disruptor.errors
    assert result.attempts == 2
    failed, succeeded = executor.history
    assert failed["job"] == disruptor.injected[0][0] and failed["outcome"] == "failed"
    assert re.match(rf"BackoffLimitExceeded: .*({detail})", failed["reason"]), failed["reason"]
    assert succeeded["outcome"] == "succeeded"
    assert failed["job"].endswith("-1") and succeeded["job"].endswith("-2")
    cluster.wait_idle()


@pytest.mark.cluster
def test_a_step_failing_every_attempt_is_reported_with_each_reason(tmp_path, step_cluster):
    """The pods mount a claim whose volume holds no step files, so ``shieldtune step`` exits
    2 in every pod. backoffLimit 1: the Job controller replaces the failed pod once (after its
    own back-off), then fails the Job; the executor retries with new Jobs, then gives up."""
    cluster = step_cluster
    cluster.add_volume("elsewhere", tmp_path / "elsewhere")
    cfg = k8s_config(cluster, tmp_path, volume_claim="elsewhere", backoff_limit=1)
    cfg = with_sections(cfg, tuner={"step_retries": 1})
    executor = executor_for(cfg, cluster)
    with pytest.raises(StepFailedError) as err:
        run_steps(executor, [StepRequest(None, HYPER, 300, seed=1)])
    message = str(err.value)
    assert "failed 2 times (tuner.step_retries=1)" in message and "\n" not in message
    assert message.count("BackoffLimitExceeded") == 2
    # Each Job ran two pods (backoffLimit 1), each exited 2: four exit codes in the report.
    assert message.count("container exit code 2 (Error)") == 4
    assert [h["outcome"] for h in executor.history] == ["failed", "failed"]
    cluster.wait_idle()


@pytest.mark.cluster
def test_a_step_past_its_deadline_is_killed_and_reported(tmp_path, step_cluster):
    cluster = step_cluster
    cfg = k8s_config(cluster, tmp_path, active_deadline_seconds=3)
    executor = executor_for(with_sections(cfg, tuner={"step_retries": 0}), cluster)
    with pytest.raises(StepFailedError, match="DeadlineExceeded"):
        run_steps(executor, [StepRequest(None, HYPER, ENDLESS, seed=1)])
    # The Job controller deleted the running pod; the node agent killed its process.
    cluster.wait_idle()


def start_endless_tune(cfg, tmp_path: Path) -> subprocess.Popen:
    """``shieldtune tune`` on Kubernetes with two environments whose steps never finish by
    themselves (stderr piped, for the controller's progress)."""
    return subprocess.Popen(
        tune_cli(
            *cli_overrides(cfg, "kubernetes"),
            "tuner.executor=kubernetes",
            "tracking.enabled=false",
            "tuner.num_envs=2",
            f"training.segment_samples={ENDLESS}",
            f"tuner.output_dir={json.dumps(str(tmp_path / 'runs'))}",
        ),
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.cluster
def test_interrupted_controller_deletes_the_jobs_it_started(tmp_path, step_cluster):
    """SIGTERM (what Kubernetes sends a controller pod it stops) to ``shieldtune tune``
    while two steps train: it deletes both Jobs itself (their TTL is 10 minutes away and
    they never finish), and their pods and processes go with them."""
    cluster = step_cluster
    cfg = k8s_config(cluster, tmp_path)
    proc = start_endless_tune(cfg, tmp_path)
    try:
        pids = wait_for_controller_steps(proc, cluster, 2)
        started = {j.metadata.name for j in cluster.jobs()}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()
    assert "shieldtune: interrupted" in proc.stderr.read()
    cluster.wait_idle()
    wait_gone(pids)
    deleted: dict[str, set[int]] = {}
    for e in cluster.requests("delete"):
        deleted.setdefault(e["objectRef"]["name"], set()).add(e["responseStatus"]["code"])
    assert len(started) == 2 and started <= set(deleted)
    assert all(200 in deleted[name] for name in started), deleted
    # No Job was created after the interrupt (the executor's round runs in a thread of its
    # own: closing the executor must stop it from retrying the steps whose Jobs it deleted).
    assert {job["metadata"]["name"] for job in cluster.created_jobs()} == started


@pytest.mark.cluster
def test_jobs_of_a_killed_controller_are_removed_by_their_ttl(tmp_path, step_cluster):
    """SIGKILL leaves the controller no time to clean up: the Jobs it left behind finish (here
    their step processes are killed too, so they finish as Failed whatever the machine's
    speed) and the TTL controller deletes them (``ttl_seconds_after_finished``), the
    backstop."""
    cluster = step_cluster
    cfg = k8s_config(cluster, tmp_path, ttl_seconds_after_finished=2)
    proc = start_endless_tune(cfg, tmp_path)
    try:
        pids = wait_for_controller_steps(proc, cluster, 2)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    left = {j.metadata.name for j in cluster.jobs()}
    assert len(left) == 2, "the killed controller must leave its two Jobs behind"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    cluster.wait_idle()
    deleted_by_executor = {e["objectRef"]["name"] for e in cluster.requests("delete")}
    assert not left & deleted_by_executor


@pytest.mark.cluster
def test_deleting_the_controller_pod_garbage_collects_its_jobs(tmp_path, step_cluster):
    """Step Jobs are owned by the controller pod (downward API name/uid): when that pod is
    deleted the garbage collector deletes them, their pods and processes; the executor sees
    its Job vanish and reports it."""
    cluster = step_cluster
    core, ns = cluster.core, cluster.namespace
    pod = core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": "controller"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "shieldtune:0.1.0-cpu",
                        "command": ["python", "-c", "import time; time.sleep(3600)"],
                    }
                ],
            },
        },
    )
    owner = Owner(pod.metadata.name, pod.metadata.uid)
    cfg = with_sections(k8s_config(cluster, tmp_path), tuner={"step_retries": 0})
    executor = executor_for(cfg, cluster, owner=owner)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            run_steps(executor, [StepRequest(None, HYPER, ENDLESS, seed=1)])
        except Exception as exc:  # expected: the Job disappears
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    pids = wait_for_processes(ns, 1)
    [job] = cluster.created_jobs()
    assert job["metadata"]["ownerReferences"][0]["uid"] == owner.uid
    core.delete_namespaced_pod("controller", ns)
    worker.join(timeout=600)
    assert isinstance(outcome.get("error"), StepFailedError), outcome
    assert "the Job disappeared" in str(outcome["error"])
    cluster.wait_idle()
    wait_gone(pids)
    # The garbage collector removed the Job: the executor's own delete found nothing.
    assert {e["responseStatus"]["code"] for e in cluster.requests("delete")} <= {404}


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


@pytest.mark.cluster
def test_kubeconfig_auth_reaches_the_api_and_reads_the_context_namespace(step_cluster):
    api = load_api_client()
    try:
        assert client.BatchV1Api(api).list_namespaced_job(step_cluster.namespace).items == []
        assert client.VersionApi(api).get_code().git_version == "v1.37.2"
    finally:
        api.close()
    assert default_namespace() == step_cluster.namespace


def test_missing_credentials_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nope"))
    with pytest.raises(ClusterError, match="cannot load Kubernetes credentials") as err:
        load_api_client()
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- step files


@pytest.mark.cluster
def test_step_files_can_travel_as_mlflow_artifacts_of_the_tuning_run(
    tmp_path, step_cluster, tiny_data, monkeypatch
):
    """The default transport: no shared volume; the pod reads its request from, and writes its
    result to, the tuning run's artifacts on a real ``mlflow server`` (the executor hands the
    pods its tracking URI, which carries no credentials)."""
    from mlflow.tracking import MlflowClient

    from shieldtune.executors.step_files import MlflowStepStore

    from .standins.mlflow_server import MlflowServer

    cluster = step_cluster
    (tmp_path / "server").mkdir()
    with MlflowServer(tmp_path / "server") as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        mlflow = MlflowClient(server.uri)
        run_id = mlflow.create_run(mlflow.create_experiment("steps")).info.run_id
        cfg = k8s_config(cluster, tmp_path, tracking=True, transport="mlflow", volume_claim=None)
        executor = KubernetesStepExecutor(
            cfg.kubernetes,
            Job.from_config(cfg).steps,
            MlflowStepStore(run_id),
            mlflow_run_id=run_id,
        )
        request = StepRequest(None, HYPER, 300, seed=1)
        [result] = run_steps(executor, [request])
        [folder] = mlflow.list_artifacts(run_id, "steps")
        names = {Path(f.path).name for f in mlflow.list_artifacts(run_id, folder.path)}
    assert_same_result(
        result, LocalStepExecutor(Job.from_config(cfg).steps.runner(tiny_data)).run(request)
    )
    [job] = cluster.created_jobs()
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"][:2] == ["--store", f"mlflow:{run_id}"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": server.uri} in container["env"]
    assert [v["name"] for v in pod["volumes"]] == ["scratch"]  # no step volume
    assert names == {"request.pt", "result.pt"}  # kept as the step's audit trail
    cluster.wait_idle()
