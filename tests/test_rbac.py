"""RBAC: the controller's Role grants exactly the Kubernetes API calls its code makes.

The calls are read from the kubernetes executor's source (AST), so a new API call without a
grant, a cluster-wide call, or a grant nothing calls fails here. (test_manifests.py pins the
exact grants.)
"""

from __future__ import annotations

import ast

from .security_helpers import ROOT
from .test_manifests import BASE, find, kustomize, role_grants

K8S_SOURCES = sorted((ROOT / "src" / "shieldtune" / "executors" / "kubernetes").glob("*.py"))

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
