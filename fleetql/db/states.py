"""The poller's side of the database: claiming due clusters and recording what a check saw.

Claims use ``FOR UPDATE SKIP LOCKED`` and push the claimed rows' ``next_check_at`` forward by a
lease, in one statement: replicas sharing a database never claim the same cluster, and a replica
that dies mid-check leaves clusters that simply become due again when the lease runs out.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Integer,
    Interval,
    Table,
    Update,
    bindparam,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from fleetql.db.events import NewEvent, log_events
from fleetql.db.models import Cluster, ClusterCredential, ClusterState, EventType

# The fields whose change a user cares about: a change in any of them is an event.
WATCHED_FIELDS = (
    "status",
    "node_count",
    "ready_node_count",
    "cpu_capacity_cores",
    "cpu_allocatable_cores",
    "memory_capacity_bytes",
    "memory_allocatable_bytes",
    "kubernetes_version",
    "last_error_code",
    "last_error_message",
)


@dataclass(frozen=True)
class DueCluster:
    id: uuid.UUID
    name: str
    kubeconfig_ciphertext: bytes
    kubeconfig_key_id: str
    kubeconfig_format: int
    status: str
    consecutive_failures: int
    last_checked_at: datetime | None
    pending_status: str | None = None
    pending_count: int = 0


@dataclass(frozen=True)
class StateChange:
    """What a check changed, handed to the event publisher once the transaction committed."""

    cluster_id: uuid.UUID
    previous_status: str
    status: str
    changed_fields: tuple[str, ...]
    at: datetime


# Core statements on the tables, built once (or once per shape) with bound parameters: their
# compiled form is cached, and none goes through the ORM's update machinery. Each check runs one.
_clusters = cast(Table, Cluster.__table__)
_credentials = cast(Table, ClusterCredential.__table__)
_states = cast(Table, ClusterState.__table__)
_STATE_COLUMNS = frozenset(_states.c.keys())


def _claim_statement() -> Update:
    due = (
        select(_states.c.cluster_id)
        .join(_clusters, _clusters.c.id == _states.c.cluster_id)
        # Only a cluster with credentials can be checked (a removed one has none).
        .join(_credentials, _credentials.c.cluster_id == _states.c.cluster_id)
        .where(
            _states.c.next_check_at <= func.now(),
            or_(_states.c.claimed_until.is_(None), _states.c.claimed_until <= func.now()),
            _clusters.c.deleted_at.is_(None),
        )
        .order_by(_states.c.next_check_at)
        .limit(bindparam("limit", type_=Integer()))
        .with_for_update(of=_states, skip_locked=True)
        .cte("due")
    )
    lease_ends = func.now() + bindparam("lease", type_=Interval())
    return (
        update(_states)
        .where(
            _states.c.cluster_id == due.c.cluster_id,
            _clusters.c.id == _states.c.cluster_id,
            _credentials.c.cluster_id == _states.c.cluster_id,
        )
        .values(next_check_at=lease_ends, claimed_until=lease_ends)
        .returning(
            _clusters.c.id,
            _clusters.c.name,
            _credentials.c.kubeconfig_ciphertext,
            _credentials.c.kubeconfig_key_id,
            _credentials.c.kubeconfig_format,
            _states.c.status,
            _states.c.consecutive_failures,
            _states.c.last_checked_at,
            _states.c.pending_status,
            _states.c.pending_count,
        )
    )


_CLAIM = _claim_statement()


async def claim_due_clusters(
    session: AsyncSession, *, limit: int, lease: timedelta
) -> list[DueCluster]:
    """Claim up to ``limit`` due clusters for this process for ``lease``; the caller commits."""
    connection = await session.connection()
    rows = await connection.execute(_CLAIM, {"limit": limit, "lease": lease})
    return [DueCluster(**row._mapping) for row in rows.all()]


@functools.lru_cache(maxsize=64)
def _record_statement(columns: tuple[str, ...], heartbeat: bool) -> Update:
    """The UPDATE for one shape of check result (which columns it sets, and whether it is a
    heartbeat): a handful of shapes, each built and compiled once."""
    old = (
        select(_states)
        .where(
            _states.c.cluster_id == bindparam("id", type_=_states.c.cluster_id.type),
            exists().where(
                _clusters.c.id == bindparam("id", type_=_clusters.c.id.type),
                _clusters.c.deleted_at.is_(None),
            ),
        )
        .with_for_update()
        .cte("old")
    )
    now = func.now()
    return (
        update(_states)
        .where(_states.c.cluster_id == old.c.cluster_id)
        .values(
            **{name: bindparam(f"new_{name}", type_=_states.c[name].type) for name in columns},
            **({"last_heartbeat_at": now} if heartbeat else {}),
            last_checked_at=now,
            next_check_at=now + bindparam("next_check_in", type_=Interval()),
            claimed_until=None,
            updated_at=now,
        )
        .returning(
            now.label("at"),
            *(old.c[name].label(f"old_{name}") for name in WATCHED_FIELDS),
            old.c.consecutive_failures.label("old_consecutive_failures"),
        )
    )


async def record_check(
    session: AsyncSession,
    cluster_id: uuid.UUID,
    values: Mapping[str, Any],
    *,
    next_check_in: timedelta,
    heartbeat: bool,
) -> StateChange | None:
    """Write a check's result in one statement; return the change, if any field a user cares
    about changed. ``heartbeat`` marks a successful check. A cluster removed meanwhile is left
    alone. The caller commits."""
    columns = tuple(sorted(values))
    unknown = set(columns) - _STATE_COLUMNS
    if unknown:
        raise ValueError(f"cluster_states has no column {', '.join(sorted(unknown))}")
    params: dict[str, Any] = {f"new_{name}": values[name] for name in columns}
    params |= {"id": cluster_id, "next_check_in": next_check_in}
    connection = await session.connection()
    result = await connection.execute(_record_statement(columns, heartbeat), params)
    row = result.first()
    if row is None:
        return None
    previous = {name: row._mapping[f"old_{name}"] for name in WATCHED_FIELDS}
    changed = tuple(
        name for name in WATCHED_FIELDS if name in values and values[name] != previous[name]
    )
    await log_events(
        session,
        check_events(
            cluster_id,
            previous,
            values,
            changed,
            failures_before=row.old_consecutive_failures,
            succeeded=heartbeat,
        ),
    )
    if not changed:
        return None
    return StateChange(
        cluster_id=cluster_id,
        previous_status=previous["status"],
        status=values.get("status", previous["status"]),
        changed_fields=changed,
        at=row.at,
    )


_NODE_FIELDS = frozenset(
    {
        "node_count",
        "ready_node_count",
        "cpu_capacity_cores",
        "cpu_allocatable_cores",
        "memory_capacity_bytes",
        "memory_allocatable_bytes",
    }
)


def check_events(
    cluster_id: uuid.UUID,
    previous: Mapping[str, Any],
    values: Mapping[str, Any],
    changed: tuple[str, ...],
    *,
    failures_before: int,
    succeeded: bool,
) -> list[NewEvent]:
    """The log entries one check writes: what changed (status first, else version, else nodes),
    and the start or end of a failure streak, once each."""
    before = previous["status"]
    after = values.get("status", before)
    changes = {name: (previous[name], values[name]) for name in changed}
    events: list[NewEvent] = []

    def event(kind: EventType, message: str) -> NewEvent:
        return NewEvent(
            cluster_id=cluster_id,
            type=kind,
            previous_status=before,
            status=after,
            changes=changes,
            message=message,
        )

    if "status" in changed:
        events.append(event(EventType.STATUS_CHANGED, f"status {before} → {after}"))
    elif "kubernetes_version" in changed:
        old, new = changes["kubernetes_version"]
        events.append(event(EventType.VERSION_CHANGED, f"Kubernetes {old} → {new}"))
    elif _NODE_FIELDS.intersection(changed):
        ready, total = values.get("ready_node_count"), values.get("node_count")
        events.append(event(EventType.NODES_CHANGED, f"{ready} of {total} nodes Ready"))
    if not succeeded and failures_before == 0:
        code = values.get("last_error_code") or "ERROR"
        events.append(event(EventType.CHECK_FAILED, f"check failed: {code}"))
    elif succeeded and failures_before > 0:
        events.append(
            event(EventType.RECOVERED, f"check succeeded after {failures_before} failures")
        )
    return events


async def request_checks(session: AsyncSession, where: Sequence[Any]) -> int:
    """Make the live clusters matching ``where`` due now; returns how many. One being checked
    right now is left to that check (its claim stops a second one). The caller commits."""
    statement = (
        update(ClusterState)
        .where(
            ClusterState.cluster_id == Cluster.id,
            Cluster.deleted_at.is_(None),
            exists().where(ClusterCredential.cluster_id == Cluster.id),
            *where,
        )
        .values(next_check_at=func.least(ClusterState.next_check_at, func.now()))
        .returning(ClusterState.cluster_id)
    )
    return len((await session.execute(statement)).all())


_RELEASE = (
    update(_states)
    .where(
        _states.c.cluster_id.in_(bindparam("cluster_ids", expanding=True)),
        _states.c.claimed_until.is_not(None),
    )
    .values(claimed_until=None, next_check_at=func.now())
    .returning(_states.c.cluster_id)
)


async def release_claims(session: AsyncSession, cluster_ids: Sequence[uuid.UUID]) -> int:
    """Give back claims a stopping poller holds on checks it will not finish, due now, so another
    replica checks them at once instead of after the lease; returns how many. A claim that a
    finished check already cleared is left alone. The caller commits."""
    if not cluster_ids:
        return 0
    connection = await session.connection()
    released = await connection.execute(_RELEASE, {"cluster_ids": list(cluster_ids)})
    return len(released.all())
