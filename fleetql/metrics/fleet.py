"""The fleet's gauges, built at scrape time from figures read out of PostgreSQL.

Every replica reads the same rows, so every replica reports the same fleet: dashboards may
scrape any of them (or aggregate with ``max``). Per-cluster series carry only the cluster's id
and name as labels; they can be turned off (``metrics.per_cluster_series``) for fleets too large
for one series per cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleetql.db.fleet import ClusterFigures, FleetFigures
from fleetql.db.models import ClusterStatus

__all__ = ["FleetCollector", "render_per_cluster"]

# A cluster whose API server answered ready.
_READY = frozenset({ClusterStatus.HEALTHY.value, ClusterStatus.DEGRADED.value})


class FleetCollector(Collector):
    """The fleet-wide gauges of one scrape; register it on a registry of its own per scrape.
    The per-cluster series are rendered by ``render_per_cluster``."""

    def __init__(self, figures: FleetFigures) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        figures = self._figures
        clusters = GaugeMetricFamily(
            "fleetql_clusters", "Live clusters by status.", labels=["status"]
        )
        for status in ClusterStatus:
            clusters.add_metric([status.value], figures.by_status.get(status.value, 0))
        yield clusters
        yield GaugeMetricFamily(
            "fleetql_fleet_nodes", "Nodes of every live cluster.", value=figures.nodes
        )
        yield GaugeMetricFamily(
            "fleetql_fleet_ready_nodes",
            "Ready nodes of every live cluster.",
            value=figures.ready_nodes,
        )
        yield GaugeMetricFamily(
            "fleetql_fleet_cpu_allocatable_cores",
            "Allocatable CPU of every live cluster, in cores.",
            value=float(figures.cpu_allocatable_cores),
        )
        yield GaugeMetricFamily(
            "fleetql_fleet_memory_allocatable_bytes",
            "Allocatable memory of every live cluster, in bytes.",
            value=figures.memory_allocatable_bytes,
        )
        yield GaugeMetricFamily(
            "fleetql_cluster_checks_due",
            "Clusters due for a check that no poller has claimed yet (fleet-wide).",
            value=figures.due,
        )
        yield GaugeMetricFamily(
            "fleetql_cluster_checks_due_oldest_age_seconds",
            "How long past its check time the most overdue unclaimed cluster is (0: none due); "
            "growing means the pollers are falling behind.",
            value=figures.oldest_due_seconds,
        )


def render_per_cluster(clusters: Sequence[ClusterFigures]) -> str:
    """One series per cluster and figure, in the text format, written directly: at 10,000
    clusters prometheus_client's generic renderer takes most of a second, this a tenth."""
    labels = [
        (f'{{cluster="{cluster.id}",name="{_escape(cluster.name)}"', cluster)
        for cluster in clusters
    ]
    parts: list[str] = []
    for name, help_text, figure in _PER_CLUSTER:
        parts.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
        parts.extend(
            f"{name}{label}}} {number}\n"
            for label, cluster in labels
            if (number := figure(cluster)) is not None
        )
    name = "fleetql_cluster_status"
    parts.append(
        f"# HELP {name} The cluster's status as a label; the value is always 1.\n"
        f"# TYPE {name} gauge\n"
    )
    parts.extend(f'{name}{label},status="{cluster.status}"}} 1\n' for label, cluster in labels)
    return "".join(parts)


def _escape(value: str) -> str:
    # Cluster names are DNS labels and need none of this; the format requires it in general.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: int | float | Decimal | None) -> str | None:
    if value is None:
        return None
    return str(value) if isinstance(value, int) else repr(float(value))


_PER_CLUSTER: tuple[tuple[str, str, Callable[[ClusterFigures], str | None]], ...] = (
    (
        "fleetql_cluster_ready",
        "1 when the cluster is HEALTHY or DEGRADED (its API is ready), else 0.",
        lambda cluster: "1" if cluster.status in _READY else "0",
    ),
    (
        "fleetql_cluster_nodes",
        "Nodes of the cluster (absent until it was checked).",
        lambda cluster: _number(cluster.node_count),
    ),
    (
        "fleetql_cluster_ready_nodes",
        "Ready nodes of the cluster.",
        lambda cluster: _number(cluster.ready_node_count),
    ),
    (
        "fleetql_cluster_cpu_allocatable_cores",
        "Allocatable CPU of the cluster, in cores.",
        lambda cluster: _number(cluster.cpu_allocatable_cores),
    ),
    (
        "fleetql_cluster_memory_allocatable_bytes",
        "Allocatable memory of the cluster, in bytes.",
        lambda cluster: _number(cluster.memory_allocatable_bytes),
    ),
    (
        "fleetql_cluster_credential_expiry_timestamp_seconds",
        "When the cluster's stored credential expires, in Unix time (absent if it does not).",
        lambda cluster: (
            None
            if cluster.credential_expires_at is None
            else _number(cluster.credential_expires_at.timestamp())
        ),
    ),
)
