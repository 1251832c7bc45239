"""Reading the event log: pages of events, newest first, with an opaque-enough cursor."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fleetql.availability import Availability, Transition, availability, is_flapping, parse_window
from fleetql.db import events as log
from fleetql.db.events import LoggedEvent
from fleetql.db.models import EventType
from fleetql.resolvers.arguments import parse_cluster_ids, parse_event_id
from fleetql.resolvers.context import Context
from fleetql.resolvers.errors import InvalidArgument

__all__ = ["MAX_PAGE", "HistoryPage", "cluster_availability", "cluster_is_flapping", "list_events"]

MAX_PAGE = 200


@dataclass(frozen=True)
class HistoryPage:
    events: list[LoggedEvent]
    has_more: bool


async def list_events(
    context: Context,
    *,
    cluster_ids: Sequence[str] = (),
    types: Sequence[EventType] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    first: int = 20,
    after: str | None = None,
) -> HistoryPage:
    if not 1 <= first <= MAX_PAGE:
        raise InvalidArgument("first", f"must be between 1 and {MAX_PAGE}")
    ids = parse_cluster_ids(cluster_ids, "filter.clusterIds")
    if since is not None and until is not None and since >= until:
        raise InvalidArgument("filter.since", "must be before filter.until")
    before_id = None if after is None else parse_event_id(after, "after")
    page = await context.read(
        log.list_events,
        cluster_ids=ids,
        types=types,
        since=since,
        until=until,
        before_id=before_id,
        first=first,
        scope=context.scope(),
    )
    return HistoryPage(events=page.items, has_more=page.has_more)


async def cluster_availability(
    context: Context, cluster_id: uuid.UUID, *, window: str, now: datetime | None = None
) -> Availability:
    """Availability over the window, from the status transitions in the event log."""
    try:
        length = parse_window(window)
    except ValueError as error:
        raise InvalidArgument("window", str(error)) from None
    now = now or datetime.now(UTC)
    start = now - length
    initial, changes = await context.read(log.status_history, cluster_id, since=start)
    return availability(
        initial=initial,
        transitions=[Transition(at=at, status=status) for at, status in changes],
        window_start=start,
        now=now,
    )


async def cluster_is_flapping(
    context: Context, cluster_id: uuid.UUID, *, now: datetime | None = None
) -> bool:
    """More status changes in the last hour than cluster_manager.flapping_threshold."""
    now = now or datetime.now(UTC)
    window = timedelta(hours=1)
    _, changes = await context.read(log.status_history, cluster_id, since=now - window)
    threshold = context.services.settings.cluster_manager.flapping_threshold
    return is_flapping(
        [Transition(at=at, status=status) for at, status in changes],
        now=now,
        window=window,
        threshold=threshold + 1,
    )
