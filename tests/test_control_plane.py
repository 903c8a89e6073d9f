"""Smoke tests of the real local control plane (tests/cluster): what Kubernetes decides here
-- Job completion and failure, garbage collection, TTL -- is decided by the real
kube-controller-manager; only the node agent (the stand-in kubelet) is ours."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.cluster import control_plane as cp_module
from tests.cluster.control_plane import SCRIPT, ControlPlane, ControlPlaneError
from tests.cluster.waits import wait_for

# Until tests/conftest.py registers the plugin for every module.
pytestmark = pytest.mark.cluster


def job(name: str, code: str, **spec: Any) -> dict[str, Any]:
    """A one-container Job running ``python -c code`` (the image is not pulled: the node
    agent runs the host's Python)."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "main", "image": "python:3.11", "command": ["python", "-c", code]}
                    ],
                }
            },
        },
    }


def job_condition(batch: client.BatchV1Api, ns: str, name: str, kind: str) -> Any:
    conditions = batch.read_namespaced_job_status(name, ns).status.conditions or []
    return next((c for c in conditions if c.type == kind and c.status == "True"), None)


def job_pods(core: client.CoreV1Api, ns: str, name: str) -> list[Any]:
    return core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={name}").items


def gone(read: Any, *args: Any) -> bool:
    try:
        read(*args)
        return False
    except ApiException as exc:
        if exc.status != 404:
            raise
        return True


def test_apiserver_is_the_pinned_release(control_plane: ControlPlane, k8s_api: Any) -> None:
    assert client.VersionApi(k8s_api).get_code().git_version == "v1.37.2"
    node = client.CoreV1Api(k8s_api).read_node(control_plane.node_name)
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready["Ready"] == "True"
    assert node.status.daemon_endpoints.kubelet_endpoint.port > 0


def test_job_completes_and_its_log_is_readable(k8s_api: Any, k8s_namespace: str) -> None:
    batch, core, ns = client.BatchV1Api(k8s_api), client.CoreV1Api(k8s_api), k8s_namespace
    batch.create_namespaced_job(ns, job("hello", "print('hi')"))
    wait_for(lambda: job_condition(batch, ns, "hello", "Complete"), "Job hello Complete")
    assert batch.read_namespaced_job_status("hello", ns).status.succeeded == 1
    (pod,) = job_pods(core, ns, "hello")
    assert pod.status.phase == "Succeeded"
    (status,) = pod.status.container_statuses
    assert status.state.terminated.exit_code == 0
    assert status.state.terminated.reason == "Completed"
    # Through the real API server to the node agent's kubelet port.
    assert core.read_namespaced_pod_log(pod.metadata.name, ns) == "hi\n"


def test_failing_job_ends_with_backoff_limit_exceeded(k8s_api: Any, k8s_namespace: str) -> None:
    batch, core, ns = client.BatchV1Api(k8s_api), client.CoreV1Api(k8s_api), k8s_namespace
    batch.create_namespaced_job(ns, job("fails", "import sys; sys.exit(3)", backoffLimit=0))
    failed = wait_for(lambda: job_condition(batch, ns, "fails", "Failed"), "Job fails Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert batch.read_namespaced_job_status("fails", ns).status.failed == 1
    (pod,) = job_pods(core, ns, "fails")
    (status,) = pod.status.container_statuses
    assert (status.state.terminated.exit_code, status.state.terminated.reason) == (3, "Error")


@pytest.mark.parametrize("policy", ["Foreground", "Background"])
def test_deleting_a_job_removes_its_pods_and_kills_the_process(
    k8s_api: Any, k8s_namespace: str, policy: str
) -> None:
    batch, core, ns = client.BatchV1Api(k8s_api), client.CoreV1Api(k8s_api), k8s_namespace
    name = f"sleeper-{policy.lower()}"
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(600)"
    batch.create_namespaced_job(ns, job(name, code))

    def running_pid() -> int | None:
        pods = job_pods(core, ns, name)
        if not pods or pods[0].status.phase != "Running":
            return None
        out = core.read_namespaced_pod_log(pods[0].metadata.name, ns)
        return int(out.split()[0]) if out.strip() else None

    pid = wait_for(running_pid, f"pod of Job {name} running and printing its pid")
    assert os.path.exists(f"/proc/{pid}")
    batch.delete_namespaced_job(name, ns, propagation_policy=policy)
    wait_for(lambda: gone(batch.read_namespaced_job, name, ns), f"Job {name} deleted")
    wait_for(lambda: not job_pods(core, ns, name), f"pods of Job {name} garbage-collected")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), f"process {pid} of Job {name} killed")


def test_ttl_after_finished_removes_the_job(k8s_api: Any, k8s_namespace: str) -> None:
    batch, core, ns = client.BatchV1Api(k8s_api), client.CoreV1Api(k8s_api), k8s_namespace
    batch.create_namespaced_job(ns, job("brief", "print('done')", ttlSecondsAfterFinished=1))
    wait_for(lambda: gone(batch.read_namespaced_job, "brief", ns), "Job brief removed by TTL")
    wait_for(lambda: not job_pods(core, ns, "brief"), "pods of Job brief garbage-collected")


def test_pod_env_volumes_and_field_refs(k8s_api: Any, k8s_namespace: str) -> None:
    """What the executor's pods rely on: env from secrets and the downward API, envFrom, and an
    emptyDir whose mountPath the agent maps to a per-pod folder in args and env."""
    core, ns = client.CoreV1Api(k8s_api), k8s_namespace
    core.create_namespaced_secret(ns, {"metadata": {"name": "creds"}, "stringData": {"pw": "s3"}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"MODE": "fast"}})
    code = (
        "import os, sys; open(sys.argv[1] + '/f', 'w').write('x'); "
        "print(os.environ['PW'], os.environ['MODE'], os.environ['POD'], os.environ['NODE'], "
        "os.environ['IP'], os.environ['TMPDIR'] == sys.argv[1], os.path.exists(sys.argv[1]+'/f'))"
    )
    name = f"env-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "ignored",
                        "command": ["python", "-c", code, "/scratch"],
                        "env": [
                            {"name": "TMPDIR", "value": "/scratch"},
                            {
                                "name": "PW",
                                "valueFrom": {"secretKeyRef": {"name": "creds", "key": "pw"}},
                            },
                            {
                                "name": "POD",
                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                            },
                            {
                                "name": "NODE",
                                "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                            },
                            {
                                "name": "IP",
                                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                            },
                        ],
                        "envFrom": [{"configMapRef": {"name": "cfg"}}],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                    }
                ],
                "volumes": [{"name": "scratch", "emptyDir": {}}],
            },
        },
    )
    wait_for(
        lambda: core.read_namespaced_pod(name, ns).status.phase in ("Succeeded", "Failed"),
        f"pod {name} finished",
    )
    out = core.read_namespaced_pod_log(name, ns)
    assert core.read_namespaced_pod(name, ns).status.phase == "Succeeded", out
    assert out.split() == ["s3", "fast", name, "shieldtune-node", "127.0.0.1", "True", "True"]


def test_jobs_survive_an_apiserver_restart(
    control_plane: ControlPlane, k8s_api: Any, k8s_namespace: str
) -> None:
    """The node agent's watch and status patches, and the controllers, ride out a restart."""
    batch, core, ns = client.BatchV1Api(k8s_api), client.CoreV1Api(k8s_api), k8s_namespace
    code = "import time; time.sleep(4); print('after')"
    batch.create_namespaced_job(ns, job("restart", code))
    wait_for(
        lambda: [p for p in job_pods(core, ns, "restart") if p.status.phase == "Running"],
        "pod of Job restart running",
    )
    control_plane.restart_apiserver(down_s=5)
    wait_for(lambda: job_condition(batch, ns, "restart", "Complete"), "Job restart Complete")
    (pod,) = job_pods(core, ns, "restart")
    assert core.read_namespaced_pod_log(pod.metadata.name, ns) == "after\n"


def test_a_taken_port_is_replaced(
    k8s_bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        real, calls = cp_module.free_ports, []

        def first_taken(count: int) -> list[int]:
            calls.append(count)
            ports = real(count)
            return [taken, *ports[1:]] if len(calls) == 1 else ports

        monkeypatch.setattr(cp_module, "free_ports", first_taken)
        plane = ControlPlane(k8s_bin_dir, tmp_path)
        try:
            plane._start_etcd()
        finally:
            plane.stop()
    assert len(calls) == 2
    assert not plane.etcd_url.endswith(f":{taken}")
    assert "address already in use" in (tmp_path / "logs" / "etcd.log").read_text()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("print('boom', flush=True); raise SystemExit(7)", r"(?s)fake exited with 7.*boom"),
        (
            "import time; print('still starting', flush=True); time.sleep(60)",
            r"(?s)fake did not become ready within 2 s.*still starting",
        ),
    ],
)
def test_a_component_that_is_not_ready_shows_its_log_tail(
    tmp_path: Path, code: str, expected: str
) -> None:
    plane = ControlPlane(tmp_path / "bin", tmp_path, ready_timeout_s=2)
    try:
        with pytest.raises(ControlPlaneError, match=expected):
            plane._launch("fake", 1, lambda _ports: [sys.executable, "-c", code], lambda _p: False)
    finally:
        plane.stop()


def test_build_without_go_names_what_to_install(tmp_path: Path) -> None:
    env = dict(os.environ, GO=str(tmp_path / "no-go"), SHIELDTUNE_K8S_CACHE=str(tmp_path))
    proc = subprocess.run(
        ["bash", str(SCRIPT), "build"], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert "install Go 1.26 or newer" in line
    assert proc.stdout == ""
