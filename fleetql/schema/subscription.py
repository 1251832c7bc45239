"""The Subscription root: live cluster events over websockets, resumable from the event log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Hashable
from typing import Annotated, Any, cast

import strawberry
from strawberry.types import Info
from strawberry.types.nodes import SelectedField, Selection

from fleetql.events.bus import Delivery
from fleetql.resolvers import events
from fleetql.resolvers.context import Context
from fleetql.schema.fanout import CohortFrames, Outlet, cohort_key, current_outlet
from fleetql.schema.inputs import ClusterEventFilter
from fleetql.schema.permissions import VIEWER
from fleetql.schema.types import ClusterEvent

# At most this many changes in one coalesced message; the rest follow in the next one.
MAX_BATCH = 1000

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

    @strawberry.subscription(
        permission_classes=VIEWER,
        description=(
            "clusterStateChanged coalesced: each message is the list of the changes committed "
            "within `windowMs` milliseconds (10 to 1000) of the first one, in the log's order "
            "(at most 1,000; more follow in the next message). A burst costs a few messages "
            "instead of one per change."
        ),
    )
    async def cluster_states_changed(
        self,
        info: Info[Context, None],
        filter: ClusterEventFilter | None = None,
        after: After = None,
        window_ms: int = 100,
    ) -> AsyncGenerator[list[ClusterEvent], None]:
        window = events.coalescing_window(window_ms)
        stream = await _subscribe(info, filter, after)
        return _BatchStream(stream, window)  # type: ignore[return-value]


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
    return _EventStream(deliveries, _Fanout.of(info))


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


class _Fanout:
    """Where a subscriber's cohort frames go: straight to its websocket (see fanout.py)."""

    __slots__ = ("_key", "_operation", "_outlet")

    def __init__(self, outlet: Outlet | None, key: Hashable, operation: object) -> None:
        self._outlet = outlet
        self._key = key
        # Keeps the operation node, whose id is part of the key, alive as long as the key is.
        self._operation = operation

    @classmethod
    def of(cls, info: Info[Context, None]) -> _Fanout:
        variables: Any = info.variable_values
        coerced = getattr(variables, "coerced", variables)
        key = cohort_key(info.operation, coerced, getattr(info.context, "principal", None))
        return cls(current_outlet(), key, info.operation)

    async def sent(self, memo: dict[str, Any]) -> bool:
        """Whether the cohort's frame for what ``memo`` belongs to went out directly. False:
        hand it to strawberry (this subscriber leads its cohort, or the cohort's result is not
        shareable)."""
        outlet = self._outlet
        if outlet is None:
            return False
        outlet.settle()
        frames: CohortFrames = memo.setdefault("frames", {})
        slot = frames.get(self._key)
        if slot is None:
            frames[self._key] = outlet.leading = asyncio.get_running_loop().create_future()
            return False
        # Shielded: a member that goes away must not cancel what the others wait for.
        payload = slot.result() if slot.done() else await asyncio.shield(slot)
        if payload is None:
            return False
        await outlet.send(payload)
        return True

    def settle(self) -> None:
        if self._outlet is not None:
            self._outlet.settle()


class _EventStream:
    """Turns deliveries into GraphQL objects; closing it ends the subscription even if it was
    never iterated (an async generator's ``finally`` would not run then)."""

    def __init__(self, deliveries: events.DeliveryStream, fanout: _Fanout) -> None:
        self._deliveries = deliveries
        self.fanout = fanout

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> ClusterEvent:
        while True:
            delivery = await self._deliveries.__anext__()
            if not await self.fanout.sent(delivery.memo):
                return _shared_event(delivery)

    def next_nowait(self) -> Delivery | None:
        return self._deliveries.next_nowait()

    async def next_delivery(self) -> Delivery:
        return await self._deliveries.__anext__()

    async def aclose(self) -> None:
        self.fanout.settle()
        await self._deliveries.aclose()


class EventBatch(list[ClusterEvent]):
    """One coalesced message's events; like a Delivery, shared by the subscribers that gathered
    the same ones, with a ``memo`` (and the ``__dict__`` execution.py keeps results in)."""

    def __init__(self, events: list[ClusterEvent]) -> None:
        super().__init__(events)
        self.memo: dict[str, Any] = {}


class _BatchStream:
    """Gathers a subscriber's deliveries into batches. A window ends ``window`` seconds after
    its first delivery was dispatched, measured on the dispatch's own clock, so every
    subscriber that saw that delivery closes the window on the same deliveries and the batch
    (and its encoded frame) is shared by the cohort. Replayed deliveries are sent at once."""

    def __init__(self, stream: _EventStream, window: float) -> None:
        self._stream = stream
        self._window = window
        self._held: Delivery | None = None

    def __aiter__(self) -> _BatchStream:
        return self

    async def __anext__(self) -> EventBatch:
        while True:
            batch = await self._gather()
            if not await self._stream.fanout.sent(batch.memo):
                return batch

    async def _gather(self) -> EventBatch:
        first, self._held = self._held, None
        if first is None:
            first = await self._stream.next_delivery()
        gathered = [first]
        deadline = None if first.offered_at is None else first.offered_at + self._window
        if deadline is not None and (delay := deadline - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        while len(gathered) < MAX_BATCH:
            delivery = self._stream.next_nowait()
            if delivery is None:
                break
            if deadline is not None and (
                delivery.offered_at is None or delivery.offered_at >= deadline
            ):
                self._held = delivery  # the next window's first
                break
            gathered.append(delivery)
        return _shared_batch(gathered)

    async def aclose(self) -> None:
        await self._stream.aclose()


def _shared_batch(deliveries: list[Delivery]) -> EventBatch:
    """Subscribers that gathered the same deliveries get the same EventBatch object."""
    batches: dict[tuple[int, ...], EventBatch] = deliveries[0].memo.setdefault("batches", {})
    key = tuple(delivery.event.id for delivery in deliveries)
    batch = batches.get(key)
    if batch is None:
        batch = batches[key] = EventBatch([_shared_event(d) for d in deliveries])
    return batch


def _shared_event(delivery: Delivery) -> ClusterEvent:
    """Every subscriber of a delivery gets the same ClusterEvent object, so that execution.py
    can execute it once per cohort."""
    event = delivery.memo.get("graphql")
    if event is None:
        event = delivery.memo["graphql"] = ClusterEvent.from_delivery(delivery)
    return cast(ClusterEvent, event)
