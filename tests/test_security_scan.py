"""Security scan of everything that becomes a pod or holds configuration.

The issue asks that every pod runs non-root, without privilege escalation or
capabilities, on a read-only root filesystem with an emptyDir for scratch, under
seccomp ``RuntimeDefault`` and with resource limits; that the controller's RBAC is
what its code calls; and that MLflow and KFP credentials come only from Kubernetes
Secrets or the environment, never from YAML, parameters, tags or logs.

``tests/test_manifests.py`` validates the manifests' schemas and their exact shape
(labels, uid, wiring). This module applies one contract to every source of pods:

* the objects under ``manifests/`` (base, the rendered local overlay, examples),
* the step Jobs ``shieldtune.executors.kubernetes.jobs.step_job`` builds (volume / mlflow transport,
  with and without a GPU) and the Jobs the executor really POSTs,
* the compiled pipeline YAML (``pipelines/*.yaml``): KFP can express only part of the
  contract for its task pods; what it cannot is pinned here and documented in
  docs/cluster.md ("Pod security of pipeline tasks"),

and one credential scanner (regular expressions plus a short allowlist for
references: Secret names, key names, environment variable names) to every manifest,
Job, compiled pipeline, component and Dockerfile, and to what a real tuning job
logs to MLflow and prints while canary credentials sit in its environment. Tests at
the end plant credentials and broken pods to prove the scanners catch them.
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from shieldtune.cli import main
from shieldtune.config import config_from_dict
from shieldtune.errors import StepFailedError
from shieldtune.executors.kubernetes.executor import KubernetesStepExecutor
from shieldtune.executors.kubernetes.jobs import RUN_AS, SCRATCH, Owner, step_job, step_labels
from shieldtune.executors.step_files import DirStepStore
from shieldtune.job import Job
from shieldtune.pipeline import pipelines as kfp_pipelines
from shieldtune.training.step import StepRequest

from .conftest import tiny_cli_args, tiny_dict
from .k8s_standin import K8sApiStandIn
from .test_executors import HYPER
from .test_manifests import (
    BASE,
    LOCAL,
    find,
    kustomize,
    kustomize_output,
    resource_docs,
    role_grants,
)

ROOT = Path(__file__).resolve().parents[1]
MANIFEST_FILES = sorted((ROOT / "manifests").rglob("*.y*ml"))
PIPELINE_FILES = sorted((ROOT / "pipelines").glob("*.yaml"))
COMPONENT_FILES = sorted((ROOT / "components").glob("*/component.yaml"))
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))
K8S_SOURCES = sorted((ROOT / "src" / "shieldtune" / "executors" / "kubernetes").glob("*.py"))
CLUSTER_DOC = ROOT / "docs" / "cluster.md"

#: Secrets the project references by name (a name is not a credential).
SECRET_NAMES = {"shieldtune-mlflow", "mlpipeline-minio-artifact"}


# ===================================================================== pod security
def pod_specs(obj: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec in ``obj``, at any depth: any mapping with a ``containers`` list.

    Independent of ``kind`` on purpose, so a Pod, Deployment, Job, CronJob or a kind
    added later cannot slip past the checks.
    """
    if isinstance(obj, dict):
        if isinstance(obj.get("containers"), list):
            yield where or "<root>", obj
            return
        for key, value in obj.items():
            yield from pod_specs(value, f"{where}.{key}")
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from pod_specs(item, f"{where}[{i}]")


def pod_security_gaps(spec: dict[str, Any]) -> list[str]:
    """How a pod spec falls short of the issue's contract; [] when it meets it."""
    gaps: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    containers = [*spec.get("initContainers", []), *spec.get("containers", [])]
    if not containers:
        gaps.append("no containers")
    scratch = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    for c in containers:
        name, sc = c.get("name", "?"), c.get("securityContext") or {}

        def effective(key: str, sc: dict = sc) -> Any:
            return sc[key] if key in sc else pod_sc.get(key)

        if effective("runAsNonRoot") is not True:
            gaps.append(f"{name}: runAsNonRoot is not true")
        if effective("runAsUser") == 0:
            gaps.append(f"{name}: runAsUser 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            gaps.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            gaps.append(f"{name}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
            gaps.append(f"{name}: capabilities {caps!r} (want drop ALL, add nothing)")
        if sc.get("readOnlyRootFilesystem") is not True:
            gaps.append(f"{name}: readOnlyRootFilesystem is not true")
        seccomp = (effective("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            gaps.append(f"{name}: seccompProfile {seccomp!r}")
        if not {m["name"] for m in c.get("volumeMounts", [])} & scratch:
            gaps.append(f"{name}: no emptyDir mounted for scratch")
        limits = (c.get("resources") or {}).get("limits") or {}
        gaps += [f"{name}: no {r} limit" for r in ("cpu", "memory") if r not in limits]
    return gaps


def manifest_pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """Pod specs of every object under manifests/ and of the rendered local overlay."""
    found = [
        (f"{path.relative_to(ROOT)}:{doc['kind']}{where}", spec)
        for path, doc in resource_docs()
        for where, spec in pod_specs(doc)
    ]
    found += [
        (f"overlays/local (rendered):{doc['kind']}{where}", spec)
        for doc in kustomize(LOCAL)
        for where, spec in pod_specs(doc)
    ]
    return found


STEP_JOB_CONFIGS = {
    "volume-cpu": {"transport": "volume", "volume_claim": "shieldtune-steps"},
    "volume-gpu": {"transport": "volume", "volume_claim": "shieldtune-steps", "gpus": 1},
    "mlflow-cpu": {"transport": "mlflow"},
    "mlflow-gpu": {
        "transport": "mlflow",
        "gpus": 1,
        "image": "registry.example.com/ml/shieldtune:0.1.0-cuda",
    },
}


def make_step_job(kubernetes: dict[str, Any]) -> dict[str, Any]:
    k = config_from_dict({"kubernetes": kubernetes}).kubernetes
    return step_job(
        "shieldtune-step-abc123-1",
        "mlflow:" + "f" * 32 if k.transport == "mlflow" else "dir:/shared/steps",
        "abc123",
        k,
        step_labels("abc123", "f" * 32, "5b1c6a3e-aaaa-bbbb-cccc-1234567890ab", "ctl-pod"),
        owner=Owner("ctl-pod", "0d7c7c4e-1111-2222-3333-444455556666"),
        env={"MLFLOW_TRACKING_URI": "http://shieldtune-mlflow:5000"},
        threads=2,
    )


# ================================================================ credential scanner
@dataclass(frozen=True)
class Finding:
    where: str
    rule: str
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.rule}: {self.text[:80]!r}"


#: Credential formats, recognised wherever they appear.
CREDENTIAL_PATTERNS = {
    "aws-access-key-id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private-key-block": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "url-with-password": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:[^\s/@'\"]+@[^\s/'\"]"),
    "bearer-token": re.compile(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{16,}=*"),
    "basic-auth-header": re.compile(r"(?i)\bbasic\s+[A-Za-z0-9+/]{16,}={0,2}(?![\w+/=])"),
    "github-token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_\w{22,})"),
    "slack-token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "jwt": re.compile(r"\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}"),
}
#: ``key: value`` / ``key=value`` / ``"key": "value"`` where the key names a credential.
ASSIGNMENT = re.compile(
    r"(?i)(?P<key>[\w.-]*(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|access[_-]?key"
    r"|private[_-]?key|credentials?)[\w.-]*)[\"']?[ \t]*(?:=|:(?=[ \t]|$))[ \t]*"
    r"(?P<value>\"[^\"\n]*\"|'[^'\n]*'|<[^<>\n]*>|[^\s,;}\])#]+)",
    re.MULTILINE,
)
# ---- the allowlist: references to credentials, never their values
#: Keys whose value names a Secret or a key inside one.
REFERENCE_KEYS = {"secretname", "secretkey", "secretref", "secretkeyref", "mlflow_secret"}
#: Environment variable names (as values: `secretKey: MLFLOW_TRACKING_PASSWORD`).
ENV_NAME = re.compile(r"(?:MLFLOW|KFP|AWS|SHIELDTUNE)_[A-Z0-9_]+")
OBJECT_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
PLACEHOLDER = re.compile(r"<[^<>]*>|\$\{?\w+\}?|\{\{.*\}\}|\*+|\.\.\.|true|false|null|none|~")


def _is_reference(key: str, value: str) -> bool:
    value = value.strip("\"'")
    if not value or value in SECRET_NAMES or ENV_NAME.fullmatch(value):
        return True
    if value.startswith(("{", "[")):  # a flow mapping/list: its own keys are scanned
        return True
    if PLACEHOLDER.fullmatch(value.lower()):
        return True
    return key.rsplit(".", 1)[-1].lower() in REFERENCE_KEYS and bool(OBJECT_NAME.fullmatch(value))


def credential_findings(text: str, where: str) -> list[Finding]:
    """Everything in ``text`` that looks like a credential value."""
    found = [
        Finding(where, rule, m.group(0))
        for rule, pattern in CREDENTIAL_PATTERNS.items()
        for m in pattern.finditer(text)
    ]
    found += [
        Finding(where, "credential-assignment", m.group(0))
        for m in ASSIGNMENT.finditer(text)
        if not _is_reference(m.group("key"), m.group("value"))
    ]
    return found


def as_text(obj: Any) -> str:
    """A parsed object as YAML text (what the scanner reads): one ``key: value`` a line."""
    return yaml.safe_dump(obj, sort_keys=False, width=10**6)


def scan_files(paths: list[Path]) -> list[Finding]:
    assert paths, "nothing to scan"
    return [f for p in paths for f in credential_findings(p.read_text(), str(p.relative_to(ROOT)))]


# ======================================================================= manifests
def test_every_manifest_pod_template_meets_the_pod_security_contract():
    found = manifest_pod_specs()
    kinds = {where.split(":")[1].split(".")[0] for where, _ in found}
    assert {"Deployment", "Job"} <= kinds, f"walker found only {kinds}"
    problems = [f"{where}: {gap}" for where, spec in found for gap in pod_security_gaps(spec)]
    assert problems == []


def test_manifest_files_hold_no_credentials_not_even_in_comments():
    """Raw text, so comments and embedded documents (ConfigMap config.yaml) count too."""
    assert [str(f) for f in scan_files(MANIFEST_FILES)] == []


#: kubernetes.client method suffix -> (API group, resource as RBAC names it).
API_RESOURCES = {
    "job": ("batch", "jobs"),
    "job_status": ("batch", "jobs/status"),
    "pod": ("", "pods"),
    "pod_status": ("", "pods/status"),
    "pod_log": ("", "pods/log"),
}
API_VERBS = {"create": "create", "read": "get", "list": "list", "delete": "delete"}
API_VERBS |= {"patch": "patch", "replace": "update", "watch": "watch"}


def _api_calls_in_the_controller_code() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every ``kubernetes.client`` call in the kubernetes executor."""
    calls = set()
    for path in K8S_SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            assert not node.attr.endswith("_for_all_namespaces"), f"{path.name}: {node.attr}"
            verb, _, resource = node.attr.partition("_namespaced_")
            if resource and verb in API_VERBS:
                assert resource in API_RESOURCES, f"{path.name}: unmapped API call {node.attr}"
                calls.add((*API_RESOURCES[resource], API_VERBS[verb]))
    return calls


def test_controller_role_covers_every_api_call_in_the_code_namespaced_and_nothing_else():
    """The calls are read from the code (AST): a new API call without RBAC, or a
    cluster-wide one, fails here, and the Role may grant nothing the code never calls.
    (test_manifests.py pins the exact grants.)"""
    calls = _api_calls_in_the_controller_code()
    assert calls, "no Kubernetes API calls found: the AST scan is broken"
    docs = kustomize(BASE)
    grants = role_grants(find(docs, "Role", "shieldtune-controller"))
    assert calls <= grants, f"called but not granted: {calls - grants}"
    assert grants <= calls, f"granted but never called: {grants - calls}"
    assert {(g, r) for g, r, _ in grants} == {(g, r) for g, r, _ in calls}
    assert {v for _, _, v in grants} <= {"create", "get", "list", "delete"}
    assert not [d for d in docs if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]


# ======================================================================= step Jobs
@pytest.mark.parametrize("kubernetes", STEP_JOB_CONFIGS.values(), ids=STEP_JOB_CONFIGS)
def test_generated_step_job_meets_the_pod_security_contract(kubernetes):
    job = make_step_job(kubernetes)
    [(_, spec)] = list(pod_specs(job))
    assert pod_security_gaps(spec) == []
    assert spec["securityContext"]["runAsUser"] == RUN_AS
    [container] = spec["containers"]
    assert {"name": "scratch", "mountPath": SCRATCH} in container["volumeMounts"]


@pytest.mark.parametrize("kubernetes", STEP_JOB_CONFIGS.values(), ids=STEP_JOB_CONFIGS)
def test_generated_step_job_takes_mlflow_credentials_only_from_the_secret(kubernetes):
    job = make_step_job(kubernetes)
    assert [str(f) for f in credential_findings(as_text(job), "step Job")] == []
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "shieldtune-mlflow", "optional": True}}]
    literal = {e["name"] for e in container["env"] if "value" in e}
    assert not {n for n in literal if re.search(r"(?i)password|token|secret|username", n)}


@pytest.fixture
def canaries(monkeypatch) -> dict[str, str]:
    """Recognisable fake credentials in the environment, as a cluster would inject them."""
    tag = uuid.uuid4().hex[:12]
    values = {
        "MLFLOW_TRACKING_USERNAME": f"canary-user-{tag}",
        "MLFLOW_TRACKING_PASSWORD": f"canary-password-{tag}",
        "MLFLOW_TRACKING_TOKEN": f"canary-mlflow-token-{tag}",
        "KFP_BEARER_TOKEN": f"canary-kfp-token-{tag}",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def leaked(canaries: dict[str, str], blob: str | bytes, *, username: bool = True) -> list[str]:
    """The canaries (also as an HTTP basic-auth pair) that occur in ``blob``."""
    user, password = canaries["MLFLOW_TRACKING_USERNAME"], canaries["MLFLOW_TRACKING_PASSWORD"]
    forms = {**canaries, "basic-auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    if not username:
        del forms["MLFLOW_TRACKING_USERNAME"]
    data = blob if isinstance(blob, bytes) else blob.encode()
    return [name for name, value in forms.items() if value.encode() in data]


@pytest.mark.parametrize(
    "transport, uri, passed_on",
    [
        ("mlflow", "http://shieldtune-mlflow:5000", True),
        ("mlflow", "https://{user}:{password}@mlflow.example.com", False),
        ("volume", "https://{user}:{password}@mlflow.example.com", False),
    ],
    ids=["mlflow-plain-uri", "mlflow-uri-with-password", "volume"],
)
def test_jobs_the_executor_posts_carry_no_credential_from_its_environment(
    tmp_path, monkeypatch, canaries, transport, uri, passed_on
):
    """The real executor against the API stand-in, with canaries in its environment: the
    Job bodies it sends (and the step files it writes) hold none of them; a tracking URI
    is handed on only when it embeds no password."""
    uri = uri.format(
        user=canaries["MLFLOW_TRACKING_USERNAME"], password=canaries["MLFLOW_TRACKING_PASSWORD"]
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    data = tiny_dict(
        tracking={"enabled": transport == "mlflow"},
        tuner={"executor": "kubernetes", "step_retries": 0},
        kubernetes={
            "namespace": "team",
            "transport": transport,
            "volume_claim": "shieldtune-steps",
            "backoff_limit": 0,
            "active_deadline_seconds": 60,  # a pod that never starts cannot hang the test
            "poll_seconds": 0.05,
        },
    )
    cfg = config_from_dict(data)
    store = DirStepStore(tmp_path / "steps", uri_path="/shared/steps")
    (tmp_path / "steps").mkdir()
    with K8sApiStandIn(
        tmp_path / "k8s",
        volumes={"shieldtune-steps": tmp_path / "steps"},
        fault=lambda job, pod_index: "fail",
    ) as cluster:
        executor = KubernetesStepExecutor(
            cfg.kubernetes,
            Job.from_config(cfg).steps,
            store,
            retries=cfg.tuner.step_retries,
            api_client=cluster.api_client(),
            mlflow_run_id="0123abcd",
        )
        try:
            with pytest.raises(StepFailedError):
                executor.run_many([StepRequest(None, HYPER, 300, seed=1)])
        finally:
            executor.close()
        posted = [r.body for r in cluster.requests if r.method == "POST"]
    assert len(posted) == 1
    [job] = posted
    assert leaked(canaries, json.dumps(job)) == []
    assert [str(f) for f in credential_findings(as_text(job), "posted Job")] == []
    [(_, spec)] = list(pod_specs(job))
    assert pod_security_gaps(spec) == []
    [container] = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env.get("MLFLOW_TRACKING_URI") == uri) is passed_on
    assert container["envFrom"] == [{"secretRef": {"name": "shieldtune-mlflow", "optional": True}}]
    step_files = [p for p in (tmp_path / "steps").rglob("*") if p.is_file()]
    assert step_files, "the executor wrote no request file"
    assert [
        (p.name, found) for p in step_files if (found := leaked(canaries, p.read_bytes()))
    ] == []


# ================================================================= KFP pipelines
def _platform_executors(path: Path) -> dict[str, dict[str, Any]]:
    _, platform = yaml.safe_load_all(path.read_text())
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=lambda p: p.name)
def test_every_pipeline_task_runs_non_root_with_scratch_and_limits(path):
    """What KFP's SDK can express of the contract is set on every task (the rest:
    ``test_kfp_sdk_still_cannot_express_the_settings_the_docs_say_it_cannot``)."""
    spec = next(yaml.safe_load_all(path.read_text()))
    executors = spec["deploymentSpec"]["executors"]
    platform = _platform_executors(path)
    assert executors and set(platform) == set(executors), "a task without platform config"
    for name, executor in executors.items():
        limits = executor["container"]["resources"]
        assert limits.get("cpuLimit") and limits.get("memoryLimit"), name
        k8s = platform[name]
        assert k8s["securityContext"] == {
            "runAsUser": str(RUN_AS),  # int64 fields are strings in protobuf JSON
            "runAsGroup": str(RUN_AS),
            "runAsNonRoot": True,
        }, name
        assert [(m["mountPath"], m.get("medium")) for m in k8s["emptyDirMounts"]] == [
            (SCRATCH, None)
        ], name
        for ref in k8s.get("secretAsEnv", []):
            assert ref["secretName"] in SECRET_NAMES, name


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=lambda p: p.name)
def test_pipeline_tasks_get_credentials_only_from_the_secret_never_as_literals(path):
    spec = next(yaml.safe_load_all(path.read_text()))
    for name, executor in spec["deploymentSpec"]["executors"].items():
        for env in executor["container"].get("env", []):
            assert not re.search(r"(?i)password|token|secret|username", env["name"]), name
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if re.search(r"(?i)password|token|secret|credential", p)]


def test_kfp_sdk_still_cannot_express_the_settings_the_docs_say_it_cannot():
    """kfp-kubernetes can set runAsUser/runAsGroup/runAsNonRoot on a task's container,
    nothing else of a securityContext. docs/cluster.md says so; when a new SDK adds a
    field (readOnlyRootFilesystem, ...) this fails: wire it into _configure, update the
    docs and this test."""
    from kfp.kubernetes import kubernetes_executor_config_pb2 as pb

    fields = {f.name for f in pb.SecurityContext.DESCRIPTOR.fields}
    assert fields == {"run_as_user", "run_as_group", "run_as_non_root"}
    doc = CLUSTER_DOC.read_text()
    start = doc.index("Pod security of pipeline tasks\n")
    section = doc[start : doc.index("\n## ", start)]
    for unset in ("readOnlyRootFilesystem", "allowPrivilegeEscalation", "seccomp", "fsGroup"):
        assert unset in section, f"docs/cluster.md does not say what happens to {unset}"


def test_compiled_pipelines_and_components_hold_no_credentials():
    assert [str(f) for f in scan_files(PIPELINE_FILES + COMPONENT_FILES)] == []


def test_compiling_with_credentials_in_the_environment_writes_none_of_them(tmp_path, canaries):
    kfp_pipelines.compile_all(tmp_path)
    written = [p for p in tmp_path.rglob("*.yaml")]
    assert len(written) == len(PIPELINE_FILES) + len(COMPONENT_FILES)
    assert [p.name for p in written if leaked(canaries, p.read_bytes())] == []


def test_dockerfiles_hold_no_credentials():
    assert [str(f) for f in scan_files(DOCKERFILES)] == []


# ================================================================= checkov (standard scanner)
#: checkov runs from its own venv (its dependency pins clash with constraints.txt), made by
#: scripts/install.sh with every package pinned in constraints-tools.txt.
TOOLS_VENV = ROOT / ".venv-tools"
CHECKOV = TOOLS_VENV / "bin" / "checkov"
TOOLS_CONSTRAINTS = ROOT / "constraints-tools.txt"
OVERLAY_DIRS = sorted(
    p.parent for p in (ROOT / "manifests" / "overlays").glob("*/kustomization.yaml")
)
CUSTOM_TASK_DOCKERFILE = ROOT / "examples" / "custom_task" / "Dockerfile"

_PULL_LOCAL = (
    "runs the locally built image loaded into the node (kind load), which a pull would not find"
)
_BY_TAG = (
    "images are referenced by version tag (shieldtune:0.1.0-cpu is built locally); a digest "
    "exists only after a registry push: set it then with kustomize images: / kubernetes.image"
)
_SECRET_ENV = (
    "MLflow's client takes MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN from the environment, so the "
    "Secret comes in by envFrom; mounting it as a file needs src/ changes (step Jobs, docs)"
)

#: Every check checkov fails, per scanned target, with a one-line justification. The test
#: wants the failed set to be exactly this: a new failure must be fixed or justified here,
#: and an entry whose check passes now must be removed, so the list stays honest.
CHECKOV_ALLOWED: dict[str, dict[str, str]] = {
    # manifests/ as written: base/ (namespace-less on purpose) and examples/tune-job.yaml.
    "manifests": {
        "CKV_K8S_15": f"examples/tune-job.yaml {_PULL_LOCAL}; the base's MLflow pulls Always",
        "CKV_K8S_21": "base/ and examples/ name no namespace on purpose (Kubeflow profile "
        "namespaces are per user): an overlay or -n sets it; the rendered overlay passes",
        "CKV_K8S_35": _SECRET_ENV,
        "CKV_K8S_38": "the example controller Job calls the Kubernetes API (Jobs, Pods), so it "
        "needs its token; the MLflow and step pods mount none",
        "CKV_K8S_43": _BY_TAG,
    },
    # `kubectl kustomize manifests/overlays/<name>`: what `kubectl apply -k` sends.
    "rendered": {
        "CKV_K8S_15": f"the local overlay (kind, minikube) {_PULL_LOCAL}: its purpose",
        "CKV_K8S_43": _BY_TAG,
    },
    # The Jobs shieldtune.executors.kubernetes.jobs.step_job builds for the step pods.
    "step-jobs": {
        "CKV_K8S_15": "kubernetes.image_pull_policy defaults to IfNotPresent for the locally "
        "loaded image; with a registry image set it to Always in the config (no code change)",
        "CKV_K8S_21": "the Job body names no namespace: the executor POSTs it to its own "
        "namespace (create_namespaced_job), never to default",
        "CKV_K8S_35": _SECRET_ENV,
        "CKV_K8S_43": _BY_TAG,
    },
    # docker/Dockerfile.* and examples/custom_task/Dockerfile.
    "dockerfiles": {
        "CKV_DOCKER_2": "Kubernetes ignores HEALTHCHECK: the images run batch commands (steps, "
        "KFP tasks) and the one server, MLflow, has HTTP probes in its Deployment",
        "CKV_DOCKER_7": "false positive: FROM ${PYTHON_IMAGE} / ${SHIELDTUNE_IMAGE}, whose ARG "
        "defaults are full version tags; checkov does not expand ARGs",
    },
}


def _pinned_tool_version(name: str) -> str:
    for line in TOOLS_CONSTRAINTS.read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in {TOOLS_CONSTRAINTS.name}")


def _checkov_tree(root: Path) -> dict[str, set[str]]:
    """Writes what checkov scans, one folder per target of CHECKOV_ALLOWED, and returns
    target -> files checkov must report on, as it names them ("/target/...")."""
    shutil.copytree(ROOT / "manifests", root / "manifests")
    (root / "rendered").mkdir()
    for overlay in OVERLAY_DIRS:
        (root / "rendered" / f"{overlay.name}.yaml").write_text(kustomize_output(overlay))
    (root / "step-jobs").mkdir()
    for name, kubernetes in STEP_JOB_CONFIGS.items():
        job = make_step_job(kubernetes)
        (root / "step-jobs" / f"{name}.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    for dockerfile in [*DOCKERFILES, CUSTOM_TASK_DOCKERFILE]:
        target = root / "dockerfiles" / dockerfile.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dockerfile, target)
    # checkov has no checks for some kinds (Namespace, NetworkPolicy, PVC), so only the
    # files with a pod in them are sure to get results.
    pod_files = {path for path, doc in resource_docs() if list(pod_specs(doc))}
    return {
        "manifests": {f"/{p.relative_to(ROOT)}" for p in pod_files},
        "rendered": {f"/rendered/{o.name}.yaml" for o in OVERLAY_DIRS},
        "step-jobs": {f"/step-jobs/{n}.yaml" for n in STEP_JOB_CONFIGS},
        "dockerfiles": {
            f"/{p.relative_to(root)}" for p in (root / "dockerfiles").rglob("*") if p.is_file()
        },
    }


@dataclass(frozen=True)
class CheckovRun:
    reports: list[dict[str, Any]]
    expected_files: dict[str, set[str]]

    def results(self, outcome: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(target, result) for every "passed" or "failed" check result."""
        for report in self.reports:
            for check in report["results"][f"{outcome}_checks"]:
                yield Path(check["file_path"].lstrip("/")).parts[0], check


@pytest.fixture(scope="module")
def checkov_run(tmp_path_factory) -> CheckovRun:
    """One offline checkov run over every target. One graph on purpose: the step Jobs and
    the example Job are matched against the manifests' NetworkPolicies, as in the namespace."""
    if not CHECKOV.is_file():
        pytest.fail(f"checkov not found at {CHECKOV}: run scripts/install.sh")
    work = tmp_path_factory.mktemp("checkov")
    expected_files = _checkov_tree(work / "scan")
    # Only our settings: no API key from the environment (it would upload the results),
    # no checkov options from it, and no call to PyPI for a newer version.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "CKV_", "CHECKOV_"))}
    env.update(CKV_SKIP_PACKAGE_UPDATE_CHECK="true", BC_SKIP_MAPPING="TRUE")
    out = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(work / "scan"),  # absolute: checkov then names files "/<target>/..."
            "--framework",
            "kubernetes",
            "dockerfile",
            "--skip-download",  # offline: no policy or mapping downloads
            "--compact",
            "--output",
            "json",  # passed checks too (not --quiet): they show every file was scanned
        ],
        cwd=work,  # no .checkov.yaml of the repository or of the user is picked up
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode in (0, 1), f"checkov crashed ({out.returncode}): {out.stderr[-2000:]}"
    reports = json.loads(out.stdout)
    return CheckovRun(reports if isinstance(reports, list) else [reports], expected_files)


def test_checkov_is_the_pinned_version_and_scanned_every_file(checkov_run):
    assert {r["check_type"] for r in checkov_run.reports} == {"kubernetes", "dockerfile"}
    for report in checkov_run.reports:
        summary = report["summary"]
        assert summary["checkov_version"] == _pinned_tool_version("checkov"), summary
        assert summary["parsing_errors"] == 0, report["results"].get("parsing_errors")
    checked: dict[str, set[str]] = {target: set() for target in CHECKOV_ALLOWED}
    for outcome in ("passed", "failed"):
        for target, check in checkov_run.results(outcome):
            checked[target].add(check["file_path"])
    for target, files in checkov_run.expected_files.items():
        assert files and files <= checked[target], (target, files - checked[target])


@pytest.mark.parametrize("target", CHECKOV_ALLOWED)
def test_checkov_fails_only_the_justified_checks(checkov_run, target):
    failed: dict[str, list[str]] = {}
    for where, check in checkov_run.results("failed"):
        if where == target:
            failed.setdefault(check["check_id"], []).append(
                f"{check['resource']} ({check['file_path']}): {check['check_name']}"
            )
    allowed = CHECKOV_ALLOWED[target]
    unexpected = [f"{cid} {w}" for cid, ws in failed.items() if cid not in allowed for w in ws]
    assert not unexpected, (
        f"checkov fails on {target}: fix it, or justify it in CHECKOV_ALLOWED\n"
        + "\n".join(unexpected)
    )
    stale = sorted(set(allowed) - set(failed))
    assert not stale, f"{target}: these checks pass now, remove them from CHECKOV_ALLOWED: {stale}"


def test_checkov_allow_list_has_one_line_justifications():
    for target, allowed in CHECKOV_ALLOWED.items():
        for check_id, why in allowed.items():
            assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check_id), (target, check_id)
            assert why.strip() and "\n" not in why and len(why) <= 200, (target, check_id)


# =========================================================== MLflow: a real tuning job
#: MLflow itself tags every run with MLFLOW_TRACKING_USERNAME when it is set
#: (mlflow.tracking.context.default_context): the identity the run is attributed to.
MLFLOW_USER_TAG = "mlflow.user"


def _everything_mlflow_holds(uri: str) -> Iterator[tuple[str, str]]:
    """(where, text) for every experiment, run, param, tag, metric name and registry
    entry in the store at ``uri``."""
    client = MlflowClient(uri)
    for exp in client.search_experiments(view_type=ViewType.ALL):
        yield f"experiment {exp.name}", as_text({"name": exp.name, "tags": exp.tags})
        for run in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL):
            where = f"run {run.info.run_name}"
            yield f"{where} params", as_text(run.data.params)
            tags = {k: v for k, v in run.data.tags.items() if k != MLFLOW_USER_TAG}
            yield f"{where} tags", as_text(tags)
            yield f"{where} tag {MLFLOW_USER_TAG}", run.data.tags.get(MLFLOW_USER_TAG, "")
            yield f"{where} metric names", "\n".join(run.data.metrics)
    for model in client.search_registered_models():
        yield f"model {model.name}", as_text({"tags": model.tags, "desc": model.description})
        for mv in client.search_model_versions(f"name='{model.name}'"):
            yield (
                f"model {model.name} v{mv.version}",
                as_text({"tags": mv.tags, "source": mv.source, "desc": mv.description}),
            )


def test_tuning_job_logs_and_prints_no_credential_from_its_environment(
    tmp_path, monkeypatch, canaries, capfd, caplog
):
    """A tiny real job (CLI, MLflow tracking into sqlite, model registration) with the
    MLflow and KFP credentials set as canaries: none reaches a param, tag, metric name,
    registry entry, output file, MLflow artifact, the store's bytes, stdout/stderr or a
    log record, even at DEBUG level. One exception, MLflow's own: the username (an
    identity, not a secret) is the run's ``mlflow.user`` tag, and so in the store."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    caplog.set_level(logging.DEBUG)
    out_dir = tmp_path / "runs"
    args = tiny_cli_args(
        "tuner.episodes=1",
        "env.steps_per_episode=2",
        f"tuner.output_dir={json.dumps(str(out_dir))}",
        "tracking.enabled=true",
        "tracking.experiment=security-scan",
        "tracking.registered_model_name=security-scan-model",
        "safety.constraints=[mia_advantage <= 0.9]",
    )
    assert main(["tune", *args]) == 0
    printed = capfd.readouterr()

    [run_dir] = [p for p in out_dir.iterdir() if p.is_dir()]
    for name in ("config.yaml", "summary.json", "steps.jsonl"):
        assert (run_dir / name).is_file(), f"the job wrote no {name}: nothing to scan"
    parent = json.loads((run_dir / "summary.json").read_text())["mlflow_run_id"]
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent)}
    assert {"config.yaml", "summary.json", "steps.jsonl"} <= logged

    tracked = list(_everything_mlflow_holds(uri))
    assert any("params" in where for where, _ in tracked) and any(
        where.startswith("model ") for where, _ in tracked
    ), "nothing logged to MLflow: the scan would pass vacuously"
    records = "\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records)
    texts = [*tracked, ("stdout", printed.out), ("stderr", printed.err), ("log records", records)]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    problems = [
        f"{where}: {found}"
        for where, text in texts
        # the username only where MLflow puts it on purpose
        if (found := leaked(canaries, text, username=not where.endswith(MLFLOW_USER_TAG)))
    ]
    problems += [
        f"{p.relative_to(tmp_path)}: {found}"
        for p in files
        if (found := leaked(canaries, p.read_bytes(), username=p.name != "mlflow.db"))
    ]
    problems += [str(f) for where, text in tracked for f in credential_findings(text, where)]
    assert problems == []
    assert (
        "best certified-safe state" in printed.out
    )  # the captured output is the job's real output


# ============================================================ the scanners catch things
@pytest.mark.parametrize(
    "planted",
    [
        "MLFLOW_TRACKING_PASSWORD=hunter22-prod",
        'password: "correct horse battery staple"',
        '"api_key": "sk_live_4eC39HqLyjWDarjtT1zdp7dc"',
        "tracking:\n  token: 3f9a0b7c55e1d2\n",
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "MLFLOW_TRACKING_URI: https://alice:s3cr3t@mlflow.example.com",
        "--host https://kfp.example.com --header 'Authorization: Bearer abcdef0123456789abcdef'",
        "Authorization: Basic YWxpY2U6czNjcjN0LXBhc3N3b3Jk",
        "token ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2,
        "slack: xoxb-123456789012-abcdefghijkl",
        "kfp_token: eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJlLWJ5dGVz",
        "  secret_key: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'",
    ],
)
def test_credential_scan_catches_planted_credentials(planted):
    assert credential_findings(planted, "planted"), f"missed: {planted!r}"


@pytest.mark.parametrize(
    "reference",
    [
        "secretName: shieldtune-mlflow",
        "secretKey: MLFLOW_TRACKING_PASSWORD",
        "- secretRef: {name: shieldtune-mlflow, optional: true}",
        "secretKeyRef:\n  name: shieldtune-mlflow\n  key: MLFLOW_TRACKING_PASSWORD\n",
        "envVar: MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_PASSWORD: <the password>",
        "token: ${KFP_BEARER_TOKEN}",
        "automountServiceAccountToken: false",
        "mlflow_secret: shieldtune-mlflow",
        "MLFLOW_TRACKING_URI: http://shieldtune-mlflow:5000",
        "url: https://mlflow.example.com/#/experiments",
    ],
)
def test_credential_scan_lets_references_to_credentials_through(reference):
    assert credential_findings(reference, "reference") == []


def test_credential_scan_finds_a_password_planted_in_a_manifest():
    """End to end on a real manifest: a literal env value slipped into the Deployment."""
    deployment = find(kustomize(BASE), "Deployment", "shieldtune-mlflow")
    text = as_text(deployment)
    assert credential_findings(text, "mlflow Deployment") == []
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container.setdefault("env", []).append({"name": "MLFLOW_TRACKING_PASSWORD", "value": "x"})
    container["env"].append({"name": "DB", "value": "postgresql://mlflow:pw123456@db:5432/m"})
    rules = {f.rule for f in credential_findings(as_text(deployment), "planted")}
    assert "url-with-password" in rules


def _no_non_root(spec: dict, c: dict) -> None:
    spec["securityContext"].pop("runAsNonRoot")
    c["securityContext"].pop("runAsNonRoot")


def _drop_scratch(spec: dict, c: dict) -> None:
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "scratch"]


#: One broken setting each: (how to break the step Job's pod, the gap it must produce).
BROKEN_PODS = {
    "root-allowed": (_no_non_root, "runAsNonRoot"),
    "uid-0": (lambda s, c: c["securityContext"].update(runAsUser=0), "runAsUser 0"),
    "privilege-escalation": (
        lambda s, c: c["securityContext"].update(allowPrivilegeEscalation=True),
        "allowPrivilegeEscalation",
    ),
    "capability-added": (
        lambda s, c: c["securityContext"].update(capabilities={"add": ["NET_RAW"]}),
        "capabilities",
    ),
    "writable-root": (
        lambda s, c: c["securityContext"].update(readOnlyRootFilesystem=False),
        "readOnlyRootFilesystem",
    ),
    "no-seccomp": (lambda s, c: s["securityContext"].pop("seccompProfile"), "seccompProfile"),
    "no-scratch": (_drop_scratch, "emptyDir"),
    "no-memory-limit": (lambda s, c: c["resources"]["limits"].pop("memory"), "memory limit"),
    "privileged": (lambda s, c: c["securityContext"].update(privileged=True), "privileged"),
}


@pytest.mark.parametrize("break_it, gap", BROKEN_PODS.values(), ids=BROKEN_PODS)
def test_pod_security_check_flags_each_broken_setting(break_it, gap):
    job = make_step_job(STEP_JOB_CONFIGS["mlflow-cpu"])
    [(_, spec)] = list(pod_specs(job))
    assert pod_security_gaps(spec) == []
    break_it(spec, spec["containers"][0])
    assert any(gap in g for g in pod_security_gaps(spec)), pod_security_gaps(spec)


def test_pod_walker_finds_pods_of_any_kind_at_any_depth():
    cronjob = {
        "kind": "CronJob",
        "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}}},
    }
    pod = {"kind": "Pod", "spec": {"containers": [{"name": "b"}]}}
    assert [w for w, _ in pod_specs([cronjob, pod])] == [
        "[0].spec.jobTemplate.spec.template.spec",
        "[1].spec",
    ]
