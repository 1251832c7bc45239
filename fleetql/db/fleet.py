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
from typing import cast

from sqlalchemy import Table, and_, case, exists, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from fleetql.db.models import Cluster, ClusterCredential, ClusterState, ClusterStatus, FleetTotal

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


# Core statements on the tables, built once: a scrape's rows need no ORM handling.
_clusters = cast(Table, Cluster.__table__)
_states = cast(Table, ClusterState.__table__)
_credentials = cast(Table, ClusterCredential.__table__)
_totals = cast(Table, FleetTotal.__table__)
_C = _clusters.c
_S = _states.c
_T = _totals.c

# Due as ``claim_due_clusters`` sees it: its time has come and nobody holds a claim.
_DUE = and_(
    _S.next_check_at <= func.now(),
    or_(_S.claimed_until.is_(None), _S.claimed_until <= func.now()),
    exists().where(_credentials.c.cluster_id == _S.cluster_id),
)
_OVERDUE = func.extract("epoch", func.now() - _S.next_check_at)

_PER_CLUSTER = (
    select(
        _C.id,
        _C.name,
        _S.status,
        _S.node_count,
        _S.ready_node_count,
        _S.cpu_allocatable_cores,
        _S.memory_allocatable_bytes,
        _C.credential_expires_at,
        # Seconds past its check time, for a due cluster; null otherwise.
        case((_DUE, _OVERDUE), else_=None).label("overdue"),
    )
    .join_from(_clusters, _states, _S.cluster_id == _C.id)
    .where(_C.deleted_at.is_(None))
    .order_by(_C.name)
)

# The totals by status come from ``fleet_totals``, which triggers keep exact in every writing
# transaction (alembic/versions/0006_fleet_totals.py), instead of a scan of every live cluster;
# the due clusters are a range of the next_check_at index. One statement, one snapshot, and at
# least one row (the due figures) even for an empty fleet.
_TOTALS_BY_STATUS = (
    select(
        _T.status,
        func.sum(_T.clusters).label("clusters"),
        func.sum(_T.nodes).label("nodes"),
        func.sum(_T.ready_nodes).label("ready_nodes"),
        func.sum(_T.cpu_allocatable_cores).label("cpu"),
        func.sum(_T.memory_allocatable_bytes).label("memory"),
    )
    .group_by(_T.status)
    # A status whose clusters all moved elsewhere keeps its (zero) rows.
    .having(func.sum(_T.clusters) != 0)
    .subquery("by_status")
)
_DUE_NOW = (
    select(func.count().label("due"), func.max(_OVERDUE).label("overdue"))
    .select_from(_states.join(_clusters, _C.id == _S.cluster_id))
    .where(_C.deleted_at.is_(None), _DUE)
    .subquery("due_now")
)
_BY_STATUS = select(
    _DUE_NOW.c.due,
    _DUE_NOW.c.overdue,
    _TOTALS_BY_STATUS.c.status,
    _TOTALS_BY_STATUS.c.clusters,
    _TOTALS_BY_STATUS.c.nodes,
    _TOTALS_BY_STATUS.c.ready_nodes,
    _TOTALS_BY_STATUS.c.cpu,
    _TOTALS_BY_STATUS.c.memory,
).select_from(_DUE_NOW.outerjoin(_TOTALS_BY_STATUS, true()))


async def fleet_figures(session: AsyncSession, *, per_cluster: bool) -> FleetFigures:
    """One statement: per cluster when ``per_cluster`` (totals are summed here), else the
    totals kept by status in ``fleet_totals``."""
    if per_cluster:
        return await _per_cluster(session)
    return await _by_status(session)


async def _per_cluster(session: AsyncSession) -> FleetFigures:
    # Core rows, not ORM ones: at 10,000 clusters the ORM's result handling costs 3 times the
    # query itself.
    connection = await session.connection()
    clusters: list[ClusterFigures] = []
    by_status = {status.value: 0 for status in ClusterStatus}
    due, oldest = 0, 0.0
    for row in await connection.execute(_PER_CLUSTER):
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
    connection = await session.connection()
    rows = (await connection.execute(_BY_STATUS)).all()
    by_status = {status.value: 0 for status in ClusterStatus}
    groups = [row for row in rows if row.status is not None]
    for row in groups:
        by_status[row.status] = int(row.clusters)
    due, overdue = rows[0].due, rows[0].overdue
    return FleetFigures(
        by_status=by_status,
        nodes=sum(int(row.nodes) for row in groups),
        ready_nodes=sum(int(row.ready_nodes) for row in groups),
        cpu_allocatable_cores=sum((Decimal(row.cpu) for row in groups), Decimal(0)),
        memory_allocatable_bytes=sum(int(row.memory) for row in groups),
        due=int(due),
        oldest_due_seconds=float(overdue) if overdue else 0.0,
        clusters=[],
    )
