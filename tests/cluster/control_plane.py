"""Start the real Kubernetes control plane (and the node agent) on loopback, and stop it.

Used by the pytest session fixture (tests/cluster/fixtures.py) and by a person through
``scripts/k8s-control-plane.sh up`` (``python -m tests.cluster.control_plane --bin-dir DIR``).

What runs, all bound to 127.0.0.1 on free ports, each in its own process group with its log in
``<work_dir>/logs/<name>.log``:

* etcd (``--unsafe-no-fsync``, data in the work folder);
* kube-apiserver with TLS, client-certificate authentication against a CA generated here,
  ``--authorization-mode=Node,RBAC``, the default admission plugins (PodSecurity among them)
  plus NodeRestriction, and service-account signing keys;
* kube-controller-manager (every default controller, per-controller service-account
  credentials) and kube-scheduler, each with its own client certificate;
* an audit log (``<work_dir>/audit/audit.jsonl``, Kubernetes' own audit backend) of every
  request made by anyone but the control plane and the node agent, so a test can check which
  API calls the code under test made (:meth:`ControlPlane.audit_events`);
* tests/cluster/node_agent.py, the one simulated part: a stand-in kubelet that authenticates as
  ``system:node:<name>`` and runs pods as local processes.

Only the standard library and ``cryptography`` are needed here; the tests talk to the cluster
with the official ``kubernetes`` client through :attr:`ControlPlane.kubeconfig`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster.pki import APISERVER_SANS, CertificateAuthority, CertPair, service_account_keys

#: The ServiceCIDR given to the API server and the controller-manager. Nothing routes it:
#: pods reach the API server at 127.0.0.1 (see node_agent), never at 10.0.0.1.
SERVICE_CIDR = "10.0.0.0/24"
NODE_NAME = "shieldtune-node"
#: How long one component may take to become ready; generous because CI may be loaded.
READY_TIMEOUT_S = 180.0
_PORT_RETRIES = 5
_IN_USE = ("address already in use", "bind: address", "errno 98")
_NODE_AGENT = Path(__file__).with_name("node_agent.py")
#: audit.k8s.io/v1 Policy: nothing from the control plane's own identities or the node agent
#: (their traffic would drown the rest), the body of every Job creation (what a client
#: really POSTed, before defaulting and admission), the metadata of every other request.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    userGroups: ["system:nodes", "system:serviceaccounts:kube-system"]
  - level: None
    users: ["system:kube-controller-manager", "system:kube-scheduler", "system:apiserver"]
  - level: None
    nonResourceURLs: ["/healthz*", "/readyz*", "/livez*", "/version"]
  - level: Request
    verbs: ["create"]
    resources: [{group: "batch", resources: ["jobs"]}]
  - level: Metadata
"""
ROOT = Path(__file__).resolve().parents[2]
#: Builds or reuses the binaries; its last line of stdout is their folder.
SCRIPT = ROOT / "scripts" / "k8s-control-plane.sh"


class ControlPlaneError(RuntimeError):
    """A component did not start or become ready; the message carries its log tail."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago.

    Another process may take one before the component binds it; :meth:`ControlPlane._launch`
    notices the component's "address already in use" exit and retries with fresh ports.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the process that started it dies.

    So a crashed or killed pytest leaves no etcd or apiserver behind. Only used when the
    starting thread is the main thread (PR_SET_PDEATHSIG fires when the *thread* exits).
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Process:
    """One component: a process group with its combined stdout/stderr in ``log``."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n==> {' '.join(self.argv)}\n".encode())
            out.flush()
            in_main = threading.current_thread() is threading.main_thread()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
                preexec_fn=_die_with_parent if in_main and sys.platform == "linux" else None,
            )

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the whole process group, SIGKILL it after ``grace_s``.

        Short on purpose: kube-apiserver's graceful shutdown waits up to 60 s for open watch
        connections, and nothing here needs a clean shutdown (throwaway data).
        """
        if self.popen is None:
            return
        pgid = self.popen.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.popen.wait()
        with contextlib.suppress(ProcessLookupError):  # children left in the group
            os.killpg(pgid, signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        return log_tail(self.log, lines)


def _kubeconfig(
    path: Path, server: str, ca: Path, user: CertPair, name: str, namespace: str | None = None
) -> Path:
    """A kubeconfig with the CA and client certificate embedded (portable, one file).

    Written as YAML by hand: base64 holds no character YAML would need quoted.
    """
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    path.write_text(
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"- name: {name}\n"
        "  cluster:\n"
        f"    server: {server}\n"
        f"    certificate-authority-data: {b64(ca)}\n"
        "users:\n"
        f"- name: {name}\n"
        "  user:\n"
        f"    client-certificate-data: {b64(user.cert)}\n"
        f"    client-key-data: {b64(user.key)}\n"
        "contexts:\n"
        f"- name: {name}\n"
        "  context:\n"
        f"    cluster: {name}\n"
        f"    user: {name}\n"
        + (f"    namespace: {namespace}\n" if namespace else "")
        + f"current-context: {name}\n"
    )
    path.chmod(0o600)
    return path


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + the node agent.

    ``bin_dir`` is what ``scripts/k8s-control-plane.sh build`` printed; ``work_dir`` receives
    the PKI, kubeconfigs, etcd data, the node agent's pod folders and ``logs/``.
    """

    bin_dir: Path
    work_dir: Path
    node_name: str = NODE_NAME
    #: Declared node capacity: the scheduler's fit checks are real, the numbers are chosen
    #: (the agent enforces no limits), big enough for parallel test pods.
    node_capacity: dict[str, str] = field(
        default_factory=lambda: {"cpu": "16", "memory": "64Gi", "pods": "110"}
    )
    ready_timeout_s: float = READY_TIMEOUT_S
    processes: list[Process] = field(default_factory=list)
    api_port: int = 0
    kubeconfig: Path = field(init=False)

    def __post_init__(self) -> None:
        self.bin_dir = Path(self.bin_dir)
        self.work_dir = Path(self.work_dir)
        self.pki_dir = self.work_dir / "pki"
        self.log_dir = self.work_dir / "logs"
        self.kubeconfig = self.work_dir / "admin.kubeconfig"
        self.audit_log = self.work_dir / "audit" / "audit.jsonl"

    # -- public API ---------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def start(self) -> ControlPlane:
        """Start every component in order and wait until each is ready; clean up on failure."""
        for binary in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            if not os.access(self.bin_dir / binary, os.X_OK):
                raise ControlPlaneError(
                    f"{self.bin_dir / binary} is missing: run scripts/k8s-control-plane.sh build"
                )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._make_pki()
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
            self._start_scheduler()
            self._start_node_agent()
            self._wait_cluster_usable()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything, the node agent (and so its pods) first, etcd last."""
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()

    def restart_apiserver(
        self, down_s: float = 0.0, while_down: Callable[[], object] | None = None
    ) -> None:
        """Stop kube-apiserver and start it again on the same port, ``down_s`` later and once
        ``while_down()`` (if given) has returned.

        For tests whose clients (the executor's polling, the controllers' and the node agent's
        watches) must ride out an API server restart; etcd keeps the data. ``while_down`` lets
        a test keep the API server down until its client has seen the outage (for example a
        number of failed calls), instead of guessing a duration.
        """
        index, old = next(
            (i, p) for i, p in enumerate(self.processes) if p.name == "kube-apiserver"
        )
        old.stop()
        try:
            time.sleep(down_s)
            if while_down is not None:
                while_down()
        finally:  # also when ``while_down`` fails: the session's other tests need it back
            new = Process(old.name, old.argv, old.log, env=old.env)
            new.start()
            self.processes[index] = new
            self._wait_ready(new, lambda: self._http_ok(f"{self.server}/readyz", self._admin_ctx))

    def _wait_ready(self, proc: Process, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if not proc.alive:
                code = proc.popen.returncode if proc.popen else None
                raise ControlPlaneError(
                    f"{proc.name} exited with {code} (log {proc.log}):\n{proc.tail()}"
                )
            if ready():
                return
            time.sleep(0.25)
        raise ControlPlaneError(
            f"{proc.name} did not become ready within {self.ready_timeout_s:.0f} s "
            f"(log {proc.log}):\n{proc.tail()}"
        )

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api_get(self, path: str, timeout: float = 10.0) -> Any:
        """GET ``path`` from the API server as the admin (JSON decoded)."""
        with urllib.request.urlopen(
            self.server + path, context=self._admin_ctx, timeout=timeout
        ) as resp:
            return json.loads(resp.read())

    def client_kubeconfig(
        self, user: str, groups: Sequence[str] = (), namespace: str | None = None
    ) -> Path:
        """A kubeconfig for a new client certificate of ``user`` (``groups`` are its RBAC
        groups; ``system:masters`` makes it an admin) whose context namespace is ``namespace``.

        A test gives the code under test its own identity, so :meth:`audit_events` can tell
        that code's requests from the test's own.
        """
        stem = f"user-{len(list(self.pki_dir.glob('user-*.crt')))}"
        pair = self._authority.issue(stem, user, organizations=tuple(groups), client=True)
        return _kubeconfig(
            self.work_dir / f"{stem}.kubeconfig", self.server, self.ca.cert, pair, user, namespace
        )

    def audit_events(self, user: str | None = None) -> list[dict[str, Any]]:
        """The audit log's events (stage ResponseComplete, or Panic), optionally only
        ``user``'s, oldest first. Each has ``verb``, ``objectRef`` (resource, namespace, name,
        subresource), ``responseStatus.code`` and, for Job creations, ``requestObject``."""
        try:
            lines = self.audit_log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:  # a line still being written
                continue
            if event.get("stage") not in ("ResponseComplete", "Panic"):
                continue
            if user is None or event.get("user", {}).get("username") == user:
                events.append(event)
        return events

    def log_tails(self, lines: int = 30) -> str:
        """Each component's log tail, for a failing test's report."""
        return "\n\n".join(
            f"--- {log.stem} ({log}) ---\n{log_tail(log, lines)}"
            for log in sorted(self.log_dir.glob("*.log"))
        )

    # -- PKI ------------------------------------------------------------------------------

    def _make_pki(self) -> None:
        ca = CertificateAuthority(self.pki_dir)
        self._authority = ca
        self.ca = ca.pair
        self.serving = ca.issue("apiserver", "kube-apiserver", sans=APISERVER_SANS, server=True)
        # Serving certificate for the controller-manager, scheduler and node agent ports.
        self.loopback_serving = ca.issue(
            "loopback-serving", "localhost", sans=("localhost", "127.0.0.1"), server=True
        )
        self.admin = ca.issue(
            "admin", "shieldtune-admin", organizations=("system:masters",), client=True
        )
        # What the API server shows the node agent's kubelet port (the agent checks the CA).
        self.kubelet_client = ca.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", client=True
        )
        self.kcm_cert = ca.issue(
            "controller-manager", "system:kube-controller-manager", client=True
        )
        self.scheduler_cert = ca.issue("scheduler", "system:kube-scheduler", client=True)
        # The Node authorizer and NodeRestriction know the agent by this name and group.
        self.node_cert = ca.issue(
            "node",
            f"system:node:{self.node_name}",
            organizations=("system:nodes",),
            client=True,
        )
        self.sa_key, self.sa_pub = service_account_keys(self.pki_dir)
        ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        ctx.load_cert_chain(str(self.admin.cert), str(self.admin.key))
        self._admin_ctx = ctx

    # -- components -------------------------------------------------------------------------

    def _launch(
        self,
        name: str,
        n_ports: int,
        make_argv: Callable[[list[int]], list[str]],
        ready: Callable[[list[int]], bool],
        env: dict[str, str] | None = None,
    ) -> list[int]:
        """Start ``name`` on fresh ports and wait for ``ready``; retry when a port was taken."""
        for _ in range(_PORT_RETRIES):
            ports = free_ports(n_ports)
            proc = Process(name, make_argv(ports), self.log_dir / f"{name}.log", env=env)
            proc.start()
            self.processes.append(proc)
            deadline = time.monotonic() + self.ready_timeout_s
            while time.monotonic() < deadline:
                if not proc.alive:
                    break
                if ready(ports):
                    return ports
                time.sleep(0.25)
            else:
                raise ControlPlaneError(
                    f"{name} did not become ready within {self.ready_timeout_s:.0f} s "
                    f"(log {proc.log}):\n{proc.tail()}"
                )
            self.processes.remove(proc)
            proc.stop()
            tail = proc.tail()
            if not any(marker in tail.lower() for marker in _IN_USE):
                code = proc.popen.returncode if proc.popen else None
                raise ControlPlaneError(f"{name} exited with {code} (log {proc.log}):\n{tail}")
        raise ControlPlaneError(f"{name}: ports kept being taken ({_PORT_RETRIES} tries)")

    def _http_ok(self, url: str, ctx: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _start_etcd(self) -> None:
        data = self.work_dir / "etcd"

        def argv(ports: list[int]) -> list[str]:
            client, peer = (f"http://127.0.0.1:{p}" for p in ports)
            shutil.rmtree(data, ignore_errors=True)
            return [
                str(self.bin_dir / "etcd"),
                "--name=shieldtune",
                f"--data-dir={data}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=shieldtune={peer}",
                "--initial-cluster-state=new",
                # Test data: durability is not wanted, speed on a loaded CI disk is.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]

        ports = self._launch(
            "etcd", 2, argv, lambda p: self._http_ok(f"http://127.0.0.1:{p[0]}/health")
        )
        self.etcd_url = f"http://127.0.0.1:{ports[0]}"

    def _start_apiserver(self) -> None:
        self.audit_log.parent.mkdir(parents=True, exist_ok=True)
        policy = self.audit_log.parent / "policy.yaml"
        policy.write_text(AUDIT_POLICY)

        def argv(ports: list[int]) -> list[str]:
            return [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports[0]}",
                f"--cert-dir={self.work_dir / 'apiserver-certs'}",
                f"--tls-cert-file={self.serving.cert}",
                f"--tls-private-key-file={self.serving.key}",
                f"--client-ca-file={self.ca.cert}",
                # No front proxy here; naming the CA only quiets the components' repeated
                # "missing requestheader-client-ca-file" errors (no cert has that CN).
                f"--requestheader-client-ca-file={self.ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--authorization-mode=Node,RBAC",
                # The default plugins (PodSecurity, ServiceAccount, ...) stay on; add the one
                # kubeadm adds, so the node agent is held to its own Node and pods.
                "--enable-admission-plugins=NodeRestriction",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={self.sa_pub}",
                f"--service-account-signing-key-file={self.sa_key}",
                # pods/log and exec go to the node agent's kubelet port at its InternalIP;
                # without --kubelet-certificate-authority its serving cert is not verified.
                f"--kubelet-client-certificate={self.kubelet_client.cert}",
                f"--kubelet-client-key={self.kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP",
                # The `kubernetes` Service would get 127.0.0.1 endpoints, which validation
                # refuses (loopback); nothing uses that Service here (pods get 127.0.0.1).
                "--endpoint-reconciler-type=none",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--profiling=false",
            ]

        ready = lambda p: self._http_ok(f"https://127.0.0.1:{p[0]}/readyz", self._admin_ctx)  # noqa: E731
        self.api_port = self._launch("kube-apiserver", 1, argv, ready)[0]
        _kubeconfig(self.kubeconfig, self.server, self.ca.cert, self.admin, "shieldtune-local")

    def _component_kubeconfig(self, name: str, cert: CertPair) -> Path:
        return _kubeconfig(
            self.work_dir / f"{name}.kubeconfig", self.server, self.ca.cert, cert, name
        )

    def _healthz(self, port: int) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        return self._http_ok(f"https://127.0.0.1:{port}/healthz", ctx)

    def _start_controller_manager(self) -> None:
        kubeconfig = self._component_kubeconfig("kube-controller-manager", self.kcm_cert)

        def argv(ports: list[int]) -> list[str]:
            return [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports[0]}",
                f"--tls-cert-file={self.loopback_serving.cert}",
                f"--tls-private-key-file={self.loopback_serving.key}",
                f"--service-account-private-key-file={self.sa_key}",
                f"--root-ca-file={self.ca.cert}",
                "--use-service-account-credentials=true",
                "--controllers=*",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--cluster-signing-cert-file={self.ca.cert}",
                f"--cluster-signing-key-file={self.pki_dir / 'ca.key'}",
                "--profiling=false",
            ]

        self._launch("kube-controller-manager", 1, argv, lambda p: self._healthz(p[0]))

    def _start_scheduler(self) -> None:
        kubeconfig = self._component_kubeconfig("kube-scheduler", self.scheduler_cert)

        def argv(ports: list[int]) -> list[str]:
            return [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports[0]}",
                f"--tls-cert-file={self.loopback_serving.cert}",
                f"--tls-private-key-file={self.loopback_serving.key}",
                "--profiling=false",
            ]

        self._launch("kube-scheduler", 1, argv, lambda p: self._healthz(p[0]))

    def _node_ready(self) -> bool:
        try:
            node = self.api_get(f"/api/v1/nodes/{self.node_name}", timeout=5)
        except (OSError, urllib.error.URLError, ValueError):
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _start_node_agent(self) -> None:
        def argv(ports: list[int]) -> list[str]:
            cap = self.node_capacity
            return [
                sys.executable,
                str(_NODE_AGENT),
                f"--server={self.server}",
                f"--ca={self.ca.cert}",
                f"--cert={self.node_cert.cert}",
                f"--key={self.node_cert.key}",
                f"--serving-cert={self.loopback_serving.cert}",
                f"--serving-key={self.loopback_serving.key}",
                f"--node-name={self.node_name}",
                f"--port={ports[0]}",
                f"--work-dir={self.work_dir / 'node'}",
                f"--cpu={cap['cpu']}",
                f"--memory={cap['memory']}",
                f"--pods={cap['pods']}",
                f"--kubelet-version={self._version()}",
            ]

        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._launch("node-agent", 1, argv, lambda _p: self._node_ready(), env=env)

    def _version(self) -> str:
        return str(self.api_get("/version")["gitVersion"])

    def _wait_cluster_usable(self) -> None:
        """Wait until the controllers run: the `default` namespace has its ServiceAccount.

        Without it the ServiceAccount admission plugin rejects every pod of that namespace.
        """
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            try:
                self.api_get("/api/v1/namespaces/default/serviceaccounts/default", timeout=5)
                return
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.5)
        kcm = next(p for p in self.processes if p.name == "kube-controller-manager")
        raise ControlPlaneError(
            "the controller-manager created no `default` ServiceAccount within "
            f"{self.ready_timeout_s:.0f} s (log {kcm.log}):\n{kcm.tail()}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the control plane in the foreground until Ctrl-C (scripts/k8s-control-plane.sh up)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin-dir", required=True, type=Path, help="what `build` printed")
    parser.add_argument("--work-dir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder at exit")
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="shieldtune-k8s-"))
    plane = ControlPlane(args.bin_dir, work)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, node agent"
        f" (logs in {plane.log_dir}) ...",
        flush=True,
    )
    try:
        plane.start()
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Kubernetes {plane._version()} on {plane.server}, node {plane.node_name}")
    print(f"kubeconfig: {plane.kubeconfig}")
    print(f"  export KUBECONFIG={plane.kubeconfig}")
    print("Ctrl-C stops it.", flush=True)
    try:
        while not stop.wait(1.0):
            dead = [p.name for p in plane.processes if not p.alive]
            if dead:
                print(f"error: {', '.join(dead)} exited; see {plane.log_dir}", file=sys.stderr)
                return 1
        return 0
    finally:
        print("stopping ...", flush=True)
        plane.stop()
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
