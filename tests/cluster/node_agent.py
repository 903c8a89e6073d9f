"""A stand-in kubelet: the ONE simulated part of the local cluster (standard library only).

No container engine can run here, so this agent takes a kubelet's place on one Node. Everything
else -- scheduling, admission, RBAC, the Job controller (status, backoffLimit, podFailurePolicy,
activeDeadlineSeconds, ttlSecondsAfterFinished), owner references and garbage collection -- is
the real control plane's. The agent never reads or writes a Job.

What it does, as a kubelet would, talking to the real API server as ``system:node:<name>`` (so
the Node authorizer and the NodeRestriction admission plugin apply to it):

* registers its Node (allocatable cpu/memory/pods as declared on the command line, a Ready
  condition, InternalIP 127.0.0.1, its kubelet port in ``status.daemonEndpoints``) and renews
  its Lease in ``kube-node-lease`` every 10 s;
* watches the pods with ``spec.nodeName`` == its node and runs each container as a local process
  group: ``command`` + ``args`` (with ``$(VAR)`` expansion). **The image is ignored**: the host's
  programs run, so a container must have a ``command`` runnable here (the agent's own Python
  bin folder comes first on PATH, so ``python`` is the test venv's);
* environment: ``PATH``/``LANG``/``LC_ALL``/``TZ`` from the agent, ``HOSTNAME`` = pod name,
  ``KUBERNETES_SERVICE_HOST=127.0.0.1`` and ``KUBERNETES_SERVICE_PORT`` = the API server's port
  (not the ServiceCIDR's 10.0.0.1, which nothing routes), then ``envFrom`` (secretRef,
  configMapRef, with prefix) and ``env`` (``value``, ``valueFrom`` secretKeyRef, configMapKeyRef,
  fieldRef for metadata.name/namespace/uid/labels/annotations, spec.nodeName,
  spec.serviceAccountName, status.podIP/hostIP). A missing secret or key leaves the container
  waiting with reason CreateContainerConfigError, retried, as a kubelet does;
* volumes are local folders: ``emptyDir`` is a fresh folder per pod; ``hostPath`` is used as is
  (created for DirectoryOrCreate); ``persistentVolumeClaim`` is the ``hostPath``/``local`` path of
  the PersistentVolume bound to the claim (no provisioner runs: create the PV); ``secret``,
  ``configMap``, ``downwardAPI`` and ``projected`` (serviceAccountToken via the TokenRequest API,
  configMap, secret, downwardAPI) are written as files into a per-pod folder. A process cannot
  see a folder at its ``mountPath``, so **the agent rewrites each mountPath** (at a path
  boundary, longest first, with ``subPath`` appended) to the backing folder in ``command``,
  ``args``, ``workingDir`` and literal ``env`` values. A program that opens a mount path it did
  not get through those (e.g. the hard-coded /var/run/secrets/... of in-cluster config) sees
  nothing there: pass paths through args or env. The working directory is ``workingDir`` mapped,
  else a fresh per-pod folder;
* patches pod status like a kubelet (strategic merge patch of ``pods/status``): phase
  Pending -> Running -> Succeeded/Failed, conditions PodReadyToStartContainers, Initialized,
  ContainersReady, Ready, ``containerStatuses`` (waiting/running/terminated with exitCode,
  reason Completed/Error/StartError, startedAt, finishedAt, restartCount), podIP and hostIP
  127.0.0.1. A process killed by signal N exits 128+N, as a container runtime reports it.
  restartPolicy OnFailure/Always restart a container after a 10 s, 20 s, ... 300 s back-off;
* on deletion (``deletionTimestamp`` set): SIGTERM to each process group, SIGKILL once
  ``deletionGracePeriodSeconds`` have passed, a terminal phase in the status, then deletes the
  pod with gracePeriodSeconds=0; a pod's own ``activeDeadlineSeconds`` ends it the same way
  (grace terminationGracePeriodSeconds) with phase Failed, reason DeadlineExceeded;
* serves ``/containerLogs/{ns}/{pod}/{container}`` over HTTPS on its kubelet port (client
  certificate signed by the cluster CA required; query ``follow``, ``tailLines``,
  ``limitBytes``, ``previous``; ``timestamps`` and ``sinceSeconds`` are ignored) so
  ``read_namespaced_pod_log`` / ``kubectl logs`` work through the real API server.

Not simulated: resource limits and OOMKilled (no cgroups), securityContext (processes run as the
agent's user), probes (a started container is ready), lifecycle hooks, init and ephemeral
containers (a pod with initContainers fails with reason Unsupported), image pulls, service
environment variables other than KUBERNETES_*, exec/attach/port-forward, token refresh.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

log = logging.getLogger("node-agent")
POD_IP = "127.0.0.1"
LEASE_S = 40
RENEW_S = 10
RUNTIME = "shieldtune-node-agent"
_OWN_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
_PASS_ENV = ("LANG", "LC_ALL", "TZ")
#: How long status patches and deletes are retried while the API server is unreachable.
RETRY_S = 300.0


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        try:  # a Status object: its message is what a kubelet would show
            message = str(json.loads(body)["message"])
        except (ValueError, KeyError, TypeError):
            message = body[:500]
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class ConfigError(Exception):
    """The pod cannot start yet (missing secret, PV, ...): CreateContainerConfigError, retry."""


class Api:
    """A minimal JSON client of the API server (one connection per request: loopback is cheap
    and connections are then never shared between threads)."""

    def __init__(self, server: str, ca: str, cert: str, key: str) -> None:
        url = urlsplit(server)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.load_cert_chain(cert, key)

    def _conn(self, timeout: float | None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: dict[str, Any] | None = None,
    ) -> Any:
        if params:
            path += "?" + urlencode(params)
        conn = self._conn(30)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Accept": "application/json", "Content-Type": content_type}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
        finally:
            conn.close()
        if resp.status >= 300:
            raise ApiError(resp.status, text)
        return json.loads(text) if text else {}

    def watch(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The events of one watch request (the server ends it after ``timeoutSeconds``)."""
        conn = self._conn(float(params.get("timeoutSeconds", 300)) + 30)
        try:
            conn.request("GET", f"{path}?{urlencode({**params, 'watch': '1'})}")
            resp = conn.getresponse()
            if resp.status != 200:
                raise ApiError(resp.status, resp.read().decode(errors="replace"))
            for line in resp:
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names replaced, ``$$`` -> ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][-._A-Za-z0-9]*)\)", sub, text)


def field_value(pod: dict[str, Any], path: str) -> str:
    """The value of a downward-API ``fieldPath``."""
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": POD_IP,
        "status.podIPs": POD_IP,
        "status.hostIP": POD_IP,
        "status.hostIPs": POD_IP,
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)(?:\['([^']+)'\])?", path)
    if m:
        values = meta.get(m.group(1)) or {}
        if m.group(2):
            return str(values.get(m.group(2), ""))
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise ConfigError(f"fieldPath {path!r} is not simulated by the node agent")


class Container:
    """One container of a running pod: its process, log files and status."""

    def __init__(self, spec: dict[str, Any], log_dir: Path) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.log_dir = log_dir / self.name
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.restart_at: float | None = None
        self.backoff_s = 10.0
        self.started_at = ""

    def log_file(self, previous: bool = False) -> Path:
        return self.log_dir / f"{self.restarts - (1 if previous else 0)}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        term = self.state.get("terminated")
        return None if term is None else int(term["exitCode"])

    def start(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.started_at = now()
        out = self.log_file().open("ab")
        try:
            if not argv:
                raise FileNotFoundError(
                    "the node agent runs no images: the container needs a command"
                )
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:  # what containerd reports when exec fails
            self.proc = None
            self.terminated(128, "StartError", str(exc))
            return
        finally:
            out.close()
        self.state = {"running": {"startedAt": self.started_at}}

    def terminated(self, code: int, reason: str, message: str = "") -> None:
        term = {
            "exitCode": code,
            "reason": reason,
            "startedAt": self.started_at or now(),
            "finishedAt": now(),
            "containerID": self.container_id,
        }
        if message:
            term["message"] = message
        self.state = {"terminated": term}

    def reap(self) -> bool:
        """Record the exit of a process that has ended; True when it just did."""
        if self.proc is None or self.proc.poll() is None:
            return False
        rc = self.proc.returncode
        code = 128 - rc if rc < 0 else rc
        self.terminated(code, "Completed" if code == 0 else "Error")
        self.proc = None
        return True

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    @property
    def container_id(self) -> str:
        return f"{RUNTIME}://{self.name}-{self.restarts}"

    def status(self, image: str) -> dict[str, Any]:
        state = {k: None for k in ("waiting", "running", "terminated")}
        state.update(self.state)
        last = {k: None for k in ("waiting", "running", "terminated")}
        last.update(self.last_state)
        return {
            "name": self.name,
            "image": image,
            "imageID": "",
            "containerID": self.container_id if "waiting" not in self.state else None,
            "ready": "running" in self.state,
            "started": "running" in self.state,
            "restartCount": self.restarts,
            "state": state,
            "lastState": last,
        }


class PodRunner(threading.Thread):
    """Runs one pod (by uid) from start to a terminal phase; the only writer of its status."""

    def __init__(self, agent: Agent, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.agent, self.pod = agent, pod
        self.ns, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = agent.work_dir / "pods" / f"{self.ns}_{self.pod_name}_{self.uid}"
        self.containers = [Container(c, self.dir / "logs") for c in pod["spec"]["containers"]]
        self.images = {c["name"]: c.get("image", "") for c in pod["spec"]["containers"]}
        self.lock = threading.Lock()
        self.kill_at: float | None = None  # set on deletion: SIGKILL after this (monotonic)
        self.deleting = False
        self.gone = False  # the pod object no longer exists
        self.done = threading.Event()
        self.start_time = now()
        self.t0 = time.monotonic()
        self.phase = "Pending"
        self.reason = self.message = ""
        self.last_pushed: Any = None
        self.conditions: dict[str, tuple[str, str]] = {}  # type -> (status, since)

    # -- called from the watch thread -----------------------------------------------------

    def request_stop(self, grace_s: float, gone: bool = False) -> None:
        with self.lock:
            self.deleting = True
            self.gone = self.gone or gone
            at = time.monotonic() + max(grace_s, 0)
            self.kill_at = at if self.kill_at is None else min(self.kill_at, at)

    def container(self, name: str) -> Container | None:
        return next((c for c in self.containers if c.name == name), None)

    # -- the pod's life ---------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s: node agent error", self.ns, self.pod_name)
            self._kill_all(signal.SIGKILL)
        finally:
            self.done.set()

    def _run(self) -> None:
        spec = self.pod["spec"]
        self.push()
        if spec.get("initContainers"):
            for c in self.containers:
                c.terminated(128, "Unsupported", "initContainers are not simulated")
            self.finish("Failed", "Unsupported", "the node agent does not run initContainers")
            return
        plans = self._prepare_until_ready()
        if plans is None:  # deleted before it could start
            self.finish_deleted()
            return
        for c in self.containers:
            c.start(*plans[c.name])
        self.phase = "Running"
        self.push()
        deadline = spec.get("activeDeadlineSeconds")  # counted from startTime, as a kubelet
        t0 = self.t0
        term_grace = float(spec.get("terminationGracePeriodSeconds", 30))
        signalled = False
        while True:
            changed = any(c.reap() for c in self.containers)
            changed |= self._restarts(plans)
            if deadline is not None and not self.deleting and time.monotonic() - t0 > deadline:
                log.info("pod %s/%s: activeDeadlineSeconds exceeded", self.ns, self.pod_name)
                self.reason = "DeadlineExceeded"
                self.message = "Pod was active on the node longer than the specified deadline"
                self.request_stop(term_grace)
            if self.deleting:
                if not signalled:
                    self._kill_all(signal.SIGTERM)
                    signalled = True
                if self.kill_at is not None and time.monotonic() >= self.kill_at:
                    self._kill_all(signal.SIGKILL)
                if not any(c.running for c in self.containers):
                    for c in self.containers:
                        c.reap()
                        if "terminated" not in c.state and c.last_state:  # awaiting restart
                            c.state = c.last_state
                    if self.reason == "DeadlineExceeded":
                        self.finish("Failed", self.reason, self.message)
                    else:
                        self.finish_deleted()
                    return
            elif all(self._finished(c) for c in self.containers):
                ok = all(c.exit_code == 0 for c in self.containers)
                self.finish("Succeeded" if ok else "Failed")
                return
            if changed:
                self.push()
            time.sleep(0.2)

    def _finished(self, c: Container) -> bool:
        if c.running or c.restart_at is not None:
            return False
        return "terminated" in c.state

    def _restarts(self, plans: dict[str, tuple[list[str], Path, dict[str, str]]]) -> bool:
        """restartPolicy OnFailure/Always: schedule and perform restarts with back-off."""
        policy = self.pod["spec"].get("restartPolicy", "Always")
        changed = False
        for c in self.containers:
            if self.deleting or c.running:
                continue
            if c.restart_at is not None:
                if time.monotonic() >= c.restart_at:
                    c.backoff_s = min(c.backoff_s * 2, 300.0)
                    c.restart_at = None
                    c.restarts += 1
                    c.start(*plans[c.name])
                    changed = True
                continue
            code = c.exit_code
            if code is None or policy == "Never" or (policy == "OnFailure" and code == 0):
                continue
            c.restart_at = time.monotonic() + c.backoff_s
            c.last_state = c.state
            c.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {c.backoff_s:.0f}s restarting failed container={c.name}",
                }
            }
            changed = True
        return changed

    def _kill_all(self, sig: int) -> None:
        for c in self.containers:
            c.signal(sig)

    def _prepare_until_ready(self) -> dict[str, tuple[list[str], Path, dict[str, str]]] | None:
        while True:
            if self.deleting:
                return None
            try:
                return self.agent.prepare(self)
            except ConfigError as exc:
                for c in self.containers:
                    c.state = {
                        "waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}
                    }
                self.push()
            time.sleep(2)

    def finish(self, phase: str, reason: str = "", message: str = "") -> None:
        self.phase, self.reason, self.message = phase, reason, message
        self.push()
        log.info("pod %s/%s: %s %s", self.ns, self.pod_name, phase, reason)

    def finish_deleted(self) -> None:
        """After the kill on deletion: record a terminal phase, then delete with grace 0."""
        if self.gone:
            return
        if self.phase != "Pending" or any("terminated" in c.state for c in self.containers):
            codes = [c.exit_code for c in self.containers]
            self.finish("Succeeded" if all(x == 0 for x in codes) else "Failed")
        self.agent.delete_pod(self.ns, self.pod_name, self.uid)

    # -- status ----------------------------------------------------------------------------

    def push(self) -> None:
        """Strategic-merge-patch the pod's status (our conditions merge by type, so the
        scheduler's PodScheduled and controllers' DisruptionTarget stay)."""
        if self.gone:
            return
        terminal = self.phase in ("Succeeded", "Failed")
        ready = self.phase == "Running" and all("running" in c.state for c in self.containers)
        not_ready = "PodCompleted" if terminal else "ContainersNotReady"

        def cond(kind: str, ok: bool, reason: str = "") -> dict[str, Any]:
            value = "True" if ok else "False"
            if self.conditions.get(kind, ("", ""))[0] != value:
                self.conditions[kind] = (value, now())
            return {
                "type": kind,
                "status": value,
                "lastProbeTime": None,
                "lastTransitionTime": self.conditions[kind][1],
                "reason": None if ok else reason or None,
            }

        status: dict[str, Any] = {
            "phase": self.phase,
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "startTime": self.start_time,
            "conditions": [
                cond("PodReadyToStartContainers", not terminal),
                cond("Initialized", True),
                cond("ContainersReady", ready, not_ready),
                cond("Ready", ready, not_ready),
            ],
            "containerStatuses": [c.status(self.images[c.name]) for c in self.containers],
        }
        if self.phase != "Pending":
            status["podIP"], status["podIPs"] = POD_IP, [{"ip": POD_IP}]
        status["reason"] = self.reason or None
        status["message"] = self.message or None
        key = json.dumps(status, sort_keys=True)  # skip patches that would change nothing
        if key == self.last_pushed:
            return
        body = {"metadata": {"uid": self.uid}, "status": status}
        self.agent.patch_pod_status(self.ns, self.pod_name, body)
        self.last_pushed = key


class Agent:
    """The node: registration, lease, pod watch, pod runners and the kubelet port."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.node = args.node_name
        self.api = Api(args.server, args.ca, args.cert, args.key)
        self.work_dir = Path(args.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.api_port = urlsplit(args.server).port or 443
        self.runners: dict[str, PodRunner] = {}
        self.runners_lock = threading.Lock()
        self.stopping = threading.Event()
        self.started = now()
        self.node_uid = ""

    # -- node and lease ---------------------------------------------------------------------

    def node_status(self) -> dict[str, Any]:
        a = self.args
        resources = {"cpu": a.cpu, "memory": a.memory, "pods": a.pods, "ephemeral-storage": "100Gi"}
        t = now()

        def cond(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": t,
                "lastTransitionTime": self.started,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "not simulated"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "not simulated"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "not simulated"),
                cond("Ready", "True", "KubeletReady", f"{RUNTIME} is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": POD_IP},
                {"type": "Hostname", "address": self.node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": a.port}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, self.node).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.node)),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": os.uname().release,
                "osImage": f"{RUNTIME} (processes on the host)",
                "containerRuntimeVersion": f"{RUNTIME}://0.1",
                "kubeletVersion": a.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "status": self.node_status(),
        }
        try:
            self.api.call("POST", "/api/v1/nodes", node)
        except ApiError as exc:
            if exc.status != 409:
                raise
        self.heartbeat()
        self.node_uid = self.api.call("GET", f"/api/v1/nodes/{self.node}")["metadata"]["uid"]
        log.info("registered node %s (kubelet port %d)", self.node, self.args.port)

    def heartbeat(self) -> None:
        self.api.call(
            "PATCH",
            f"/api/v1/nodes/{self.node}/status",
            {"status": self.node_status()},
            content_type="application/strategic-merge-patch+json",
        )

    def lease_loop(self) -> None:
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        lease: dict[str, Any] | None = None
        beats = 0
        while not self.stopping.is_set():
            try:
                if lease is None:
                    with contextlib.suppress(ApiError):
                        lease = self.api.call("GET", f"{path}/{self.node}")
                spec = {
                    "holderIdentity": self.node,
                    "leaseDurationSeconds": LEASE_S,
                    "renewTime": now_micro(),
                }
                if lease is None:
                    lease = self.api.call(
                        "POST",
                        path,
                        {
                            "apiVersion": "coordination.k8s.io/v1",
                            "kind": "Lease",
                            "metadata": {
                                "name": self.node,
                                "namespace": "kube-node-lease",
                                "ownerReferences": [
                                    {
                                        "apiVersion": "v1",
                                        "kind": "Node",
                                        "name": self.node,
                                        "uid": self.node_uid,
                                    }
                                ],
                            },
                            "spec": spec,
                        },
                    )
                else:
                    lease["spec"].update(spec)
                    lease = self.api.call("PUT", f"{path}/{self.node}", lease)
                beats += 1
                if beats % 6 == 0:  # a Ready heartbeat about once a minute, as kubelets do
                    self.heartbeat()
            except (ApiError, OSError) as exc:
                log.warning("lease renewal failed: %s", exc)
                lease = None
            self.stopping.wait(RENEW_S)

    # -- pods -------------------------------------------------------------------------------

    def watch_pods(self) -> None:
        selector = {"fieldSelector": f"spec.nodeName={self.node}"}
        while not self.stopping.is_set():
            try:
                listing = self.api.call("GET", "/api/v1/pods", params=selector)
                rv = listing["metadata"]["resourceVersion"]
                seen = set()
                for pod in listing.get("items", []):
                    seen.add(pod["metadata"]["uid"])
                    self.sync(pod)
                with self.runners_lock:
                    vanished = [r for uid, r in self.runners.items() if uid not in seen]
                for runner in vanished:
                    self.forget(runner)
                while not self.stopping.is_set():
                    params = {
                        **selector,
                        "resourceVersion": rv,
                        "allowWatchBookmarks": "true",
                        "timeoutSeconds": 300,
                    }
                    for event in self.api.watch("/api/v1/pods", params):
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            raise ApiError(int(obj.get("code", 500)), json.dumps(obj))
                        rv = obj["metadata"]["resourceVersion"]
                        if kind == "DELETED":
                            with self.runners_lock:
                                runner = self.runners.get(obj["metadata"]["uid"])
                            if runner is not None:
                                self.forget(runner)
                        elif kind in ("ADDED", "MODIFIED"):
                            self.sync(obj)
            except (ApiError, OSError, ValueError) as exc:
                if not self.stopping.is_set():
                    log.info("pod watch restarts: %s", exc)
                    time.sleep(1)

    def sync(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        deleting = meta.get("deletionTimestamp") is not None
        with self.runners_lock:
            runner = self.runners.get(uid)
            if runner is None and not deleting:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    return
                runner = PodRunner(self, pod)
                self.runners[uid] = runner
                log.info("pod %s/%s: starting", meta["namespace"], meta["name"])
                runner.start()
                return
        if not deleting:
            return
        grace = float(meta.get("deletionGracePeriodSeconds") or 0)
        if runner is not None and not runner.done.is_set():
            runner.request_stop(grace)
        else:  # never ran here, or already finished: nothing to kill
            self.delete_pod(meta["namespace"], meta["name"], uid)

    def forget(self, runner: PodRunner) -> None:
        """The pod object is gone: kill what is left, at once."""
        runner.request_stop(0, gone=True)
        with self.runners_lock:
            self.runners.pop(runner.uid, None)

    def retrying(self, what: str, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """``api.call`` that rides out an API server restart: connection errors, 429 and 5xx
        are retried for up to RETRY_S (a kubelet keeps retrying too); other errors raise."""
        deadline = time.monotonic() + RETRY_S
        while True:
            try:
                return self.api.call(method, path, body, **kw)
            except ApiError as exc:
                if (exc.status != 429 and exc.status < 500) or time.monotonic() > deadline:
                    raise
                err: Exception = exc
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise
                err = exc
            log.warning("%s failed (%s), retrying", what, err)
            if self.stopping.wait(1.0):
                raise OSError("node agent stopping") from err

    def patch_pod_status(self, ns: str, name: str, body: dict[str, Any]) -> None:
        path = f"/api/v1/namespaces/{ns}/pods/{name}/status"
        try:
            self.retrying(
                f"status patch of {ns}/{name}",
                "PATCH",
                path,
                body,
                content_type="application/strategic-merge-patch+json",
            )
        except ApiError as exc:
            if exc.status != 404:  # 404: the pod is gone, nothing to report to
                log.error("pod %s/%s: status patch refused: %s", ns, name, exc)

    def delete_pod(self, ns: str, name: str, uid: str) -> None:
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self.retrying(
                f"delete of {ns}/{name}", "DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", body
            )
        except ApiError as exc:
            if exc.status not in (404, 409):  # gone, or another pod of that name by now
                log.warning("pod %s/%s: delete failed: %s", ns, name, exc)

    # -- what a container gets --------------------------------------------------------------

    def _get(self, kind: str, ns: str, name: str, optional: bool) -> dict[str, Any] | None:
        try:
            return self.api.call("GET", f"/api/v1/namespaces/{ns}/{kind}/{quote(name)}")
        except OSError as exc:  # API server unreachable: CreateContainerConfigError, retried
            raise ConfigError(f"cannot read {kind[:-1]} {name!r}: {exc}") from None
        except ApiError as exc:
            if exc.status == 404 and optional:
                return None
            # 403 right after scheduling is the Node authorizer's graph catching up: retried.
            raise ConfigError(exc.message) from None

    def _data(self, kind: str, ns: str, name: str, optional: bool) -> dict[str, bytes] | None:
        obj = self._get(kind, ns, name, optional)
        if obj is None:
            return None
        if kind == "secrets":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        out = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return out

    def _key(self, ref: dict[str, Any], kind: str, ns: str) -> str | None:
        optional = bool(ref.get("optional", False))
        data = self._data(kind, ns, ref["name"], optional)
        if data is None or ref["key"] not in data:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {ref['key']} in {kind[:-1]} {ns}/{ref['name']}")
        return data[ref["key"]].decode(errors="replace")

    def env(
        self, pod: dict[str, Any], spec: dict[str, Any], mounts: list[tuple[str, str]]
    ) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        bin_dir = str(Path(sys.executable).parent)
        env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        env.update({k: os.environ[k] for k in _PASS_ENV if k in os.environ})
        env["HOSTNAME"] = pod["metadata"]["name"]
        port = str(self.api_port)
        env.update(
            KUBERNETES_SERVICE_HOST=POD_IP,
            KUBERNETES_SERVICE_PORT=port,
            KUBERNETES_SERVICE_PORT_HTTPS=port,
            KUBERNETES_PORT=f"tcp://{POD_IP}:{port}",
        )
        for src in spec.get("envFrom") or []:
            prefix = src.get("prefix", "")
            for field_name, kind in (("secretRef", "secrets"), ("configMapRef", "configmaps")):
                ref = src.get(field_name)
                if ref:
                    data = self._data(kind, ns, ref["name"], bool(ref.get("optional", False)))
                    for k, v in (data or {}).items():
                        env[prefix + k] = v.decode(errors="replace")
        for var in spec.get("env") or []:
            name, source = var["name"], var.get("valueFrom")
            if source is None:
                env[name] = map_paths(expand(var.get("value", ""), env), mounts)
            elif "fieldRef" in source:
                env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in source or "configMapKeyRef" in source:
                secret = "secretKeyRef" in source
                ref = source["secretKeyRef" if secret else "configMapKeyRef"]
                value = self._key(ref, "secrets" if secret else "configmaps", ns)
                if value is not None:
                    env[name] = value
            elif "resourceFieldRef" in source:
                res = source["resourceFieldRef"]["resource"]  # e.g. limits.cpu
                group, _, key = res.partition(".")
                env[name] = str((spec.get("resources", {}).get(group) or {}).get(key, "0"))
            else:
                raise ConfigError(f"env {name}: valueFrom {sorted(source)} is not simulated")
        return env

    def volumes(self, runner: PodRunner) -> dict[str, str]:
        """Make (or find) the folder behind each volume of the pod."""
        pod, ns = runner.pod, runner.ns
        out: dict[str, str] = {}
        for vol in pod["spec"].get("volumes") or []:
            name = vol["name"]
            folder = runner.dir / "volumes" / name
            if "emptyDir" in vol:
                folder.mkdir(parents=True, exist_ok=True)
                out[name] = str(folder)
            elif "hostPath" in vol:
                path = Path(vol["hostPath"]["path"])
                if vol["hostPath"].get("type") == "DirectoryOrCreate":
                    path.mkdir(parents=True, exist_ok=True)
                if not path.exists() and vol["hostPath"].get("type") not in (None, ""):
                    raise ConfigError(f"hostPath {path} does not exist")
                out[name] = str(path)
            elif "persistentVolumeClaim" in vol:
                out[name] = self._pv_path(ns, vol["persistentVolumeClaim"]["claimName"])
            elif any(k in vol for k in ("secret", "configMap", "downwardAPI", "projected")):
                folder.mkdir(parents=True, exist_ok=True)
                self._write_files(runner, vol, folder)
                out[name] = str(folder)
            else:
                kinds = sorted(k for k in vol if k != "name")
                raise ConfigError(f"volume {name!r}: {kinds} is not simulated by the node agent")
        return out

    def _pv_path(self, ns: str, claim: str) -> str:
        pvc = self._get("persistentvolumeclaims", ns, claim, optional=False) or {}
        pv_name = pvc.get("spec", {}).get("volumeName")
        if not pv_name:
            raise ConfigError(f"persistentvolumeclaim {claim!r} is not bound")
        try:
            pv = self.api.call("GET", f"/api/v1/persistentvolumes/{pv_name}")
        except (ApiError, OSError) as exc:
            raise ConfigError(f"persistentvolume {pv_name!r}: {exc}") from None
        source = pv["spec"].get("hostPath") or pv["spec"].get("local")
        if not source:
            raise ConfigError(f"persistentvolume {pv_name!r}: only hostPath/local are simulated")
        Path(source["path"]).mkdir(parents=True, exist_ok=True)
        return str(source["path"])

    def _write_files(self, runner: PodRunner, vol: dict[str, Any], folder: Path) -> None:
        sources = vol["projected"]["sources"] if "projected" in vol else [vol]
        for src in sources:
            files: dict[str, bytes] = {}
            if "secret" in src or "configMap" in src:
                secret = "secret" in src
                ref = src["secret" if secret else "configMap"]
                name = ref.get("secretName") if secret and "secretName" in ref else ref["name"]
                data = self._data(
                    "secrets" if secret else "configmaps",
                    runner.ns,
                    name,
                    ref.get("optional", False),
                )
                data = data or {}
                items = ref.get("items")
                files = (
                    {i["path"]: data[i["key"]] for i in items if i["key"] in data}
                    if items
                    else data
                )
            elif "downwardAPI" in src:
                for item in src["downwardAPI"].get("items", []):
                    if "fieldRef" in item:
                        value = field_value(runner.pod, item["fieldRef"]["fieldPath"])
                        files[item["path"]] = value.encode()
            elif "serviceAccountToken" in src:
                files[src["serviceAccountToken"]["path"]] = self._token(
                    runner, src["serviceAccountToken"]
                )
            for rel, content in files.items():
                target = folder / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)

    def _token(self, runner: PodRunner, source: dict[str, Any]) -> bytes:
        """A bound service-account token from the TokenRequest API, as a kubelet gets it."""
        sa = runner.pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "audiences": [source["audience"]] if source.get("audience") else [],
            "expirationSeconds": int(source.get("expirationSeconds", 3607)),
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": runner.pod_name,
                "uid": runner.uid,
            },
        }
        try:
            resp = self.api.call(
                "POST",
                f"/api/v1/namespaces/{runner.ns}/serviceaccounts/{sa}/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            )
        except (ApiError, OSError) as exc:
            raise ConfigError(f"token for serviceaccount {sa!r}: {exc}") from None
        return str(resp["status"]["token"]).encode()

    def prepare(self, runner: PodRunner) -> dict[str, tuple[list[str], Path, dict[str, str]]]:
        """argv, working directory and environment of each container (ConfigError: retry)."""
        volumes = self.volumes(runner)
        plans = {}
        for spec in runner.pod["spec"]["containers"]:
            mounts = []
            for m in spec.get("volumeMounts") or []:
                host = volumes.get(m["name"])
                if host is None:
                    raise ConfigError(f"volumeMount {m['name']!r} names no volume")
                if m.get("subPath"):
                    host = os.path.join(host, m["subPath"])
                    Path(host).mkdir(parents=True, exist_ok=True)
                if m["mountPath"].rstrip("/"):
                    mounts.append((m["mountPath"].rstrip("/"), host))
            env = self.env(runner.pod, spec, mounts)
            argv = [
                map_paths(expand(a, env), mounts)
                for a in [*(spec.get("command") or []), *(spec.get("args") or [])]
            ]
            if spec.get("workingDir"):
                cwd = Path(map_paths(spec["workingDir"], mounts))
            else:
                cwd = runner.dir / "workdir"
            cwd.mkdir(parents=True, exist_ok=True)
            plans[spec["name"]] = (argv, cwd, env)
        return plans

    # -- kubelet port -----------------------------------------------------------------------

    def find_runner(self, ns: str, name: str) -> PodRunner | None:
        with self.runners_lock:
            found = [r for r in self.runners.values() if r.ns == ns and r.pod_name == name]
        return found[-1] if found else None

    def serve(self) -> ThreadingHTTPServer:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("kubelet port: " + fmt, *args)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                if parts == ["healthz"]:
                    self._send(200, b"ok")
                    return
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self._send(404, b"not found")
                    return
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                agent.container_logs(self, parts[1], parts[2], parts[3], query)

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", self.args.port), Handler)
        server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.args.serving_cert, self.args.serving_key)
        ctx.load_verify_locations(self.args.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED  # only the API server (cluster CA) may read logs
        server.socket = ctx.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        threading.Thread(target=server.serve_forever, name="kubelet-port", daemon=True).start()
        return server

    def container_logs(
        self, h: BaseHTTPRequestHandler, ns: str, pod: str, name: str, q: dict[str, str]
    ) -> None:
        runner = self.find_runner(ns, pod)
        container = runner.container(name) if runner else None
        if container is None:
            h.send_error(404, f"container {name} of pod {ns}/{pod} is not on this node")
            return
        previous = q.get("previous") == "true"
        if previous and container.restarts == 0:
            h.send_error(400, f'previous terminated container "{name}" not found')
            return
        path = container.log_file(previous)
        data = path.read_bytes() if path.exists() else b""
        if "tailLines" in q:
            n = int(q["tailLines"])
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-n:]) if n > 0 else b""
        limit = int(q["limitBytes"]) if "limitBytes" in q else None
        if limit is not None:
            data = data[:limit]
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.end_headers()
        h.wfile.write(data)
        sent = len(data)
        if q.get("follow") != "true" or previous:
            return
        offset = path.stat().st_size if path.exists() else 0
        restarts = container.restarts
        while not self.stopping.is_set() and (limit is None or sent < limit):
            chunk = b""
            if path.exists():
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read(65536)
            if chunk:
                if limit is not None:
                    chunk = chunk[: limit - sent]
                offset += len(chunk)
                sent += len(chunk)
                try:
                    h.wfile.write(chunk)
                    h.wfile.flush()
                except OSError:
                    return
                continue
            if not container.running or container.restarts != restarts:
                return
            time.sleep(0.2)

    # -- shutdown ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Kill every pod's processes (a stopped kubelet leaves no workload on this host)."""
        self.stopping.set()
        with self.runners_lock:
            runners = list(self.runners.values())
        for r in runners:
            r._kill_all(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(c.running for r in runners for c in r.containers):
            time.sleep(0.1)
        for r in runners:
            r._kill_all(signal.SIGKILL)


def map_paths(text: str, mounts: list[tuple[str, str]]) -> str:
    """Replace each mountPath (at a path boundary) in ``text`` by its host folder, in one pass
    so a host folder that itself contains a mount path is not rewritten again."""
    if not mounts:
        return text
    by_len = sorted(mounts, key=lambda m: len(m[0]), reverse=True)
    table = dict(by_len)
    pattern = "|".join(re.escape(mp) for mp, _ in by_len)
    return re.sub(rf"(?<![\w.\-/])({pattern})(?=/|$|[^\w.\-])", lambda m: table[m.group(1)], text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="stand-in kubelet of the local test cluster")
    p.add_argument("--server", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True, help="client cert CN=system:node:<name>")
    p.add_argument("--key", required=True)
    p.add_argument("--serving-cert", required=True, help="for the kubelet port")
    p.add_argument("--serving-key", required=True)
    p.add_argument("--node-name", required=True)
    p.add_argument("--port", type=int, required=True, help="the kubelet port (127.0.0.1)")
    p.add_argument("--work-dir", required=True, help="pod folders and container logs")
    p.add_argument("--cpu", default="16")
    p.add_argument("--memory", default="64Gi")
    p.add_argument("--pods", default="110")
    p.add_argument("--kubelet-version", default="v0.0.0")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s"
    )
    agent = Agent(args)
    try:
        agent.serve()  # first: a taken port must fail before the Node advertises it
    except OSError as exc:
        print(f"node agent: cannot listen on 127.0.0.1:{args.port}: {exc}", flush=True)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    while True:
        try:
            agent.register()
            break
        except (ApiError, OSError) as exc:
            log.warning("node registration failed, retrying: %s", exc)
            if agent.stopping.wait(2):
                return 0
    threading.Thread(target=agent.lease_loop, name="lease", daemon=True).start()
    threading.Thread(target=agent.watch_pods, name="pod-watch", daemon=True).start()
    agent.stopping.wait()
    log.info("stopping: killing the pods' processes")
    agent.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
