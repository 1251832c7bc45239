"""What a simulated cluster looks like: plain dataclasses that tests change between polls.

A ``ClusterSpec`` is read on every request, so assigning a field (``spec.ready_nodes = 1``) is all
it takes to change what the next poll sees. Node data is rendered to bytes once per distinct
shape; see ``SimCluster`` for how a change is noticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ClusterSpec", "NodeShape"]


@dataclass(frozen=True)
class NodeShape:
    """One node's resources as a kubelet reports them, and its usage as metrics-server reports it.

    Frozen so that a change is an assignment to ``ClusterSpec.node_shapes`` the cache can notice.
    """

    cpu_capacity: str = "8"
    cpu_allocatable: str = "7910m"
    memory_capacity: str = "32596084Ki"
    memory_allocatable: str = "32493684Ki"
    ephemeral_storage_capacity: str = "101430960Ki"
    ephemeral_storage_allocatable: str = "93478772582"
    pods: str = "110"
    cpu_usage: str = "1253741829n"
    memory_usage: str = "6731436Ki"
    architecture: str = "amd64"


@dataclass
class ClusterSpec:
    """The state one simulated cluster reports; every field may be reassigned at any time.

    Nodes are named ``<cluster>-node-NNNN`` and listed in name order, as etcd returns them; the
    first ``ready_nodes`` of them are Ready (all when None), the others report ``not_ready_status``.
    Node ``i`` takes ``node_shapes[i % len(node_shapes)]``.
    """

    name: str
    token: str
    node_count: int = 3
    ready_nodes: int | None = None
    not_ready_status: Literal["False", "Unknown"] = "False"
    node_shapes: tuple[NodeShape, ...] = (NodeShape(),)
    version: str = "v1.28.7"
    go_version: str = "go1.21.13"
    # metrics.k8s.io is served (a metrics-server is installed); when False it answers 404 text.
    metrics_served: bool = True
    # /readyz and /livez exist (Kubernetes >= 1.16); when False they answer 404 and clients must
    # fall back to /healthz.
    readyz_served: bool = True
    # Names of health checks that fail (e.g. "etcd"): /readyz (and /healthz, /livez when the check
    # is theirs too) answer ``unhealthy_status`` with the apiserver's verbose failure text.
    failing_checks: tuple[str, ...] = ()
    unhealthy_status: int = 500
    # Seconds every response of this cluster is held back; math.inf holds it until shutdown.
    delay: float = 0.0
    # The credentials' identity lacks RBAC rights on nodes: /api/v1/nodes (list and get) answers
    # the 403 Forbidden Status of status-403-nodes.json; every other path still works.
    forbid_nodes: bool = False
    # Every JSON answer that would be 200 (version, discovery, nodes, metrics) is cut in half:
    # 200, Content-Type application/json, a body no JSON parser accepts. Health text is unaffected.
    malformed_json: bool = False
    # Each request's TCP connection is reset (RST, no HTTP response, no TLS close_notify) once the
    # request has been read, as when an apiserver or its load balancer crashes mid-request.
    reset_connections: bool = False
    # Connections are answered with a certificate from another CA, as when a cluster's CA was
    # rotated or a proxy intercepts; clients fail verification. Needs ``own_port=True``; applies
    # to connections opened after it is set, and resets open ones at their next request.
    wrong_ca: bool = False
    # Every request, even one with the right token or client certificate, gets the 401 Status
    # (status-401.json), as when the credential was revoked or the token webhook is down.
    auth_fails: bool = False

    def __post_init__(self) -> None:
        if self.node_count < 0:
            raise ValueError(f"node_count must be >= 0, not {self.node_count}")
        if not self.node_shapes:
            raise ValueError("node_shapes needs at least one NodeShape")
