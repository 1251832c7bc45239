"""Node and NodeMetrics objects in the exact JSON shape kube-apiserver and metrics-server send.

Key order, nesting and types follow a real v1.28 apiserver (see shared/k8s-captures/nodes.json);
the node's conditions, annotations, hugepages resources and images are the ones a real kubelet
posts. Each node is rendered to bytes once, so a list page is a join of ready-made byte strings.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from fleetql.sim.images import node_images
from fleetql.sim.spec import NodeShape

__all__ = ["NodeState", "node_labels", "node_list_body", "render_node", "render_node_metrics_list"]

_UID_NAMESPACE = uuid.UUID("6f1e2d7c-1a61-4c55-9a55-6d1b1f3c2a90")

_PRESSURE_CONDITIONS = (
    ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
)
_NOT_READY_MESSAGE = (
    "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
    "message:Network plugin returns error: cni plugin not initialized"
)
_ANNOTATIONS = {
    "node.alpha.kubernetes.io/ttl": "0",
    "volumes.kubernetes.io/controller-managed-attach-detach": "true",
}
_CONDITION_FIELDS: dict[str, Any] = {
    ".": {},
    "f:lastHeartbeatTime": {},
    "f:lastTransitionTime": {},
    "f:message": {},
    "f:reason": {},
    "f:status": {},
    "f:type": {},
}
_ADDRESS_FIELDS: dict[str, Any] = {".": {}, "f:address": {}, "f:type": {}}
_RESOURCE_FIELDS: dict[str, Any] = {
    ".": {},
    "f:cpu": {},
    "f:ephemeral-storage": {},
    "f:hugepages-1Gi": {},
    "f:hugepages-2Mi": {},
    "f:memory": {},
    "f:pods": {},
}
_NODE_INFO_FIELDS: dict[str, Any] = {
    f"f:{name}": {}
    for name in (
        "architecture",
        "bootID",
        "containerRuntimeVersion",
        "kernelVersion",
        "kubeProxyVersion",
        "kubeletVersion",
        "machineID",
        "operatingSystem",
        "osImage",
        "systemUUID",
    )
}
_STATUS_FIELDS: dict[str, Any] = {
    "f:status": {
        "f:addresses": {
            ".": {},
            'k:{"type":"Hostname"}': _ADDRESS_FIELDS,
            'k:{"type":"InternalIP"}': _ADDRESS_FIELDS,
        },
        "f:allocatable": _RESOURCE_FIELDS,
        "f:capacity": _RESOURCE_FIELDS,
        "f:conditions": {
            ".": {},
            **{f'k:{{"type":"{kind}"}}': _CONDITION_FIELDS for kind, _, _ in _PRESSURE_CONDITIONS},
            'k:{"type":"Ready"}': _CONDITION_FIELDS,
        },
        "f:images": {},
        "f:nodeInfo": _NODE_INFO_FIELDS,
    }
}


@dataclass(frozen=True)
class NodeState:
    """Everything that varies between nodes of one rendering."""

    cluster: str
    name: str
    index: int
    shape: NodeShape
    ready: str  # the Ready condition's status: "True", "False" or "Unknown"
    resource_version: int
    created: str  # RFC 3339 seconds, as Kubernetes writes metav1.Time
    heartbeat: str
    transition: str
    kubelet_version: str


def node_labels(node: NodeState) -> dict[str, str]:
    """The labels a kubelet registers a node with (Go sorts map keys, so they are sorted)."""
    return {
        "beta.kubernetes.io/arch": node.shape.architecture,
        "beta.kubernetes.io/os": "linux",
        "fleetql.dev/sim-cluster": node.cluster,
        "kubernetes.io/arch": node.shape.architecture,
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
    }


def render_node(node: NodeState) -> bytes:
    """One v1 Node object as compact JSON, as it appears in a NodeList's ``items``."""
    shape = node.shape
    uid = uuid.uuid5(_UID_NAMESPACE, f"{node.cluster}/{node.name}")
    labels = node_labels(node)
    unknown = node.ready == "Unknown"
    conditions: list[dict[str, str]] = []
    for kind, reason, message in _PRESSURE_CONDITIONS:
        conditions.append(
            _condition(
                kind,
                "Unknown" if unknown else "False",
                "NodeStatusUnknown" if unknown else reason,
                "Kubelet stopped posting node status." if unknown else message,
                node,
            )
        )
    if node.ready == "True":
        ready = ("KubeletReady", "kubelet is posting ready status")
    elif unknown:
        ready = ("NodeStatusUnknown", "Kubelet stopped posting node status.")
    else:
        ready = ("KubeletNotReady", _NOT_READY_MESSAGE)
    conditions.append(_condition("Ready", node.ready, *ready, node))
    octets = f"{10 + node.index // 65536 % 200}.{node.index // 256 % 256}.{node.index % 256}"
    document: dict[str, Any] = {
        "metadata": {
            "name": node.name,
            "uid": str(uid),
            "resourceVersion": str(node.resource_version),
            "creationTimestamp": node.created,
            "labels": labels,
            "annotations": _ANNOTATIONS,
            "managedFields": [
                {
                    "manager": "kubelet",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": node.created,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {
                            "f:annotations": {".": {}, **{f"f:{k}": {} for k in _ANNOTATIONS}},
                            "f:labels": {".": {}, **{f"f:{k}": {} for k in labels}},
                        }
                    },
                },
                {
                    "manager": "kubelet",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": node.heartbeat,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": _STATUS_FIELDS,
                    "subresource": "status",
                },
            ],
        },
        "spec": _node_spec(node),
        "status": {
            "capacity": _resources(
                shape.cpu_capacity, shape.ephemeral_storage_capacity, shape.memory_capacity, shape
            ),
            "allocatable": _resources(
                shape.cpu_allocatable,
                shape.ephemeral_storage_allocatable,
                shape.memory_allocatable,
                shape,
            ),
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": f"10.{octets}"},
                {"type": "Hostname", "address": node.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": uid.hex,
                "systemUUID": str(uuid.uuid5(uid, "system")),
                "bootID": str(uuid.uuid5(uid, "boot")),
                "kernelVersion": "6.1.0-28-cloud-amd64",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": node.kubelet_version,
                "kubeProxyVersion": node.kubelet_version,
                "operatingSystem": "linux",
                "architecture": shape.architecture,
            },
            "images": node_images(node.name, node.kubelet_version),
        },
    }
    return orjson.dumps(document)


def node_list_body(metadata: dict[str, Any], items: bytes) -> bytes:
    """A v1 NodeList around ``items``: rendered nodes joined by commas."""
    return b"".join(
        (
            b'{"kind":"NodeList","apiVersion":"v1","metadata":',
            orjson.dumps(metadata),
            b',"items":[',
            items,
            b"]}",
        )
    )


def render_node_metrics_list(nodes: Sequence[NodeState], *, timestamp: str) -> bytes:
    """A metrics.k8s.io/v1beta1 NodeMetricsList as metrics-server (>= 0.6) answers it."""
    items = [
        {
            "metadata": {
                "name": node.name,
                "creationTimestamp": timestamp,
                "labels": node_labels(node),
            },
            "timestamp": timestamp,
            "window": "20.029s",
            "usage": {"cpu": node.shape.cpu_usage, "memory": node.shape.memory_usage},
        }
        for node in nodes
        # metrics-server has no fresh sample for a node whose kubelet is not answering.
        if node.ready != "Unknown"
    ]
    return orjson.dumps(
        {
            "kind": "NodeMetricsList",
            "apiVersion": "metrics.k8s.io/v1beta1",
            "metadata": {},
            "items": items,
        }
    )


def _node_spec(node: NodeState) -> dict[str, Any]:
    """The node lifecycle controller taints nodes that are not Ready (nodes.json's third node)."""
    if node.ready == "False":
        return {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]}
    if node.ready == "Unknown":
        unreachable = "node.kubernetes.io/unreachable"
        return {
            "taints": [
                {"key": unreachable, "effect": "NoSchedule"},
                {"key": unreachable, "effect": "NoExecute", "timeAdded": node.transition},
            ]
        }
    return {}


def _condition(
    kind: str, status: str, reason: str, message: str, node: NodeState
) -> dict[str, str]:
    return {
        "type": kind,
        "status": status,
        "lastHeartbeatTime": node.heartbeat,
        "lastTransitionTime": node.transition,
        "reason": reason,
        "message": message,
    }


def _resources(cpu: str, ephemeral_storage: str, memory: str, shape: NodeShape) -> dict[str, str]:
    return {
        "cpu": cpu,
        "ephemeral-storage": ephemeral_storage,
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        "memory": memory,
        "pods": shape.pods,
    }
