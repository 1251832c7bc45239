"""The Subscription root: live cluster events over websockets, resumable from the event log."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, cast

import strawberry
from strawberry.types import Info
from strawberry.types.nodes import SelectedField, Selection

from fleetql.events.bus import Delivery
from fleetql.resolvers import events
from fleetql.resolvers.context import Context
from fleetql.schema.inputs import ClusterEventFilter
from fleetql.schema.permissions import VIEWER
from fleetql.schema.types import ClusterEvent

After = Annotated[
    strawberry.ID | None,
    strawberry.argument(
        description=(
            "The id of the last event you saw: every later matching event is replayed from "
            "the event log first, then live ones follow with no gap and no duplicate."
        )
    ),
]


@strawberry.type
class Subscription:
    @strawberry.subscription(
        permission_classes=VIEWER,
        description=(
            "Every committed change to clusters matching the filter: imports, updates, "
            "removals and what the poller finds. To miss nothing, subscribe first, then query "
            "the current state on the same websocket — or resume with `after`."
        ),
    )
    async def cluster_state_changed(
        self,
        info: Info[Context, None],
        filter: ClusterEventFilter | None = None,
        after: After = None,
    ) -> AsyncGenerator[ClusterEvent, None]:
        return await _subscribe(info, filter, after)  # type: ignore[return-value]

    @strawberry.subscription(
        permission_classes=VIEWER,
        description="The event log, live: clusterStateChanged filtered by event type too.",
    )
    async def cluster_events(
        self,
        info: Info[Context, None],
        filter: ClusterEventFilter | None = None,
        after: After = None,
    ) -> AsyncGenerator[ClusterEvent, None]:
        return await _subscribe(info, filter, after)  # type: ignore[return-value]


async def _subscribe(
    info: Info[Context, None], filter: ClusterEventFilter | None, after: strawberry.ID | None
) -> _EventStream:
    where = filter or ClusterEventFilter()
    deliveries = await events.subscribe_cluster_events(
        info.context,
        events.event_filter(
            ids=[str(value) for value in where.ids or ()],
            labels=[(label.key, label.value) for label in where.labels or ()],
            label_selector=where.label_selector,
            statuses=where.status or (),
            types=where.types or (),
        ),
        after=None if after is None else str(after),
        with_clusters=_selects_cluster(info),
    )
    return _EventStream(deliveries)


def _selects_cluster(info: Info[Context, None]) -> bool:
    """Whether the payload's ``cluster`` is selected, through fragments too: a replay loads
    the clusters of its events only then. (``@skip``/``@include`` are not evaluated: such a
    ``cluster`` counts as selected, which only costs the load.)"""

    def at_this_level(selections: list[Selection]) -> bool:
        for selection in selections:
            if isinstance(selection, SelectedField):
                if selection.name == "cluster":
                    return True
            elif at_this_level(selection.selections):
                return True
        return False

    return any(at_this_level(field.selections) for field in info.selected_fields)


class _EventStream:
    """Turns deliveries into GraphQL objects; closing it ends the subscription even if it was
    never iterated (an async generator's ``finally`` would not run then)."""

    def __init__(self, deliveries: AsyncIterator[Delivery]) -> None:
        self._deliveries = deliveries

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> ClusterEvent:
        return _shared_event(await self._deliveries.__anext__())

    async def aclose(self) -> None:
        aclose = getattr(self._deliveries, "aclose", None)
        if aclose is not None:
            await aclose()


def _shared_event(delivery: Delivery) -> ClusterEvent:
    """Every subscriber of a delivery gets the same ClusterEvent object, so that execution.py
    can execute it once per cohort."""
    event = delivery.memo.get("graphql")
    if event is None:
        event = delivery.memo["graphql"] = ClusterEvent.from_delivery(delivery)
    return cast(ClusterEvent, event)
