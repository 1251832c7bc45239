"""The Subscription root: live cluster events over websockets."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry
from strawberry.types import Info

from fleetql.events.bus import Subscription as EventSubscription
from fleetql.resolvers import events
from fleetql.resolvers.context import Context
from fleetql.schema.inputs import ClusterEventFilter
from fleetql.schema.types import ClusterEvent


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description=(
            "Every committed change to clusters matching the filter: imports, removals and "
            "state changes found by the poller. To miss nothing, subscribe first, then query "
            "the current state on the same websocket."
        )
    )
    async def cluster_state_changed(
        self, info: Info[Context, None], filter: ClusterEventFilter | None = None
    ) -> AsyncGenerator[ClusterEvent, None]:
        where = filter or ClusterEventFilter()
        subscription = events.subscribe_cluster_events(
            info.context,
            events.event_filter(
                ids=[str(value) for value in where.ids or ()],
                labels=[(label.key, label.value) for label in where.labels or ()],
                label_selector=where.label_selector,
                statuses=where.status or (),
            ),
        )
        return _EventStream(subscription)  # type: ignore[return-value]


class _EventStream:
    """Turns deliveries into GraphQL objects; closing it ends the subscription even if it was
    never iterated (an async generator's ``finally`` would not run then)."""

    def __init__(self, subscription: EventSubscription) -> None:
        self._subscription = subscription

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> ClusterEvent:
        return ClusterEvent.from_delivery(await self._subscription.__anext__())

    async def aclose(self) -> None:
        await self._subscription.aclose()
