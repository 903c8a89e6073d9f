"""What the security tests share: the repository's scanned files, the pod walker, the pod
security contract and the step Jobs they check.

Not a test module. ``pod_specs`` finds every pod spec in an object whatever its kind, and
``pod_security_gaps`` says how one falls short of the issue's contract: every pod runs
non-root, without privilege escalation or capabilities, on a read-only root filesystem with an
emptyDir for scratch, under seccomp ``RuntimeDefault`` and with resource limits.
test_pod_security.py applies them (and proves they catch broken pods), test_credentials.py
checks the Jobs the executor really POSTs with them, and test_checkov.py scans the step Jobs
built here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shieldtune.config import config_from_dict
from shieldtune.executors.kubernetes.jobs import Owner, step_job, step_labels

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_FILES = sorted((ROOT / "pipelines").glob("*.yaml"))
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))

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
