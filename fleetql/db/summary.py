"""The dashboard header: totals by status and by Kubernetes minor version.

The whole fleet's header (no filter, no access scope) is read from ``fleet_totals``, which
triggers keep exact in every writing transaction, with one index range for the credentials
expiring soon in the same statement (that depends on now(), so it cannot be kept). Any filter
or scope aggregates the matching clusters in one statement: GROUPING SETS answers the overall
totals, the per-status counts and the per-version counts in a single scan.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Select, Table, and_, bindparam, func, literal_column, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetql.db.clusters import (
    ClusterFilter,
    FilterShape,
    counts_from_totals,
    filter_params,
    shape_conditions,
)
from fleetql.db.models import Cluster, ClusterState
from fleetql.db.reads import Reader, connection_of
from fleetql.db.totals import TotalsGroup, fleet_totals_query

__all__ = ["FleetSummary", "aggregate_fleet_summary", "fleet_summary"]

# Core statements on the tables: rows that are summed here need no ORM handling.
_clusters = cast(Table, Cluster.__table__)
_states = cast(Table, ClusterState.__table__)
_C = _clusters.c
_S = _states.c

# "v1.28.7" and "v1.29.0-eks-1234" → "v1.28" / "v1.29"; null stays null (never checked).
# (A literal pattern, not a bound parameter: GROUP BY and GROUPING must see the same expression.)
_MINOR = func.substring(_S.kubernetes_version, literal_column("'^v?[0-9]+[.][0-9]+'"))


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
    reader: Reader, where: ClusterFilter, *, expiring_before: datetime
) -> FleetSummary:
    """The header of the live clusters matching ``where``."""
    connection = await connection_of(reader)
    if counts_from_totals(where) and not where.statuses:
        return await _summary_from_totals(connection, expiring_before=expiring_before)
    return await aggregate_fleet_summary(connection, where, expiring_before=expiring_before)


@functools.lru_cache(maxsize=256)
def _aggregate_statement(shape: FilterShape) -> Select[*tuple[Any, ...]]:
    """The aggregate of the clusters matching a filter of ``shape``, built once per shape;
    executed with the filter's values and ``expiring_before``."""
    status_group = func.grouping(_S.status)
    minor_group = func.grouping(_MINOR)
    expiring_before = bindparam("expiring_before", type_=_C.credential_expires_at.type)
    query: Select[*tuple[Any, ...]] = (
        select(
            status_group.label("g_status"),
            minor_group.label("g_minor"),
            _S.status,
            _MINOR.label("minor"),
            func.count().label("clusters"),
            func.coalesce(func.sum(_S.node_count), 0).label("nodes"),
            func.coalesce(func.sum(_S.ready_node_count), 0).label("ready_nodes"),
            func.coalesce(func.sum(_S.cpu_capacity_cores), 0).label("cpu_capacity"),
            func.coalesce(func.sum(_S.cpu_allocatable_cores), 0).label("cpu_alloc"),
            func.coalesce(func.sum(_S.memory_capacity_bytes), 0).label("mem_capacity"),
            func.coalesce(func.sum(_S.memory_allocatable_bytes), 0).label("mem_alloc"),
            func.count().filter(_C.credential_expires_at < expiring_before).label("expiring"),
        )
        .select_from(_clusters)
        .join(_states, _S.cluster_id == _C.id)
        .where(and_(_C.deleted_at.is_(None), *shape_conditions(shape)))
        .group_by(func.grouping_sets(tuple_(), tuple_(_S.status), tuple_(_MINOR)))
    )
    return query


# The fleet's totals with the credentials expiring before ``expiring_before`` as a column: one
# statement, one snapshot.
_SUMMARY_FROM_TOTALS = fleet_totals_query().add_columns(
    select(func.count())
    .select_from(_clusters)
    .where(
        _C.deleted_at.is_(None),
        _C.credential_expires_at
        < bindparam("expiring_before", type_=_C.credential_expires_at.type),
    )
    .scalar_subquery()
    .label("expiring")
)


async def _summary_from_totals(
    connection: AsyncConnection, *, expiring_before: datetime
) -> FleetSummary:
    result = await connection.execute(_SUMMARY_FROM_TOTALS, {"expiring_before": expiring_before})
    rows = result.all()
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
    reader: Reader, where: ClusterFilter, *, expiring_before: datetime
) -> FleetSummary:
    """The header computed from the clusters themselves, in one statement: what a filtered or
    scoped header runs, and what ``fleet_totals`` must always agree with."""
    connection = await connection_of(reader)
    params = {**filter_params(where), "expiring_before": expiring_before}
    rows = (await connection.execute(_aggregate_statement(FilterShape.of(where)), params)).all()
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
