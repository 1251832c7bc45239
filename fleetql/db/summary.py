"""The dashboard header: totals by status and by Kubernetes minor version.

The whole fleet's header (no filter, no access scope) is read from ``fleet_totals``, which
triggers keep exact in every writing transaction, with one index range for the credentials
expiring soon in the same statement (that depends on now(), so it cannot be kept). Any filter
or scope aggregates the matching clusters in one statement: GROUPING SETS answers the overall
totals, the per-status counts and the per-version counts in a single scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import and_, func, literal_column, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from fleetql.db.clusters import ClusterFilter, counts_from_totals, filter_conditions
from fleetql.db.models import Cluster, ClusterState
from fleetql.db.totals import TotalsGroup, fleet_totals_query

__all__ = ["FleetSummary", "aggregate_fleet_summary", "fleet_summary"]

# "v1.28.7" and "v1.29.0-eks-1234" → "v1.28" / "v1.29"; null stays null (never checked).
# (A literal pattern, not a bound parameter: GROUP BY and GROUPING must see the same expression.)
_MINOR = func.substring(ClusterState.kubernetes_version, literal_column("'^v?[0-9]+[.][0-9]+'"))


@dataclass(frozen=True)
class FleetSummary:
    clusters: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_minor_version: dict[str | None, int] = field(default_factory=dict)
    nodes: int = 0
    ready_nodes: int = 0
    cpu_capacity_cores: Decimal = Decimal(0)
    cpu_allocatable_cores: Decimal = Decimal(0)
    memory_capacity_bytes: int = 0
    memory_allocatable_bytes: int = 0
    credentials_expiring: int = 0


async def fleet_summary(
    session: AsyncSession, where: ClusterFilter, *, expiring_before: datetime
) -> FleetSummary:
    """The header of the live clusters matching ``where``."""
    if counts_from_totals(where) and not where.statuses:
        return await _summary_from_totals(session, expiring_before=expiring_before)
    return await aggregate_fleet_summary(session, where, expiring_before=expiring_before)


async def _summary_from_totals(session: AsyncSession, *, expiring_before: datetime) -> FleetSummary:
    # The expiring count rides along as a column: one statement, one snapshot.
    expiring = (
        select(func.count())
        .where(Cluster.deleted_at.is_(None), Cluster.credential_expires_at < expiring_before)
        .scalar_subquery()
    )
    query = fleet_totals_query().add_columns(expiring.label("expiring"))
    rows = (await session.execute(query)).all()
    if not rows:
        return FleetSummary()
    groups = [TotalsGroup.from_row(row) for row in rows]
    by_status: dict[str, int] = {}
    by_minor: dict[str | None, int] = {}
    for group in groups:
        by_status[group.status] = by_status.get(group.status, 0) + group.clusters
        by_minor[group.minor] = by_minor.get(group.minor, 0) + group.clusters
    return FleetSummary(
        clusters=sum(group.clusters for group in groups),
        by_status=by_status,
        by_minor_version=by_minor,
        nodes=sum(group.nodes for group in groups),
        ready_nodes=sum(group.ready_nodes for group in groups),
        cpu_capacity_cores=sum((group.cpu_capacity_cores for group in groups), Decimal(0)),
        cpu_allocatable_cores=sum((group.cpu_allocatable_cores for group in groups), Decimal(0)),
        memory_capacity_bytes=sum(group.memory_capacity_bytes for group in groups),
        memory_allocatable_bytes=sum(group.memory_allocatable_bytes for group in groups),
        credentials_expiring=int(rows[0].expiring),
    )


async def aggregate_fleet_summary(
    session: AsyncSession, where: ClusterFilter, *, expiring_before: datetime
) -> FleetSummary:
    """The header computed from the clusters themselves, in one statement: what a filtered or
    scoped header runs, and what ``fleet_totals`` must always agree with."""
    status_group = func.grouping(ClusterState.status)
    minor_group = func.grouping(_MINOR)
    query = (
        select(
            status_group.label("g_status"),
            minor_group.label("g_minor"),
            ClusterState.status,
            _MINOR.label("minor"),
            func.count().label("clusters"),
            func.coalesce(func.sum(ClusterState.node_count), 0).label("nodes"),
            func.coalesce(func.sum(ClusterState.ready_node_count), 0).label("ready_nodes"),
            func.coalesce(func.sum(ClusterState.cpu_capacity_cores), 0).label("cpu_capacity"),
            func.coalesce(func.sum(ClusterState.cpu_allocatable_cores), 0).label("cpu_alloc"),
            func.coalesce(func.sum(ClusterState.memory_capacity_bytes), 0).label("mem_capacity"),
            func.coalesce(func.sum(ClusterState.memory_allocatable_bytes), 0).label("mem_alloc"),
            func.count().filter(Cluster.credential_expires_at < expiring_before).label("expiring"),
        )
        .select_from(Cluster)
        .join(ClusterState, ClusterState.cluster_id == Cluster.id)
        .where(and_(Cluster.deleted_at.is_(None), *filter_conditions(where)))
        .group_by(func.grouping_sets(tuple_(), tuple_(ClusterState.status), tuple_(_MINOR)))
    )
    rows = (await session.execute(query)).all()
    by_status: dict[str, int] = {}
    by_minor: dict[str | None, int] = {}
    totals = None
    for row in rows:
        if row.g_status == 0:
            by_status[row.status] = row.clusters
        elif row.g_minor == 0:
            by_minor[row.minor] = row.clusters
        else:
            totals = row
    if totals is None:
        return FleetSummary()
    return FleetSummary(
        clusters=totals.clusters,
        by_status=by_status,
        by_minor_version=by_minor,
        nodes=int(totals.nodes),
        ready_nodes=int(totals.ready_nodes),
        cpu_capacity_cores=Decimal(totals.cpu_capacity),
        cpu_allocatable_cores=Decimal(totals.cpu_alloc),
        memory_capacity_bytes=int(totals.mem_capacity),
        memory_allocatable_bytes=int(totals.mem_alloc),
        credentials_expiring=totals.expiring,
    )
