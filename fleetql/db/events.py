"""The event log: written in the transaction of each change, read by the relay, the API and
resuming subscribers.

Ids come from a sequence, and a plain sequence lets a transaction commit id n after another
committed n + 1: a reader that had moved past n + 1 would never see n. So writers take a
transaction-level advisory lock just before they log, as the last step before commit: ids are
then handed out in commit order, and "every event after id N" is a complete answer at any time.
The lock is held for the insert and the commit only, and only by transactions that log events
(changes are rare next to checks).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    Insert,
    Integer,
    Select,
    Table,
    any_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from fleetql.db.clusters import ScopeKey, scope_condition, scope_key
from fleetql.db.models import Cluster, ClusterEventRecord, EventRelayPosition, EventType
from fleetql.db.reads import Reader, connection_of
from fleetql.labels import Requirement

__all__ = [
    "EventPage",
    "LoggedEvent",
    "NewEvent",
    "events_by_id",
    "latest_event_id",
    "list_events",
    "log_events",
    "prune_events",
    "publishable_events",
    "relay_position",
    "set_relay_position",
    "status_history",
]

# pg_advisory_xact_lock key: "fleetql log" as a number.
LOG_LOCK = 0x666C6565_746C6F67


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to log; ``changes`` maps a field to its old and new value (no secrets)."""

    cluster_id: uuid.UUID
    type: EventType
    status: str | None
    previous_status: str | None = None
    changes: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    message: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    id: int
    cluster_id: uuid.UUID
    type: EventType
    previous_status: str | None
    status: str | None
    changes: dict[str, list[Any]]
    message: str
    actor: str | None
    at: datetime


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


_LOGGED_COLUMNS = (
    "cluster_id",
    "type",
    "previous_status",
    "status",
    "changes",
    "message",
    "actor",
)


def _insert_under_log_lock() -> Insert:
    """``INSERT INTO cluster_events (…) SELECT :cluster_id, … FROM (SELECT
    pg_advisory_xact_lock(…)) AS log_lock``: the lock and the insert in one round trip. The lock
    is taken before the row, and so before its id, comes out of the subquery (a subquery with a
    volatile function is never flattened); it is re-entrant, so each row of an executemany
    takes it again harmlessly. Built once: its compiled form is cached, and it goes through no
    ORM bulk-insert machinery (the poller logs in a check's transaction)."""
    table = cast(Table, ClusterEventRecord.__table__)
    log_lock = select(func.pg_advisory_xact_lock(LOG_LOCK).label("locked")).subquery("log_lock")
    row = select(*(bindparam(name, type_=table.c[name].type) for name in _LOGGED_COLUMNS))
    return insert(table).from_select(_LOGGED_COLUMNS, row.select_from(log_lock))


_LOG_EVENTS = _insert_under_log_lock()


async def log_events(session: AsyncSession, events: Sequence[NewEvent]) -> None:
    """Insert ``events`` in the caller's transaction (one statement). The caller commits at once:
    the log's lock is held until then."""
    if not events:
        return
    connection = await session.connection()
    await connection.execute(
        _LOG_EVENTS,
        [
            {
                "cluster_id": event.cluster_id,
                "type": event.type.value,
                "previous_status": event.previous_status,
                "status": event.status,
                "changes": {
                    name: [_jsonable(old), _jsonable(new)]
                    for name, (old, new) in event.changes.items()
                },
                "message": event.message,
                "actor": event.actor,
            }
            for event in events
        ],
    )


# Columns rather than ORM objects: a replay reads up to 10,000 events, and building an ORM
# instance per row cost more than the statement. The reads are Core statements on the table,
# built once (per shape, for lists) with their values bound at execution: building a statement
# per call cost more CPU than running it.
_log = cast(Table, ClusterEventRecord.__table__)
_E = _log.c
_EVENT_COLUMNS = (
    _E.id,
    _E.cluster_id,
    _E.type,
    _E.previous_status,
    _E.status,
    _E.changes,
    _E.message,
    _E.actor,
    _E.at,
)
_EVENTS: Select[*tuple[Any, ...]] = select(*_EVENT_COLUMNS)
_LIMIT = bindparam("limit", type_=Integer())
_PUBLISHABLE = (
    _EVENTS.where(_E.id > bindparam("after", type_=_E.id.type)).order_by(_E.id).limit(_LIMIT)
)
_EVENTS_BY_ID = _EVENTS.where(_E.id == any_(bindparam("ids", type_=ARRAY(_E.id.type))))


def _to_event(row: Any) -> LoggedEvent:
    event_id, cluster_id, event_type, previous_status, status, changes, message, actor, at = row
    return LoggedEvent(
        id=event_id,
        cluster_id=cluster_id,
        type=EventType(event_type),
        previous_status=previous_status,
        status=status,
        changes=changes,
        message=message,
        actor=actor,
        at=at,
    )


async def publishable_events(reader: Reader, *, after: int, limit: int = 500) -> list[LoggedEvent]:
    """Events after ``after``, oldest first: no event with a smaller id can commit later."""
    connection = await connection_of(reader)
    rows = await connection.execute(_PUBLISHABLE, {"after": after, "limit": limit})
    return [_to_event(row) for row in rows.all()]


async def events_by_id(reader: Reader, ids: Sequence[int]) -> dict[int, LoggedEvent]:
    if not ids:
        return {}
    connection = await connection_of(reader)
    rows = await connection.execute(_EVENTS_BY_ID, {"ids": list(ids)})
    return {event.id: event for event in map(_to_event, rows.all())}


@dataclass(frozen=True)
class EventPage:
    items: list[LoggedEvent]
    has_more: bool


async def list_events(
    reader: Reader,
    *,
    cluster_ids: Sequence[uuid.UUID] = (),
    types: Sequence[EventType] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    first: int = 50,
    scope: Sequence[Sequence[Requirement]] | None = None,
) -> EventPage:
    """Newest first; ``before_id`` continues after the last event of the previous page.
    With ``scope``, only events of clusters (removed ones too) within it."""
    query = _events_page(
        None if scope is None else scope_key(scope),
        cluster_ids=bool(cluster_ids),
        types=bool(types),
        since=since is not None,
        until=until is not None,
        before_id=before_id is not None,
    )
    params: dict[str, Any] = {"limit": first + 1}
    if cluster_ids:
        params["cluster_ids"] = list(cluster_ids)
    if types:
        params["types"] = [t.value for t in types]
    if since is not None:
        params["since"] = since
    if until is not None:
        params["until"] = until
    if before_id is not None:
        params["before_id"] = before_id
    connection = await connection_of(reader)
    rows = (await connection.execute(query, params)).all()
    return EventPage(items=[_to_event(row) for row in rows[:first]], has_more=len(rows) > first)


@functools.lru_cache(maxsize=256)
def _events_page(
    scope: ScopeKey | None,
    *,
    cluster_ids: bool,
    types: bool,
    since: bool,
    until: bool,
    before_id: bool,
) -> Select[*tuple[Any, ...]]:
    """A page of ``list_events`` with the conditions it has, built once per combination (and
    scope: the scope's selectors are part of the statement); the values are bound."""
    query = _EVENTS.order_by(_E.id.desc()).limit(_LIMIT)
    if scope is not None:
        clusters = cast(Table, Cluster.__table__)
        query = query.join(clusters, clusters.c.id == _E.cluster_id).where(scope_condition(scope))
    if cluster_ids:
        query = query.where(
            _E.cluster_id == any_(bindparam("cluster_ids", type_=ARRAY(_E.cluster_id.type)))
        )
    if types:
        query = query.where(_E.type == any_(bindparam("types", type_=ARRAY(_E.type.type))))
    if since:
        query = query.where(_E.at >= bindparam("since", type_=_E.at.type))
    if until:
        query = query.where(_E.at < bindparam("until", type_=_E.at.type))
    if before_id:
        query = query.where(_E.id < bindparam("before_id", type_=_E.id.type))
    return query


_LATEST_EVENT_ID = select(func.coalesce(func.max(_E.id), 0))


async def latest_event_id(reader: Reader) -> int:
    """The newest committed event's id (0 for an empty log)."""
    connection = await connection_of(reader)
    return int(await connection.scalar(_LATEST_EVENT_ID) or 0)


_RELAY_POSITION = select(EventRelayPosition.last_event_id, EventRelayPosition.pruned_through)


async def relay_position(reader: Reader) -> tuple[int, int]:
    """(last published id, pruned through id)."""
    connection = await connection_of(reader)
    row = (await connection.execute(_RELAY_POSITION)).one()
    return int(row[0]), int(row[1])


async def set_relay_position(session: AsyncSession, last_event_id: int) -> None:
    await session.execute(
        update(EventRelayPosition)
        .where(EventRelayPosition.last_event_id < last_event_id)
        .values(last_event_id=last_event_id)
    )


async def prune_events(session: AsyncSession, *, older_than: datetime, batch: int = 1000) -> int:
    """Delete one batch of events older than ``older_than``; returns how many. The caller commits
    and calls again until it returns 0, so no statement holds many locks for long."""
    doomed = (
        select(ClusterEventRecord.id)
        .where(ClusterEventRecord.at < older_than)
        .order_by(ClusterEventRecord.id)
        .limit(batch)
    )
    deleted = (
        await session.scalars(
            delete(ClusterEventRecord)
            .where(ClusterEventRecord.id.in_(doomed.scalar_subquery()))
            .returning(ClusterEventRecord.id)
        )
    ).all()
    if deleted:
        await session.execute(
            update(EventRelayPosition)
            .where(EventRelayPosition.pruned_through < max(deleted))
            .values(pruned_through=max(deleted))
        )
    return len(deleted)


_STATUS_TYPES = (EventType.IMPORTED.value, EventType.STATUS_CHANGED.value)


_STATUS_CHANGES = select(_E.at, _E.status).where(
    _E.cluster_id == bindparam("cluster_id", type_=_E.cluster_id.type),
    _E.type == any_(bindparam("types", type_=ARRAY(_E.type.type))),
    _E.status.is_not(None),
)
_SINCE = bindparam("since", type_=_E.at.type)
_STATUS_BEFORE = _STATUS_CHANGES.where(_E.at < _SINCE).order_by(_E.id.desc()).limit(1)
_STATUSES_SINCE = _STATUS_CHANGES.where(_E.at >= _SINCE).order_by(_E.id)


async def status_history(
    reader: Reader, cluster_id: uuid.UUID, *, since: datetime
) -> tuple[str | None, list[tuple[datetime, str]]]:
    """The status in force at ``since`` (None if the log has nothing earlier) and every status
    transition after it, oldest first (an import counts as the transition to UNKNOWN)."""
    connection = await connection_of(reader)
    params = {"cluster_id": cluster_id, "types": list(_STATUS_TYPES), "since": since}
    initial = (await connection.execute(_STATUS_BEFORE, params)).first()
    rows = await connection.execute(_STATUSES_SINCE, params)
    return (
        None if initial is None else str(initial.status),
        [(at, str(status)) for at, status in rows.all()],
    )
