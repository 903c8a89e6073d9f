"""Connecting to the Kubernetes API with the official client.

In a pod (``KUBERNETES_SERVICE_HOST`` set) the service-account token is used;
elsewhere the kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``, optionally a
named context). Either way a failure becomes one :class:`ClusterError` line.
"""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes import client, config
from kubernetes.config.incluster_config import InClusterConfigLoader

from shieldtune.errors import ClusterError, first_line

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _kubeconfig(path: str | None) -> str:
    """``path``, else $KUBECONFIG as it is now (the client reads it once, at import), else
    ``~/.kube/config``."""
    return path or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


def load_api_client(
    context: str | None = None,
    kubeconfig: str | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> client.ApiClient:
    """An authenticated ``ApiClient``: in-cluster token if in a pod, else the kubeconfig."""
    configuration = client.Configuration()
    try:
        if in_cluster():
            InClusterConfigLoader(
                token_filename=str(service_account_dir / "token"),
                cert_filename=str(service_account_dir / "ca.crt"),
                environ=os.environ,
            ).load_and_set(configuration)
        else:
            config.load_kube_config(
                config_file=_kubeconfig(kubeconfig),
                context=context,
                client_configuration=configuration,
            )
    except (config.ConfigException, OSError, ValueError, TypeError) as exc:
        how = "in-cluster service account" if in_cluster() else "kubeconfig"
        raise ClusterError(
            f"cannot load Kubernetes credentials from the {how} ({first_line(exc)}); "
            "set KUBECONFIG or kubernetes.context, or run inside a cluster"
        ) from None
    return client.ApiClient(configuration)


def default_namespace(
    context: str | None = None,
    kubeconfig: str | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> str:
    """The pod's own namespace in a cluster, else the kubeconfig context's, else ``default``."""
    if in_cluster():
        ns_file = service_account_dir / "namespace"
        if ns_file.is_file():
            return ns_file.read_text().strip() or "default"
        return "default"
    try:
        contexts, active = config.list_kube_config_contexts(config_file=_kubeconfig(kubeconfig))
    except (config.ConfigException, OSError):
        return "default"
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    return (chosen or {}).get("context", {}).get("namespace") or "default"
