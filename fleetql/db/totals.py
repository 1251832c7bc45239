"""Fleet-wide totals read from ``fleet_totals``, which triggers keep current in every writing
transaction (alembic/versions/0006_fleet_totals.py).

Reading a few dozen rows instead of aggregating every live cluster keeps the dashboard header and
the unfiltered ``total`` cheap at 100,000 clusters, and exact: a client that has just imported a
cluster counts it in its next read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetql.db.models import FleetTotal

__all__ = ["TotalsGroup", "count_live_clusters", "fleet_totals_query", "read_fleet_totals"]


@dataclass(frozen=True, slots=True)
class TotalsGroup:
    """The live clusters of one status and Kubernetes minor version (None: not known)."""

    status: str
    minor: str | None
    clusters: int
    nodes: int
    ready_nodes: int
    cpu_capacity_cores: Decimal
    cpu_allocatable_cores: Decimal
    memory_capacity_bytes: int
    memory_allocatable_bytes: int

    @classmethod
    def from_row(cls, row: Any) -> TotalsGroup:
        return cls(
            status=row.status,
            minor=row.minor or None,
            clusters=int(row.clusters),
            nodes=int(row.nodes),
            ready_nodes=int(row.ready_nodes),
            cpu_capacity_cores=Decimal(row.cpu_capacity_cores),
            cpu_allocatable_cores=Decimal(row.cpu_allocatable_cores),
            memory_capacity_bytes=int(row.memory_capacity_bytes),
            memory_allocatable_bytes=int(row.memory_allocatable_bytes),
        )


def fleet_totals_query() -> Select[*tuple[Any, ...]]:
    """Every (status, minor version) that has live clusters, summed over its shards; a caller
    may add columns (read in the same snapshot) and builds ``TotalsGroup.from_row``."""
    query: Select[*tuple[Any, ...]] = (
        select(
            FleetTotal.status,
            FleetTotal.minor,
            func.sum(FleetTotal.clusters).label("clusters"),
            func.sum(FleetTotal.nodes).label("nodes"),
            func.sum(FleetTotal.ready_nodes).label("ready_nodes"),
            func.sum(FleetTotal.cpu_capacity_cores).label("cpu_capacity_cores"),
            func.sum(FleetTotal.cpu_allocatable_cores).label("cpu_allocatable_cores"),
            func.sum(FleetTotal.memory_capacity_bytes).label("memory_capacity_bytes"),
            func.sum(FleetTotal.memory_allocatable_bytes).label("memory_allocatable_bytes"),
        )
        .group_by(FleetTotal.status, FleetTotal.minor)
        # Groups whose clusters all moved elsewhere keep their (zero) rows.
        .having(func.sum(FleetTotal.clusters) != 0)
    )
    return query


async def read_fleet_totals(session: AsyncSession) -> list[TotalsGroup]:
    """Every (status, minor version) that has live clusters."""
    rows = (await session.execute(fleet_totals_query())).all()
    return [TotalsGroup.from_row(row) for row in rows]


async def count_live_clusters(session: AsyncSession, statuses: Sequence[str] = ()) -> int:
    """How many live clusters there are (with one of ``statuses``, when given)."""
    query = select(func.coalesce(func.sum(FleetTotal.clusters), 0))
    if statuses:
        query = query.where(FleetTotal.status.in_(list(statuses)))
    return int((await session.execute(query)).scalar_one())
