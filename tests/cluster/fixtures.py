"""pytest fixtures for the real local control plane (a plugin: see tests/test_control_plane.py).

* ``k8s_bin_dir`` (session): ``scripts/k8s-control-plane.sh build`` -- builds or reuses the
  binaries; when that is impossible (no Go toolchain, a failed build) the test FAILS with one
  line, it is never skipped, so a machine that cannot build is noticed. Set
  ``SHIELDTUNE_K8S_BIN_DIR`` to use an existing folder of binaries instead.
* ``control_plane`` (session): etcd + kube-apiserver + kube-controller-manager +
  kube-scheduler + the node agent, started once per session, logs under pytest's tmp folder.
* ``k8s_api`` (session): an official ``kubernetes.client.ApiClient`` for the admin kubeconfig.
* ``k8s_namespace``: a fresh namespace per test, usable (its ServiceAccount exists), deleted after.
* ``step_cluster``: ``k8s_namespace`` made ready for the shieldtune ``kubernetes`` executor
  (tests/cluster/steps.py: step ServiceAccount, step volume, the executor's own kubeconfig in
  ``$KUBECONFIG``).

When a test using the control plane fails, the components' log tails are added to its report.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.control_plane import SCRIPT, ControlPlane, ControlPlaneError
from tests.cluster.steps import StepCluster
from tests.cluster.waits import wait_for

#: A cold build took 8-11 minutes on 2 cores (docs/cluster.md, section 9); a generous cap.
BUILD_TIMEOUT_S = 3600
_active: ControlPlane | None = None


@pytest.fixture(scope="session")
def k8s_bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    preset = os.environ.get("SHIELDTUNE_K8S_BIN_DIR")
    if preset:
        return Path(preset)
    log = tmp_path_factory.mktemp("k8s-build") / "build.log"
    try:
        with log.open("w") as err:
            proc = subprocess.run(
                ["bash", str(SCRIPT), "build"],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"k8s control plane: build ran over {BUILD_TIMEOUT_S} s (log {log})", pytrace=False
        )
    if proc.returncode != 0:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        last = lines[-1] if lines else "no output"
        pytest.fail(
            f"k8s control plane: `{SCRIPT.name} build` exited {proc.returncode}: {last} "
            f"(log {log})",
            pytrace=False,
        )
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def control_plane(
    k8s_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    global _active
    plane = ControlPlane(k8s_bin_dir, tmp_path_factory.mktemp("k8s-control-plane"))
    try:
        plane.start()
    except ControlPlaneError as exc:
        pytest.fail(f"k8s control plane did not start: {exc}", pytrace=False)
    _active = plane
    try:
        yield plane
    finally:
        _active = None
        plane.stop()


@pytest.fixture(scope="session")
def k8s_api(control_plane: ControlPlane) -> Iterator[Any]:
    """``kubernetes.client.ApiClient`` authenticated as the admin (system:masters)."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def k8s_namespace(k8s_api: Any) -> Generator[str, None, None]:
    """A new namespace whose ``default`` ServiceAccount exists (pods are admitted there)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(k8s_api)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})

    def has_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
            return True
        except ApiException as exc:
            if exc.status != 404:
                raise
            return False

    wait_for(has_sa, f"ServiceAccount {name}/default (the controller-manager creates it)")
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def step_cluster(
    control_plane: ControlPlane,
    k8s_api: Any,
    k8s_namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[StepCluster]:
    """A namespace ready for the executor, whose kubeconfig ``$KUBECONFIG`` names (so the
    executor, and a ``shieldtune tune`` started from the test, find it as a user's would)."""
    cluster = StepCluster(control_plane, k8s_api, k8s_namespace, tmp_path / "pvc")
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the components' log tails to a failing report of a test on the cluster."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.failed
        and _active is not None
        and "control_plane" in getattr(item, "fixturenames", ())
    ):
        report.sections.append(("k8s control plane logs (tails)", _active.log_tails()))
