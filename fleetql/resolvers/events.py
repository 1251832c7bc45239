"""Subscribing to cluster events with a filter.

The subscription is registered when the resolver is called, before anything is awaited, so a
client that subscribes and then queries (on the same websocket) sees every change committed
after its query's snapshot either in the query or as an event: nothing falls between the two.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, Self

from sqlalchemy.ext.asyncio import AsyncConnection

from fleetql.db import events as log
from fleetql.db.clusters import ClusterRecord
from fleetql.db.events import LoggedEvent
from fleetql.db.models import ClusterStatus, EventType
from fleetql.events.bus import Delivery, Subscription
from fleetql.labels import Requirement
from fleetql.resolvers.arguments import (
    parse_cluster_ids,
    parse_event_id,
    parse_selector,
    required_labels,
)
from fleetql.resolvers.context import Context
from fleetql.resolvers.errors import InvalidArgument

__all__ = [
    "DeliveryStream",
    "EventFilter",
    "coalescing_window",
    "event_filter",
    "subscribe_cluster_events",
]

MAX_FILTER_IDS = 1000
# A client further behind than this reloads instead: replaying more is slower than a query.
MAX_REPLAY = 10_000
# Coalesced subscriptions: how long a message may gather changes (milliseconds).
MIN_WINDOW_MS = 10
MAX_WINDOW_MS = 1_000


class DeliveryStream(Protocol):
    """One subscriber's deliveries: awaited one by one, or taken while they wait queued."""

    def __aiter__(self) -> Self: ...

    async def __anext__(self) -> Delivery: ...

    def next_nowait(self) -> Delivery | None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class EventFilter:
    """Every condition given must hold; an empty filter passes every event."""

    ids: frozenset[uuid.UUID] = frozenset()
    labels: tuple[tuple[str, str], ...] = ()
    selector: tuple[Requirement, ...] = ()
    statuses: frozenset[str] = frozenset()
    types: frozenset[EventType] = frozenset()

    def accepts(self, event: LoggedEvent, cluster: ClusterRecord | None) -> bool:
        if self.ids and event.cluster_id not in self.ids:
            return False
        if self.types and event.type not in self.types:
            return False
        # A cluster entering or leaving a status concerns whoever watches that status.
        if self.statuses and not (
            event.status in self.statuses or event.previous_status in self.statuses
        ):
            return False
        if self.labels or self.selector:
            if cluster is None:
                return False  # removed: its labels are gone with it; filter by id to see it
            if any(cluster.labels.get(key) != value for key, value in self.labels):
                return False
            if not all(requirement.matches(cluster.labels) for requirement in self.selector):
                return False
        return True


def event_filter(
    *,
    ids: Sequence[str] = (),
    labels: Sequence[tuple[str, str]] = (),
    label_selector: str | None = None,
    statuses: Sequence[ClusterStatus] = (),
    types: Sequence[EventType] = (),
) -> EventFilter:
    """Validate a client's filter, naming the argument at fault."""
    if len(ids) > MAX_FILTER_IDS:
        raise InvalidArgument("filter.ids", f"at most {MAX_FILTER_IDS} ids, got {len(ids)}")
    parsed_ids = parse_cluster_ids(ids, "filter.ids")
    required = required_labels(labels)
    selector = parse_selector(label_selector)
    return EventFilter(
        ids=frozenset(parsed_ids),
        labels=tuple(required.items()),
        selector=selector,
        statuses=frozenset(status.value for status in statuses),
        types=frozenset(types),
    )


def coalescing_window(window_ms: int) -> float:
    """A coalesced subscription's window in seconds, validated."""
    if not MIN_WINDOW_MS <= window_ms <= MAX_WINDOW_MS:
        raise InvalidArgument(
            "windowMs", f"must be {MIN_WINDOW_MS} to {MAX_WINDOW_MS} milliseconds, got {window_ms}"
        )
    return window_ms / 1000


async def subscribe_cluster_events(
    context: Context,
    where: EventFilter,
    *,
    after: str | None = None,
    with_clusters: bool = True,
) -> DeliveryStream:
    """Register with the bus first; then, with ``after``, replay the logged events since then.
    Live events the replay already handed over are skipped, so the seam has no gap and no
    duplicate. ``with_clusters=False`` (the client selected no ``cluster``) replays events
    without loading their clusters, unless the filter needs them."""
    bus = context.services.events
    principal = context.principal
    scoped = context.scope() is not None

    def visible(labels: Mapping[str, str] | None) -> bool:
        return principal is not None and labels is not None and principal.covers(labels)

    subscription = bus.subscribe(
        where.accepts,
        on_close=context.close_connection,
        # An unscoped viewer sees everything: skip the check.
        visible=visible if scoped else None,
    )
    if after is None:
        return subscription
    try:
        after_id = parse_event_id(after, "after")
        replay = await _events_since(context, after_id)
        # The client's label filter tells a removed cluster from a live one: that takes the
        # cluster itself. Access control only needs labels, and an unscoped viewer nothing.
        candidates: Iterable[Delivery]
        if with_clusters or where.labels or where.selector:
            candidates = await bus.deliveries(replay)
        elif scoped:
            candidates = await bus.deliveries(replay, clusters=False)
        else:
            candidates = (Delivery(event, None) for event in replay)
        deliveries = deque(d for d in candidates if subscription.accepts(d))
    except BaseException:
        await subscription.aclose()
        raise
    subscription.skip_through = replay[-1].id if replay else after_id
    return _ReplayThenLive(deliveries, subscription)


async def _replay_window(connection: AsyncConnection, after: int) -> list[LoggedEvent]:
    """The events after ``after``, one more than a replay may hold (to tell a replay that is
    too long), unless the log no longer keeps them all."""
    _, pruned_through = await log.relay_position(connection)
    if after < pruned_through:
        raise InvalidArgument(
            "after",
            f"event {after} is older than the event log keeps; "
            "reload the current state, then subscribe without `after`",
        )
    return await log.publishable_events(connection, after=after, limit=MAX_REPLAY + 1)


async def _events_since(context: Context, after: int) -> list[LoggedEvent]:
    replay = await context.read(_replay_window, after)
    if len(replay) > MAX_REPLAY:
        raise InvalidArgument(
            "after",
            f"more than {MAX_REPLAY} events since event {after}; "
            "reload the current state, then subscribe without `after`",
        )
    return replay


class _ReplayThenLive:
    """The replayed deliveries, then the live subscription's."""

    def __init__(self, replay: deque[Delivery], subscription: Subscription) -> None:
        self._replay = replay
        self._subscription = subscription

    def __aiter__(self) -> _ReplayThenLive:
        return self

    async def __anext__(self) -> Delivery:
        if self._replay:
            return self._replay.popleft()
        return await self._subscription.__anext__()

    def next_nowait(self) -> Delivery | None:
        if self._replay:
            return self._replay.popleft()
        return self._subscription.next_nowait()

    async def aclose(self) -> None:
        await self._subscription.aclose()
