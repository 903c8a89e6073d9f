"""The Job that runs one environment step (``shieldtune step``) on a cluster.

Built as a plain dict in the batch/v1 schema so it can be validated offline
(tests check it with ``kubernetes-validate``) and sent as is by the official
client. The pod is locked down the way the ``restricted`` Pod Security Standard
asks: non-root, no privilege escalation, every capability dropped, read-only root
filesystem (scratch goes to an emptyDir at ``/tmp``), seccomp ``RuntimeDefault``,
no service-account token, and resource requests and limits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shieldtune.config import KubernetesConfig

#: The user and group the images create (docker/Dockerfile.*).
RUN_AS = 10001
SCRATCH = "/tmp"
LABEL_PREFIX = "shieldtune.dev"
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


@dataclass(frozen=True)
class Owner:
    """The controller pod; Jobs it owns are garbage-collected with it."""

    name: str
    uid: str


def label_value(value: str) -> str:
    """``value`` cut to a valid label value (63 chars, alphanumeric at both ends)."""
    cleaned = re.sub(r"[^-A-Za-z0-9_.]", "-", value)[:63].strip("-_.")
    return cleaned if _LABEL_VALUE.fullmatch(cleaned) else ""


def step_labels(
    step_id: str, mlflow_run_id: str | None, kfp_run_id: str | None, controller: str | None
) -> dict[str, str]:
    """Labels that tie a step pod to its step, MLflow run, KFP run and controller."""
    labels = {
        "app.kubernetes.io/name": "shieldtune",
        "app.kubernetes.io/component": "step",
        "app.kubernetes.io/part-of": "shieldtune",
        "app.kubernetes.io/managed-by": "shieldtune-controller",
        f"{LABEL_PREFIX}/step-id": label_value(step_id),
    }
    for key, value in (
        ("mlflow-run-id", mlflow_run_id),
        ("kfp-run-id", kfp_run_id),
        ("controller", controller),
    ):
        if value and label_value(value):
            labels[f"{LABEL_PREFIX}/{key}"] = label_value(value)
    return labels


def step_job(
    name: str,
    store_uri: str,
    step_id: str,
    cfg: KubernetesConfig,
    labels: dict[str, str],
    *,
    owner: Owner | None = None,
    env: dict[str, str] | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """The batch/v1 Job for one attempt of one step."""
    limits = {"cpu": cfg.cpu_limit, "memory": cfg.memory_limit}
    requests = {"cpu": cfg.cpu_request, "memory": cfg.memory_request}
    if cfg.gpus:
        limits["nvidia.com/gpu"] = str(cfg.gpus)
    volumes: list[dict[str, Any]] = [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}]
    mounts: list[dict[str, Any]] = [{"name": "scratch", "mountPath": SCRATCH}]
    if cfg.transport == "volume":
        volumes.append({"name": "steps", "persistentVolumeClaim": {"claimName": cfg.volume_claim}})
        mounts.append({"name": "steps", "mountPath": cfg.volume_mount_path})
    container_env = [
        {"name": "HOME", "value": SCRATCH},
        {"name": "TMPDIR", "value": SCRATCH},
        {"name": "MPLCONFIGDIR", "value": f"{SCRATCH}/matplotlib"},
        {"name": "TORCH_HOME", "value": f"{SCRATCH}/torch"},
        *({"name": k, "value": v} for k, v in sorted((env or {}).items())),
    ]
    container: dict[str, Any] = {
        "name": "step",
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["shieldtune", "step"],
        "args": ["--store", store_uri, "--step-id", step_id, "--threads", str(threads)],
        "env": container_env,
        "envFrom": [{"secretRef": {"name": cfg.mlflow_secret, "optional": True}}],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    metadata: dict[str, Any] = {"name": name, "labels": dict(labels)}
    if owner is not None:
        metadata["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Pod", "name": owner.name, "uid": owner.uid}
        ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": cfg.backoff_limit,
            "activeDeadlineSeconds": cfg.active_deadline_seconds,
            "ttlSecondsAfterFinished": cfg.ttl_seconds_after_finished,
            "template": {
                # An Istio sidecar (Kubeflow profile namespaces inject one) never exits, so
                # the Job would never complete.
                "metadata": {
                    "labels": dict(labels),
                    "annotations": {"sidecar.istio.io/inject": "false"},
                },
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": cfg.service_account,
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
