"""Reading the event log: pages of events, newest first, with an opaque-enough cursor."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from fleetql.db import events as log
from fleetql.db.events import LoggedEvent
from fleetql.db.models import EventType
from fleetql.resolvers.context import Context
from fleetql.resolvers.errors import InvalidArgument
from fleetql.resolvers.events import parse_event_id

__all__ = ["MAX_PAGE", "HistoryPage", "list_events"]

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
    ids: list[uuid.UUID] = []
    for index, value in enumerate(cluster_ids):
        try:
            ids.append(uuid.UUID(value))
        except ValueError:
            raise InvalidArgument(
                f"filter.clusterIds[{index}]", f"{value[:64]!r} is not a cluster id (a UUID)"
            ) from None
    if since is not None and until is not None and since >= until:
        raise InvalidArgument("filter.since", "must be before filter.until")
    before_id = None if after is None else parse_event_id(after, "after")
    async with context.services.sessions() as session:
        page = await log.list_events(
            session,
            cluster_ids=ids,
            types=types,
            since=since,
            until=until,
            before_id=before_id,
            first=first,
        )
    return HistoryPage(events=page.items, has_more=page.has_more)
