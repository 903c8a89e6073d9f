"""A namespace of the real local cluster made ready for the ``kubernetes`` step executor.

What a cluster admin sets up before a tuning job (docs/cluster.md), done through the API:

* the step pods' ServiceAccount ``shieldtune-step`` without a token, as manifests/base ships it
  (the ServiceAccount admission plugin refuses pods whose account does not exist);
* the step volume: a PersistentVolume on a local folder (``hostPath``: no provisioner runs
  here) pre-bound to the claim ``shieldtune-steps``. The controller writes the step files into
  that folder directly (``kubernetes.controller_volume_path``); the node agent maps the pods'
  mount ``/shared`` onto the PersistentVolume's path, so ``shieldtune step --store
  dir:/shared/steps`` reads the same files (``kubernetes.transport=volume``);
* an identity of the executor's own: a client certificate (group ``system:masters``) in a
  kubeconfig whose context namespace is this namespace, so the API server's audit log
  (:meth:`ControlPlane.audit_events`) tells the executor's requests from the test's.

:class:`Disruptor` disrupts step pods the ways a cluster does (eviction, deletion, a killed
process), for the failure-path tests. Every wait polls generously; nothing asserts timing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.cluster.control_plane import ControlPlane
from tests.cluster.waits import wait_for

CLAIM = "shieldtune-steps"
STEP_SERVICE_ACCOUNT = "shieldtune-step"
#: Where the step Jobs mount the claim (the default ``kubernetes.volume_mount_path``).
MOUNT_PATH = "/shared"
STEP_SELECTOR = "app.kubernetes.io/component=step"
#: Waits for pods, garbage collection and processes: generous, CI may be loaded.
WAIT_S = 180.0


def bind_volume(api: client.ApiClient, namespace: str, claim: str, folder: Path) -> str:
    """A hostPath PersistentVolume on ``folder``, pre-bound to a new claim ``claim`` in
    ``namespace`` (no provisioner runs here); returns the PersistentVolume's name."""
    core = client.CoreV1Api(api)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{namespace}-{claim}"[:63]
    storage = {"storage": "1Gi"}
    core.create_persistent_volume(
        {
            "metadata": {"name": name},
            "spec": {
                "capacity": storage,
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(folder), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": name,
                "resources": {"requests": storage},
            },
        },
    )
    return name


def process_cwd(pid: int) -> str:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/{pid}/cwd")
    return ""


def process_cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    return []


def step_processes(namespace: str, pod: str | None = None) -> list[int]:
    """Live ``shieldtune step`` processes of the pods of ``namespace`` (or of one pod).

    The node agent starts each container in the pod's own folder, ``.../pods/<ns>_<pod>_<uid>/
    workdir``, so the working directory says which pod a process belongs to. Zombies (an empty
    command line) do not count.
    """
    marker = f"/pods/{namespace}_{pod or ''}"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        argv = process_cmdline(pid)
        if "step" in argv and "--step-id" in argv and marker in process_cwd(pid):
            pids.append(pid)
    return pids


@dataclass
class StepCluster:
    """One test namespace prepared for the executor (see the module docstring)."""

    plane: ControlPlane
    api: client.ApiClient
    namespace: str
    #: The folder behind the claim ``shieldtune-steps``.
    volume: Path
    #: The executor's own kubeconfig (context namespace: this namespace) and user name.
    kubeconfig: Path = field(init=False)
    user: str = field(init=False)
    volumes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.user = f"shieldtune-executor-{uuid.uuid4().hex[:6]}"
        self.kubeconfig = self.plane.client_kubeconfig(
            self.user, ("system:masters",), self.namespace
        )
        self.core.create_namespaced_service_account(
            self.namespace,
            {"metadata": {"name": STEP_SERVICE_ACCOUNT}, "automountServiceAccountToken": False},
        )
        self.add_volume(CLAIM, self.volume)

    def add_volume(self, claim: str, folder: Path) -> None:
        self.volumes.append(bind_volume(self.api, self.namespace, claim, folder))

    def close(self) -> None:
        """Delete the PersistentVolumes (cluster-scoped: the namespace's deletion keeps them)."""
        for name in self.volumes:
            with contextlib.suppress(ApiException):
                self.core.delete_persistent_volume(name)

    # -- what is there ----------------------------------------------------------------------

    def jobs(self) -> list[Any]:
        return self.batch.list_namespaced_job(self.namespace, label_selector=STEP_SELECTOR).items

    def pods(self) -> list[Any]:
        return self.core.list_namespaced_pod(self.namespace, label_selector=STEP_SELECTOR).items

    def processes(self) -> list[int]:
        return step_processes(self.namespace)

    def wait_idle(self) -> None:
        """No step Job, no step pod and no step process left (garbage collection is
        asynchronous: the executor's Background deletes return before the pods are gone)."""
        wait_for(lambda: not self.jobs(), f"no step Jobs left in {self.namespace}", WAIT_S)
        wait_for(lambda: not self.pods(), f"step pods of {self.namespace} collected", WAIT_S)
        wait_for(lambda: not self.processes(), "step processes ended", WAIT_S)

    # -- what the executor asked ------------------------------------------------------------

    def requests(
        self, verb: str | None = None, resource: str | None = None, user: str | None = None
    ) -> list[dict[str, Any]]:
        """The audit events of the executor's (or ``user``'s) requests in this namespace."""
        events = []
        for event in self.plane.audit_events(user or self.user):
            ref = event.get("objectRef", {})
            if ref.get("namespace") != self.namespace:
                continue
            if verb is not None and event["verb"] != verb:
                continue
            if resource is not None and ref.get("resource") != resource:
                continue
            events.append(event)
        return events

    def created_jobs(self, user: str | None = None) -> list[dict[str, Any]]:
        """The Job bodies the executor POSTed and the API server accepted, in order."""
        return [
            e["requestObject"]
            for e in self.requests("create", "jobs", user)
            if e["responseStatus"]["code"] == 201
        ]


class Disruptor(threading.Thread):
    """Polls the namespace's step pods and disrupts the ones ``choose(pod, index)`` names
    (``index`` counts pods in the order first seen running), once each pod is Running and its
    process is up, the ways a cluster disrupts pods:

    * ``evict``: the Eviction API (the API server adds the DisruptionTarget condition and
      deletes the pod gracefully; the node agent SIGTERMs the process);
    * ``delete``: a plain delete of the pod, as a person or another controller would;
    * ``kill``: SIGKILL to the container's process, as the kernel's OOM killer would (the
      node agent reports exit code 137, the Job controller sees a failed pod).

    ``injected`` lists (Job name, action) of each disruption that was carried out.
    """

    def __init__(
        self, cluster: StepCluster, choose: Callable[[Any, int], str | None], every_s: float = 0.3
    ) -> None:
        super().__init__(name="disruptor", daemon=True)
        self.cluster, self.choose, self.every_s = cluster, choose, every_s
        self.injected: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._seen: set[str] = set()
        self._halt = threading.Event()

    def __enter__(self) -> Disruptor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join(timeout=60)

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            try:
                pods = self.cluster.pods()
            except Exception as exc:  # an API server restart: try again
                self.errors.append(str(exc))
                continue
            for pod in pods:
                uid = pod.metadata.uid
                if uid in self._seen or pod.status.phase != "Running":
                    continue
                if pod.metadata.deletion_timestamp is not None:
                    continue
                pids = step_processes(self.cluster.namespace, pod.metadata.name)
                if not pids:
                    continue
                self._seen.add(uid)
                action = self.choose(pod, len(self._seen) - 1)
                if action and self._disrupt(pod, action, pids):
                    job = pod.metadata.labels.get("batch.kubernetes.io/job-name", "")
                    self.injected.append((job, action))

    def _disrupt(self, pod: Any, action: str, pids: list[int]) -> bool:
        name, ns, core = pod.metadata.name, self.cluster.namespace, self.cluster.core
        try:
            if action == "evict":
                body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=ns))
                core.create_namespaced_pod_eviction(name, ns, body)
            elif action == "delete":
                core.delete_namespaced_pod(name, ns)
            elif action == "kill":
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
            else:
                raise ValueError(f"unknown disruption {action!r}")
        except (ApiException, ProcessLookupError) as exc:  # it ended just before
            self.errors.append(f"{action} {name}: {exc}")
            return False
        return True


def wait_for_processes(namespace: str, count: int, timeout_s: float = WAIT_S) -> list[int]:
    """Wait until ``count`` step processes of ``namespace`` run; their pids."""
    return wait_for(
        lambda: pids if len(pids := step_processes(namespace)) >= count else None,
        f"{count} step processes running in {namespace}",
        timeout_s,
    )


def wait_gone(pids: list[int], timeout_s: float = WAIT_S) -> None:
    wait_for(
        lambda: not [p for p in pids if process_cmdline(p) not in ([], [""])],
        f"processes {pids} ended",
        timeout_s,
    )
