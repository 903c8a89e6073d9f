"""checkov, a standard scanner, over the manifests, the rendered overlays, the generated step
Jobs and the Dockerfiles: the pinned version scans every file, and fails only the checks
``CHECKOV_ALLOWED`` justifies in one line each (no more, and none that pass now).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .security_helpers import DOCKERFILES, ROOT, STEP_JOB_CONFIGS, make_step_job, pod_specs
from .test_manifests import kustomize_output, resource_docs

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
