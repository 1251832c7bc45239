"""The fleet as monitoring sees it: clusters by status, each cluster's figures, and the poller's
backlog, read in one statement per scrape.

Read from PostgreSQL rather than from what this process checked, so every replica reports the
same fleet. No credential column is ever selected.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, and_, case, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetql.db.models import Cluster, ClusterCredential, ClusterState, ClusterStatus

__all__ = ["ClusterFigures", "FleetFigures", "fleet_figures"]


@dataclass(frozen=True, slots=True)
class ClusterFigures:
    """One live cluster's latest figures (None: not known yet)."""

    id: uuid.UUID
    name: str
    status: str
    node_count: int | None
    ready_node_count: int | None
    cpu_allocatable_cores: Decimal | None
    memory_allocatable_bytes: int | None
    credential_expires_at: datetime | None


@dataclass(frozen=True)
class FleetFigures:
    """Totals over live clusters, the checks due now, and (if asked) every cluster."""

    by_status: dict[str, int] = field(default_factory=dict)
    nodes: int = 0
    ready_nodes: int = 0
    cpu_allocatable_cores: Decimal = Decimal(0)
    memory_allocatable_bytes: int = 0
    # Clusters due for a check that no poller has claimed, and how overdue the oldest is.
    due: int = 0
    oldest_due_seconds: float = 0.0
    clusters: list[ClusterFigures] = field(default_factory=list)


def _due() -> ColumnElement[bool]:
    """Due as ``claim_due_clusters`` sees it: its time has come and nobody holds a claim."""
    return and_(
        ClusterState.next_check_at <= func.now(),
        or_(ClusterState.claimed_until.is_(None), ClusterState.claimed_until <= func.now()),
        exists().where(ClusterCredential.cluster_id == ClusterState.cluster_id),
    )


_OVERDUE = func.extract("epoch", func.now() - ClusterState.next_check_at)


async def fleet_figures(session: AsyncSession, *, per_cluster: bool) -> FleetFigures:
    """One statement: per cluster when ``per_cluster`` (totals are summed here), else grouped
    by status in PostgreSQL."""
    if per_cluster:
        return await _per_cluster(session)
    return await _by_status(session)


async def _per_cluster(session: AsyncSession) -> FleetFigures:
    query = (
        select(
            Cluster.id,
            Cluster.name,
            ClusterState.status,
            ClusterState.node_count,
            ClusterState.ready_node_count,
            ClusterState.cpu_allocatable_cores,
            ClusterState.memory_allocatable_bytes,
            Cluster.credential_expires_at,
            # Seconds past its check time, for a due cluster; null otherwise.
            case((_due(), _OVERDUE), else_=None).label("overdue"),
        )
        .join(ClusterState, ClusterState.cluster_id == Cluster.id)
        .where(Cluster.deleted_at.is_(None))
        .order_by(Cluster.name)
    )
    # Core rows, not ORM ones: at 10,000 clusters the ORM's result handling costs 3 times the
    # query itself.
    connection = await session.connection()
    clusters: list[ClusterFigures] = []
    by_status = {status.value: 0 for status in ClusterStatus}
    due, oldest = 0, 0.0
    for row in await connection.execute(query):
        *figures, overdue = row
        cluster = ClusterFigures(*figures)
        clusters.append(cluster)
        by_status[cluster.status] = by_status.get(cluster.status, 0) + 1
        if overdue is not None:
            due += 1
            oldest = max(oldest, float(overdue))
    return FleetFigures(
        by_status=by_status,
        nodes=sum(c.node_count or 0 for c in clusters),
        ready_nodes=sum(c.ready_node_count or 0 for c in clusters),
        cpu_allocatable_cores=sum(
            (c.cpu_allocatable_cores or Decimal(0) for c in clusters), Decimal(0)
        ),
        memory_allocatable_bytes=sum(c.memory_allocatable_bytes or 0 for c in clusters),
        due=due,
        oldest_due_seconds=oldest,
        clusters=clusters,
    )


async def _by_status(session: AsyncSession) -> FleetFigures:
    due = _due()
    query = (
        select(
            ClusterState.status,
            func.count().label("clusters"),
            func.coalesce(func.sum(ClusterState.node_count), 0).label("nodes"),
            func.coalesce(func.sum(ClusterState.ready_node_count), 0).label("ready_nodes"),
            func.coalesce(func.sum(ClusterState.cpu_allocatable_cores), 0).label("cpu"),
            func.coalesce(func.sum(ClusterState.memory_allocatable_bytes), 0).label("memory"),
            func.count().filter(due).label("due"),
            func.max(_OVERDUE).filter(due).label("overdue"),
        )
        .select_from(Cluster)
        .join(ClusterState, ClusterState.cluster_id == Cluster.id)
        .where(Cluster.deleted_at.is_(None))
        .group_by(ClusterState.status)
    )
    rows = (await session.execute(query)).all()
    by_status = {status.value: 0 for status in ClusterStatus}
    for row in rows:
        by_status[row.status] = row.clusters
    return FleetFigures(
        by_status=by_status,
        nodes=sum(int(row.nodes) for row in rows),
        ready_nodes=sum(int(row.ready_nodes) for row in rows),
        cpu_allocatable_cores=sum((Decimal(row.cpu) for row in rows), Decimal(0)),
        memory_allocatable_bytes=sum(int(row.memory) for row in rows),
        due=sum(row.due for row in rows),
        oldest_due_seconds=max((float(row.overdue) for row in rows if row.overdue), default=0.0),
        clusters=[],
    )
