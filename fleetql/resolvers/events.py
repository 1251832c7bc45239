"""Subscribing to cluster events with a filter.

The subscription is registered when the resolver is called, before anything is awaited, so a
client that subscribes and then queries (on the same websocket) sees every change committed
after its query's snapshot either in the query or as an event: nothing falls between the two.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from fleetql.db.clusters import ClusterRecord
from fleetql.db.models import ClusterStatus
from fleetql.events.bus import Subscription
from fleetql.events.model import ClusterEvent
from fleetql.labels import (
    LabelError,
    Requirement,
    SelectorError,
    parse_label_selector,
    validate_label_key,
)
from fleetql.resolvers.context import Context
from fleetql.resolvers.errors import InvalidArgument

__all__ = ["EventFilter", "event_filter", "subscribe_cluster_events"]

MAX_FILTER_IDS = 1000


@dataclass(frozen=True)
class EventFilter:
    """Every condition given must hold; an empty filter passes every event."""

    ids: frozenset[uuid.UUID] = frozenset()
    labels: tuple[tuple[str, str], ...] = ()
    selector: tuple[Requirement, ...] = ()
    statuses: frozenset[str] = frozenset()

    def accepts(self, event: ClusterEvent, cluster: ClusterRecord | None) -> bool:
        if self.ids and event.cluster_id not in self.ids:
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
) -> EventFilter:
    """Validate a client's filter, naming the argument at fault."""
    if len(ids) > MAX_FILTER_IDS:
        raise InvalidArgument("filter.ids", f"at most {MAX_FILTER_IDS} ids, got {len(ids)}")
    parsed_ids: set[uuid.UUID] = set()
    for index, value in enumerate(ids):
        try:
            parsed_ids.add(uuid.UUID(value))
        except ValueError:
            raise InvalidArgument(
                f"filter.ids[{index}]", f"{value[:64]!r} is not a cluster id (a UUID)"
            ) from None
    for index, (key, _) in enumerate(labels):
        try:
            validate_label_key(key)
        except LabelError as error:
            raise InvalidArgument(f"filter.labels[{index}].key", str(error)) from None
    try:
        selector = parse_label_selector(label_selector or "")
    except SelectorError as error:
        raise InvalidArgument("filter.labelSelector", str(error)) from None
    return EventFilter(
        ids=frozenset(parsed_ids),
        labels=tuple(labels),
        selector=tuple(selector),
        statuses=frozenset(status.value for status in statuses),
    )


def subscribe_cluster_events(context: Context, where: EventFilter) -> Subscription:
    """Register with the bus now; iterate the result for deliveries until it ends."""
    return context.services.events.subscribe(where.accepts, on_close=context.close_connection)
