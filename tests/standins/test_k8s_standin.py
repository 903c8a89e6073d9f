"""The Kubernetes API stand-in, driven by the real ``kubernetes`` client over real HTTP.

The step executor's tests trust this stand-in to behave like an API server plus a Job
controller, so these tests pin down that behaviour through the official client only (no
peeking at the stand-in's objects where the API can answer). Each Job runs a tiny
``python -c`` command, so the whole file takes seconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest
from kubernetes.client import ApiClient, BatchV1Api, Configuration, CoreV1Api, V1Job, V1Pod
from kubernetes.client.exceptions import ApiException

from .k8s_standin import K8sApiStandIn

NAMESPACE = "team"
WAIT = 20.0  # generous: two shared cores; every wait normally ends in well under a second

T = TypeVar("T")


@dataclass
class Cluster:
    """A running stand-in and the official clients configured from its kubeconfig."""

    server: K8sApiStandIn
    batch: BatchV1Api
    core: CoreV1Api
    api: ApiClient


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Starts stand-ins with per-test options; all are stopped (processes killed) at the end."""
    with ExitStack() as stack:

        def make(**options: Any) -> Cluster:
            server = stack.enter_context(K8sApiStandIn(tmp_path / "k8s", **options))
            kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
            configuration = Configuration()
            kubernetes.config.load_kube_config(
                config_file=str(kubeconfig), client_configuration=configuration
            )
            api = stack.enter_context(ApiClient(configuration))
            return Cluster(server, BatchV1Api(api), CoreV1Api(api), api)

        yield make


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster()


def job_manifest(name: str, code: str, **spec: Any) -> dict[str, Any]:
    """A batch/v1 Job whose only container runs ``python -c code`` with this interpreter."""
    container: dict[str, Any] = {
        "name": "main",
        "image": "python:3.11-slim",
        "command": [sys.executable, "-c", code],
    }
    container.update(spec.pop("container", {}))
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    pod_spec.update(spec.pop("pod", {}))
    template: dict[str, Any] = {"spec": pod_spec}
    if "labels" in spec:
        template["metadata"] = {"labels": spec.pop("labels")}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": template, **spec},
    }


def wait_for(check: Callable[[], T], timeout: float = WAIT, what: str = "condition") -> T:
    """Polls ``check`` until it returns something truthy (and returns that)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def finished(cluster: Cluster, name: str) -> V1Job:
    """Polls the Job's status through the API until it has a Complete or Failed condition."""

    def done() -> V1Job | None:
        job = cluster.batch.read_namespaced_job_status(name, NAMESPACE)
        types = {c.type for c in job.status.conditions or [] if c.status == "True"}
        return job if types & {"Complete", "Failed"} else None

    return wait_for(done, what=f"Job {name} to finish")


def conditions(job: V1Job) -> list[tuple[str, str | None]]:
    return [(c.type, c.reason) for c in job.status.conditions or []]


def pods_of(cluster: Cluster, job_name: str) -> list[V1Pod]:
    """The Job's pods as the executor finds them: by the ``job-name`` label, oldest first.

    Timestamps have one-second resolution; ``sorted`` is stable, so pods created in the same
    second keep the stand-in's list order, which is creation order.
    """
    pods = cluster.core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={job_name}")
    return sorted(pods.items, key=lambda p: p.metadata.creation_timestamp)


def running_pod(cluster: Cluster, job_name: str) -> V1Pod:
    def running() -> V1Pod | None:
        pods = [p for p in pods_of(cluster, job_name) if p.status.phase == "Running"]
        return pods[0] if pods else None

    return wait_for(running, what=f"a running pod of {job_name}")


def pid_of(pod: V1Pod) -> int:
    """The local process id behind a running pod (its containerID is ``standin://<pid>``)."""
    return int(pod.status.container_statuses[0].container_id.removeprefix("standin://"))


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def api_error(exc: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    return json.loads(exc.value.body)


# ---------------------------------------------------------------------------------------------
# connection and errors


def test_kubeconfig_points_the_client_at_the_standin_with_its_namespace(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The executor finds server, token and namespace in the kubeconfig the stand-in writes."""
    _, active = kubernetes.config.list_kube_config_contexts(
        config_file=str(tmp_path / "kubeconfig")
    )
    assert active["context"]["namespace"] == NAMESPACE
    assert cluster.api.configuration.host == cluster.server.url
    version = kubernetes.client.VersionApi(cluster.api).get_code()
    assert version.git_version == "v1.33.0"
    sent = cluster.server.requests[-1]
    assert sent.headers["authorization"] == "Bearer test-token"


def test_requests_without_the_bearer_token_get_401_status(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Auth failures must surface as 401 so the executor can tell them from flaky errors."""
    cluster = make_cluster(token="right-token")
    assert cluster.batch.list_namespaced_job(NAMESPACE).items == []
    impostor = Configuration(host=cluster.server.url, api_key={"authorization": "Bearer nope"})
    with ApiClient(impostor) as api, pytest.raises(ApiException) as wrong:
        BatchV1Api(api).list_namespaced_job(NAMESPACE)
    assert wrong.value.status == 401
    assert api_error(wrong) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
    url = f"{cluster.server.url}/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(url, timeout=10)
    assert anonymous.value.code == 401
    assert [r.status for r in cluster.server.requests] == [200, 401, 401]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda job: job["spec"]["template"]["spec"]["containers"][0].pop("name"),
            "spec.template.spec.containers[0].name: Required value",
        ),
        (
            lambda job: job["spec"].update(activeDeadline=5),
            'spec.activeDeadline: Invalid value: unknown field "activeDeadline"',
        ),
        (
            lambda job: job["spec"]["template"]["spec"].pop("restartPolicy"),
            "spec.template.spec.restartPolicy: Required value",
        ),
        (
            lambda job: job["spec"]["template"]["spec"]["containers"][0].update(
                volumeMounts=[{"name": "nowhere", "mountPath": "/data"}]
            ),
            'spec.template.spec.containers[0].volumeMounts[0].name: Not found: "nowhere"',
        ),
    ],
    ids=["container-without-name", "misspelt-field", "no-restart-policy", "unknown-volume"],
)
def test_invalid_job_is_refused_with_422_saying_what_is_wrong(
    cluster: Cluster, mutate: Callable[[dict[str, Any]], object], expected: str
) -> None:
    """Schema (strict) and API-server checks catch manifest bugs before anything runs."""
    job = job_manifest("broken", "pass")
    mutate(job)
    with pytest.raises(ApiException) as refused:
        cluster.batch.create_namespaced_job(NAMESPACE, job)
    assert refused.value.status == 422
    status = api_error(refused)
    assert status["reason"] == "Invalid"
    assert status["message"].startswith('Job.batch "broken" is invalid: ')
    assert expected in status["message"]
    assert status["details"]["causes"]
    assert cluster.server.jobs() == []


def test_creating_a_job_twice_gets_409_and_a_missing_job_404(cluster: Cluster) -> None:
    """Retries of a create must see AlreadyExists, and reads of a gone Job NotFound."""
    cluster.batch.create_namespaced_job(NAMESPACE, job_manifest("dup", "pass"))
    with pytest.raises(ApiException) as duplicate:
        cluster.batch.create_namespaced_job(NAMESPACE, job_manifest("dup", "pass"))
    assert duplicate.value.status == 409
    assert api_error(duplicate)["reason"] == "AlreadyExists"
    assert api_error(duplicate)["message"] == 'jobs.batch "dup" already exists'
    with pytest.raises(ApiException) as missing:
        cluster.batch.read_namespaced_job("nope", NAMESPACE)
    assert missing.value.status == 404
    assert api_error(missing)["message"] == 'jobs.batch "nope" not found'
    with pytest.raises(ApiException) as missing_pod:
        cluster.core.read_namespaced_pod_log("nope-abcde", NAMESPACE)
    assert missing_pod.value.status == 404


# ---------------------------------------------------------------------------------------------
# Jobs that run


def test_successful_job_completes_and_serves_the_pod_log(cluster: Cluster) -> None:
    """The happy path the executor polls: pod runs the command, Job ends Complete."""
    created = cluster.batch.create_namespaced_job(
        NAMESPACE,
        job_manifest(
            "hello",
            # Both streams go to one log, as a container's do; each write is flushed at
            # once, so the order is the program's whatever the interpreter's buffering
            # (stdout to a file is block-buffered unless PYTHONUNBUFFERED is set).
            "import sys; print('hello from', sys.argv[1:], flush=True);"
            " print('err', file=sys.stderr, flush=True)",
        ),
    )
    assert created.metadata.uid and created.metadata.resource_version
    labels = created.spec.template.metadata.labels
    assert labels["job-name"] == labels["batch.kubernetes.io/job-name"] == "hello"
    assert labels["controller-uid"] == created.metadata.uid
    assert created.spec.backoff_limit == 0 and created.spec.completions == 1

    job = finished(cluster, "hello")
    assert conditions(job) == [
        ("SuccessCriteriaMet", "CompletionsReached"),
        ("Complete", "CompletionsReached"),
    ]
    assert job.status.succeeded == 1 and job.status.failed is None and job.status.active is None
    assert job.status.start_time <= job.status.completion_time
    [pod] = pods_of(cluster, "hello")
    assert pod.metadata.name.startswith("hello-") and len(pod.metadata.name) == len("hello-") + 5
    assert pod.metadata.owner_references[0].uid == created.metadata.uid
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    log = cluster.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE)
    assert log == "hello from []\nerr\n"
    posted = cluster.server.requests_to("POST", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs")
    assert posted[0].body["metadata"]["name"] == "hello" and posted[0].status == 201


def test_failing_command_is_retried_until_backoff_limit_exceeded(cluster: Cluster) -> None:
    """backoffLimit=2 means three pods, then Failed/BackoffLimitExceeded (1.31+ conditions)."""
    cluster.batch.create_namespaced_job(
        NAMESPACE,
        job_manifest("retry", "import sys; print('trying'); sys.exit(3)", backoffLimit=2),
    )
    job = finished(cluster, "retry")
    assert conditions(job) == [
        ("FailureTarget", "BackoffLimitExceeded"),
        ("Failed", "BackoffLimitExceeded"),
    ]
    assert job.status.failed == 3 and job.status.succeeded is None
    assert job.status.completion_time is None  # only set on success
    pods = pods_of(cluster, "retry")
    assert len({p.metadata.name for p in pods}) == 3
    for pod in pods:
        terminated = pod.status.container_statuses[0].state.terminated
        assert (pod.status.phase, terminated.exit_code, terminated.reason) == ("Failed", 3, "Error")
        assert cluster.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE) == "trying\n"


def test_evicted_pod_is_replaced_and_the_next_pod_succeeds(
    make_cluster: Callable[..., Cluster],
) -> None:
    """An eviction counts as a pod failure; the Job controller starts a new pod."""
    calls: list[tuple[str, int]] = []

    def evict_first(job: dict[str, Any], index: int) -> str | None:
        calls.append((job["metadata"]["name"], index))
        return "evict" if index == 0 else None

    cluster = make_cluster(fault=evict_first)
    cluster.batch.create_namespaced_job(
        NAMESPACE, job_manifest("evicted", "print('second try')", backoffLimit=1)
    )
    job = finished(cluster, "evicted")
    assert (job.status.failed, job.status.succeeded) == (1, 1)
    assert conditions(job)[-1] == ("Complete", "CompletionsReached")
    assert calls == [("evicted", 0), ("evicted", 1)]
    evicted, replacement = pods_of(cluster, "evicted")
    assert (evicted.status.phase, evicted.status.reason) == ("Failed", "Evicted")
    assert "low on resource: memory" in evicted.status.message
    assert any(c.type == "DisruptionTarget" for c in evicted.status.conditions)
    assert cluster.core.read_namespaced_pod_log(evicted.metadata.name, NAMESPACE) == ""
    assert replacement.status.phase == "Succeeded"


def test_fail_fault_fails_the_pod_without_running_the_command(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """A "fail" fault is exit code 1 / Error and the command has no side effects."""
    marker = tmp_path / "ran"
    cluster = make_cluster(fault=lambda job, index: "fail")
    cluster.batch.create_namespaced_job(
        NAMESPACE, job_manifest("doomed", f"open({str(marker)!r}, 'w').close()")
    )
    job = finished(cluster, "doomed")
    assert conditions(job)[-1] == ("Failed", "BackoffLimitExceeded")
    [pod] = pods_of(cluster, "doomed")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (1, "Error")
    assert not marker.exists()


def test_pod_failure_policy_ignores_evictions_and_fails_fast_on_exit_code(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Ignore on DisruptionTarget does not count evictions; FailJob on an exit code stops."""
    cluster = make_cluster(fault=lambda job, index: "evict" if index == 0 else None)
    policy = {
        "rules": [
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
        ]
    }
    cluster.batch.create_namespaced_job(
        NAMESPACE, job_manifest("tolerant", "pass", podFailurePolicy=policy)
    )
    cluster.batch.create_namespaced_job(
        NAMESPACE,
        job_manifest("fatal", "import sys; sys.exit(42)", backoffLimit=6, podFailurePolicy=policy),
    )
    tolerant = finished(cluster, "tolerant")
    assert (tolerant.status.failed, tolerant.status.succeeded) == (None, 1)
    fatal = finished(cluster, "fatal")
    assert conditions(fatal)[-1] == ("Failed", "PodFailurePolicy")
    assert "exit code 42 matching FailJob rule at index 1" in fatal.status.conditions[-1].message
    assert len(pods_of(cluster, "fatal")) == 2  # the evicted one (ignored) and the exit-42 one


def test_active_deadline_kills_a_hanging_pod_and_fails_the_job(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Deadline: the controller deletes the running pod (process killed) and the Job fails."""
    cluster = make_cluster(fault=lambda job, index: "hang")
    cluster.batch.create_namespaced_job(
        NAMESPACE, job_manifest("slow", "print('never')", activeDeadlineSeconds=1, backoffLimit=3)
    )
    pid = pid_of(running_pod(cluster, "slow"))
    job = finished(cluster, "slow")
    assert conditions(job) == [
        ("FailureTarget", "DeadlineExceeded"),
        ("Failed", "DeadlineExceeded"),
    ]
    assert job.status.failed == 1 and job.status.active is None
    assert process_gone(pid)
    assert cluster.server.running_processes() == 0
    assert pods_of(cluster, "slow") == []  # deleted by the Job controller, as in Kubernetes


# ---------------------------------------------------------------------------------------------
# deletion and cleanup


def test_background_delete_removes_the_job_and_kills_its_process(
    make_cluster: Callable[..., Cluster],
) -> None:
    """The executor cancels steps with propagationPolicy=Background; nothing may linger."""
    cluster = make_cluster(fault=lambda job, index: "hang")
    cluster.batch.create_namespaced_job(NAMESPACE, job_manifest("cancel-me", "pass"))
    pid = pid_of(running_pod(cluster, "cancel-me"))
    status = cluster.batch.delete_namespaced_job(
        "cancel-me", NAMESPACE, propagation_policy="Background"
    )
    assert status.status == "Success" and status.details.name == "cancel-me"
    with pytest.raises(ApiException) as gone:
        cluster.batch.read_namespaced_job("cancel-me", NAMESPACE)
    assert gone.value.status == 404
    wait_for(lambda: not pods_of(cluster, "cancel-me"), what="the pod to be deleted")
    assert process_gone(pid)
    assert cluster.server.running_processes() == 0
    assert cluster.server.wait_idle(timeout=WAIT)


def test_delete_without_policy_orphans_the_running_pod_like_batch_v1(cluster: Cluster) -> None:
    """batch/v1 orphans pods by default (with a warning): a bug the executor must not have."""
    cluster.batch.create_namespaced_job(
        NAMESPACE, job_manifest("orphaner", "import time; time.sleep(60)")
    )
    pod = running_pod(cluster, "orphaner")
    _, code, headers = cluster.batch.delete_namespaced_job_with_http_info("orphaner", NAMESPACE)
    assert code == 200
    assert "child pods are preserved by default" in headers["Warning"]
    [orphan] = pods_of(cluster, "orphaner")
    assert orphan.status.phase == "Running" and not orphan.metadata.owner_references
    assert cluster.server.running_processes() == 1
    cluster.core.delete_namespaced_pod(pod.metadata.name, NAMESPACE, grace_period_seconds=0)
    wait_for(lambda: not pods_of(cluster, "orphaner"), what="the orphan pod to be deleted")
    assert process_gone(pid_of(pod))


def test_ttl_after_finished_deletes_the_job_and_its_pods(cluster: Cluster) -> None:
    """Finished step Jobs clean themselves up when ttlSecondsAfterFinished is set."""
    cluster.batch.create_namespaced_job(
        NAMESPACE, job_manifest("short-lived", "pass", ttlSecondsAfterFinished=1)
    )
    finished(cluster, "short-lived")
    assert len(pods_of(cluster, "short-lived")) == 1

    def job_gone() -> bool:
        try:
            cluster.batch.read_namespaced_job("short-lived", NAMESPACE)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(job_gone, what="the TTL to delete the Job")
    assert pods_of(cluster, "short-lived") == []


# ---------------------------------------------------------------------------------------------
# selection, volumes and environment


def test_label_selectors_filter_jobs_and_pods(cluster: Cluster) -> None:
    """Equality, inequality, existence and set selectors, as the executor's lookups use."""
    for name, labels in [("job-a", {"app": "a"}), ("job-b", {"app": "b"}), ("job-c", {})]:
        cluster.batch.create_namespaced_job(NAMESPACE, job_manifest(name, "pass", labels=labels))

    def names(selector: str) -> list[str]:
        jobs = cluster.batch.list_namespaced_job(NAMESPACE, label_selector=selector)
        return sorted(j.metadata.name for j in jobs.items)

    assert names("app=a") == ["job-a"]
    assert names("app!=a") == ["job-b", "job-c"]
    assert names("app") == ["job-a", "job-b"]
    assert names("!app") == ["job-c"]
    assert names("app in (a,b),job-name!=job-b") == ["job-a"]
    other = cluster.batch.list_namespaced_job("elsewhere")
    assert other.kind == "JobList" and other.items == []
    finished(cluster, "job-a")
    [pod] = pods_of(cluster, "job-a")
    assert pod.metadata.labels["app"] == "a"
    by_phase = cluster.core.list_namespaced_pod(
        NAMESPACE, label_selector="app=a", field_selector="status.phase=Succeeded"
    )
    assert [p.metadata.name for p in by_phase.items] == [pod.metadata.name]
    with pytest.raises(ApiException) as bad:
        cluster.batch.list_namespaced_job(NAMESPACE, label_selector="app in a")
    assert bad.value.status == 400


def test_mount_paths_are_rewritten_to_pvc_and_emptydir_host_dirs(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """A pod writing to its mounts lands in the PVC's host dir; emptyDir is per-pod scratch."""
    pvc = tmp_path / "pvc"
    host_file = tmp_path / "host-visible.txt"
    inside = f"/tmp/standin-{uuid.uuid4().hex}.txt"
    cluster = make_cluster(volumes={"steps": pvc}, host_paths=[tmp_path])
    code = (
        "import os, sys, pathlib\n"
        "out = sys.argv[1].split('=', 1)[1]\n"
        "pathlib.Path('note.txt').write_text('cwd')\n"
        "os.makedirs(os.path.dirname(out), exist_ok=True)\n"
        "pathlib.Path(out).write_text(os.environ['STEP_DIR'] + '|' + os.getcwd())\n"
        f"pathlib.Path({inside!r}).write_text('scratch')\n"
        f"pathlib.Path({str(host_file)!r}).write_text('host')\n"
    )
    container = {
        "args": ["--out=$(STEP_DIR)/out/result.txt"],
        "env": [{"name": "STEP_DIR", "value": "/mnt/steps"}],
        "workingDir": "/tmp/work",
        "volumeMounts": [
            {"name": "steps", "mountPath": "/mnt/steps"},
            {"name": "scratch", "mountPath": "/tmp"},
        ],
    }
    volumes = [
        {"name": "steps", "persistentVolumeClaim": {"claimName": "steps"}},
        {"name": "scratch", "emptyDir": {}},
    ]
    cluster.batch.create_namespaced_job(
        NAMESPACE, job_manifest("mounts", code, container=container, pod={"volumes": volumes})
    )
    job = finished(cluster, "mounts")
    [pod] = pods_of(cluster, "mounts")
    log = cluster.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE)
    assert job.status.succeeded == 1, log
    step_dir, cwd = (pvc / "out" / "result.txt").read_text().split("|")
    assert step_dir == str(pvc)
    scratch = Path(cwd).parent
    assert scratch.is_relative_to(tmp_path / "k8s") and (Path(cwd) / "note.txt").exists()
    assert (scratch / Path(inside).name).read_text() == "scratch"
    assert not Path(inside).exists()  # the real /tmp is untouched
    assert host_file.read_text() == "host"  # listed in host_paths: passed through as is


def test_unknown_pvc_leaves_the_pod_pending_and_unschedulable(cluster: Cluster) -> None:
    """A missing claim never fails the Job by itself, as in Kubernetes: it waits."""
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "missing"}}]
    container = {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    cluster.batch.create_namespaced_job(
        NAMESPACE, job_manifest("stuck", "pass", container=container, pod={"volumes": volumes})
    )
    pod = wait_for(
        lambda: next((p for p in pods_of(cluster, "stuck") if p.status.conditions), None),
        what="the scheduler's verdict",
    )
    [scheduled] = pod.status.conditions
    assert (scheduled.type, scheduled.status, scheduled.reason) == (
        "PodScheduled",
        "False",
        "Unschedulable",
    )
    assert 'persistentvolumeclaim "missing" not found' in scheduled.message
    assert pod.status.phase == "Pending"
    assert cluster.batch.read_namespaced_job("stuck", NAMESPACE).status.active == 1
    assert not cluster.server.wait_idle(timeout=0.2)


def test_secret_and_downward_api_env_reach_the_process(
    make_cluster: Callable[..., Cluster],
) -> None:
    """secretKeyRef/envFrom/fieldRef/$(VAR) resolve like the kubelet; optional ones may miss."""
    cluster = make_cluster(
        secrets={"creds": {"user": "alice"}, "bulk": {"A": "1", "B": "2"}},
        extra_env={"FROM_STANDIN": "yes"},
    )
    names = ["USER_NAME", "GREETING", "X_A", "X_B", "OPTIONAL", "POD_NAME", "FROM_STANDIN"]
    code = f"import os\nfor name in {names!r}:\n    print(name, '=', os.environ.get(name), sep='')"
    container = {
        "env": [
            {"name": "USER_NAME", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}},
            {"name": "GREETING", "value": "hello $(USER_NAME) $$(USER_NAME)"},
            {
                "name": "OPTIONAL",
                "valueFrom": {"secretKeyRef": {"name": "creds", "key": "absent", "optional": True}},
            },
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "envFrom": [
            {"secretRef": {"name": "bulk"}, "prefix": "X_"},
            {"secretRef": {"name": "no-such-secret", "optional": True}},
        ],
    }
    cluster.batch.create_namespaced_job(NAMESPACE, job_manifest("env", code, container=container))
    finished(cluster, "env")
    [pod] = pods_of(cluster, "env")
    log = cluster.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE)
    assert log.splitlines() == [
        "USER_NAME=alice",
        "GREETING=hello alice $(USER_NAME)",
        "X_A=1",
        "X_B=2",
        "OPTIONAL=None",
        f"POD_NAME={pod.metadata.name}",
        "FROM_STANDIN=yes",
    ]


def test_missing_secret_blocks_the_container_until_it_exists(cluster: Cluster) -> None:
    """CreateContainerConfigError keeps the pod Pending (and its log unavailable) meanwhile."""
    container = {
        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "t"}}}]
    }
    cluster.batch.create_namespaced_job(
        NAMESPACE,
        job_manifest("waits", "import os; print(os.environ['TOKEN'])", container=container),
    )

    def blocked() -> V1Pod | None:
        pods = pods_of(cluster, "waits")
        waiting = pods and pods[0].status.container_statuses[0].state.waiting
        return pods[0] if waiting and waiting.reason == "CreateContainerConfigError" else None

    pod = wait_for(blocked, what="CreateContainerConfigError")
    assert pod.status.container_statuses[0].state.waiting.message == 'secret "late" not found'
    assert pod.status.phase == "Pending"
    with pytest.raises(ApiException) as waiting_log:
        cluster.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE)
    assert waiting_log.value.status == 400
    assert "is waiting to start: CreateContainerConfigError" in api_error(waiting_log)["message"]

    cluster.server.secrets["late"] = {"t": "now-here"}
    assert finished(cluster, "waits").status.succeeded == 1
    assert cluster.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE) == "now-here\n"
