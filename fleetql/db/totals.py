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
from typing import Any, cast

from sqlalchemy import Select, Table, Text, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY

from fleetql.db.models import FleetTotal
from fleetql.db.reads import Reader, connection_of

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


# Table columns: these are Core statements, whose rows need no ORM handling.
_T = cast(Table, FleetTotal.__table__).c
_FLEET_TOTALS: Select[*tuple[Any, ...]] = (
    select(
        _T.status,
        _T.minor,
        func.sum(_T.clusters).label("clusters"),
        func.sum(_T.nodes).label("nodes"),
        func.sum(_T.ready_nodes).label("ready_nodes"),
        func.sum(_T.cpu_capacity_cores).label("cpu_capacity_cores"),
        func.sum(_T.cpu_allocatable_cores).label("cpu_allocatable_cores"),
        func.sum(_T.memory_capacity_bytes).label("memory_capacity_bytes"),
        func.sum(_T.memory_allocatable_bytes).label("memory_allocatable_bytes"),
    )
    .group_by(_T.status, _T.minor)
    # Groups whose clusters all moved elsewhere keep their (zero) rows.
    .having(func.sum(_T.clusters) != 0)
)
# Built once: SQLAlchemy then reuses the compiled form and its result columns as they are.
_LIVE_CLUSTERS = select(func.coalesce(func.sum(_T.clusters), 0))
_LIVE_CLUSTERS_BY_STATUS = _LIVE_CLUSTERS.where(
    _T.status == any_(bindparam("statuses", type_=ARRAY(Text())))
)


def fleet_totals_query() -> Select[*tuple[Any, ...]]:
    """Every (status, minor version) that has live clusters, summed over its shards; a caller
    may add columns (read in the same snapshot) and builds ``TotalsGroup.from_row``."""
    return _FLEET_TOTALS


async def read_fleet_totals(reader: Reader) -> list[TotalsGroup]:
    """Every (status, minor version) that has live clusters."""
    connection = await connection_of(reader)
    rows = (await connection.execute(_FLEET_TOTALS)).all()
    return [TotalsGroup.from_row(row) for row in rows]


async def count_live_clusters(reader: Reader, statuses: Sequence[str] = ()) -> int:
    """How many live clusters there are (with one of ``statuses``, when given)."""
    connection = await connection_of(reader)
    if statuses:
        result = await connection.execute(_LIVE_CLUSTERS_BY_STATUS, {"statuses": list(statuses)})
    else:
        result = await connection.execute(_LIVE_CLUSTERS)
    return int(result.scalar_one())
