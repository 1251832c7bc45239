"""A simulator of many Kubernetes API servers over real TLS, for tests, benchmarks and demos.

``async with Simulator() as sim:`` serves every cluster added with ``sim.add_cluster`` under
``https://127.0.0.1:PORT/clusters/<name>``, answering /version, /readyz, /livez, /healthz, /api,
/apis, /api/v1/nodes (paginated) and metrics.k8s.io node metrics the way a real apiserver does,
to a bearer token or a client certificate. ``ClusterSpec`` fields inject faults (slowness, failing
checks, RBAC refusals, garbled JSON, connection resets, a wrong CA, revoked credentials).
"""

from fleetql.sim.cluster import SimCluster
from fleetql.sim.runner import run_simulator, write_kubeconfigs
from fleetql.sim.simulator import Simulator
from fleetql.sim.spec import ClusterSpec, NodeShape

__all__ = [
    "ClusterSpec",
    "NodeShape",
    "SimCluster",
    "Simulator",
    "run_simulator",
    "write_kubeconfigs",
]
