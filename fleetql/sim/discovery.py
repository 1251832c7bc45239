"""API discovery documents (/api, /apis, /apis/metrics.k8s.io/v1beta1) and /version.

Clients decide whether metrics.k8s.io exists from /apis, so the group appears there only while the
simulated cluster serves it, as with a real aggregated API.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["api_groups_body", "api_versions_body", "metrics_resources_body", "version_body"]

METRICS_GROUP = "metrics.k8s.io"

# The built-in groups of a v1.28 apiserver, in its order (shared/k8s-captures/apis-discovery.json).
_BUILT_IN_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("apiregistration.k8s.io", ("v1",)),
    ("apps", ("v1",)),
    ("events.k8s.io", ("v1",)),
    ("authentication.k8s.io", ("v1",)),
    ("authorization.k8s.io", ("v1",)),
    ("autoscaling", ("v2", "v1")),
    ("batch", ("v1",)),
    ("certificates.k8s.io", ("v1",)),
    ("networking.k8s.io", ("v1",)),
    ("policy", ("v1",)),
    ("rbac.authorization.k8s.io", ("v1",)),
    ("storage.k8s.io", ("v1",)),
    ("admissionregistration.k8s.io", ("v1",)),
    ("apiextensions.k8s.io", ("v1",)),
    ("scheduling.k8s.io", ("v1",)),
    ("coordination.k8s.io", ("v1",)),
    ("node.k8s.io", ("v1",)),
    ("discovery.k8s.io", ("v1",)),
    ("flowcontrol.apiserver.k8s.io", ("v1beta3", "v1beta2")),
)


def _group(name: str, versions: tuple[str, ...]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{version}", "version": version} for version in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


_BUILT_IN = [_group(name, versions) for name, versions in _BUILT_IN_GROUPS]
_METRICS = _group(METRICS_GROUP, ("v1beta1",))


def api_groups_body(*, metrics_served: bool) -> bytes:
    """The APIGroupList of GET /apis."""
    groups = [*_BUILT_IN, _METRICS] if metrics_served else _BUILT_IN
    return orjson.dumps({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})


def api_versions_body(server_address: str) -> bytes:
    """The APIVersions of GET /api (the core group)."""
    return orjson.dumps(
        {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
            ],
        }
    )


def metrics_resources_body() -> bytes:
    """The APIResourceList metrics-server registers for metrics.k8s.io/v1beta1."""
    resources = [
        {
            "name": "nodes",
            "singularName": "",
            "namespaced": False,
            "kind": "NodeMetrics",
            "verbs": ["get", "list"],
        },
        {
            "name": "pods",
            "singularName": "",
            "namespaced": True,
            "kind": "PodMetrics",
            "verbs": ["get", "list"],
        },
    ]
    return orjson.dumps(
        {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{METRICS_GROUP}/v1beta1",
            "resources": resources,
        }
    )


def version_body(git_version: str, *, go_version: str) -> bytes:
    """GET /version (version.json): major and minor come from ``git_version`` ("v1.28.7")."""
    numbers = git_version.lstrip("v").split("-")[0].split(".")
    major = numbers[0] if numbers else ""
    minor = numbers[1] if len(numbers) > 1 else ""
    return orjson.dumps(
        {
            "major": major,
            "minor": minor,
            "gitVersion": git_version,
            "gitCommit": "97d04a81e5e02c7512c84c3a533eba3e0d3a2818",
            "gitTreeState": "clean",
            "buildDate": "2026-11-24T20:30:00Z",
            "goVersion": go_version,
            "compiler": "gc",
            "platform": "linux/amd64",
        }
    )
