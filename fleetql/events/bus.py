"""The event bus: one broadcaster subscription per process, fanned out to bounded queues.

broadcaster gives every subscriber an unbounded queue and delivers to them one after another, so
one stalled websocket would grow memory without limit and delay everyone behind it. Here the
process holds a single broadcaster subscription; a dispatcher task loads each event's cluster
once (a batch of events in one statement) and offers it to every matching subscriber without
waiting. A subscriber whose queue is full is cut off with a reason instead of slowing the rest.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from broadcaster import Broadcast
from broadcaster._backends.base import BroadcastBackend

from fleetql.db.clusters import ClusterRecord
from fleetql.db.states import StateChange
from fleetql.events.backends import RESYNC
from fleetql.events.model import ClusterEvent, EventKind, InvalidEvent

__all__ = [
    "CHANNEL",
    "CLOSE_RESUBSCRIBE",
    "CLOSE_TOO_SLOW",
    "Delivery",
    "EventBus",
    "Subscription",
]

logger = logging.getLogger(__name__)

CHANNEL = "fleetql_cluster_events"

# Websocket close codes: 1008 policy violation (the client did not keep up), 1012 service
# restart (the event stream was interrupted; reconnect and resubscribe, then query again).
CLOSE_TOO_SLOW = 1008
CLOSE_RESUBSCRIBE = 1012

LoadClusters = Callable[[Sequence[uuid.UUID]], Awaitable[Mapping[uuid.UUID, ClusterRecord]]]
Accepts = Callable[[ClusterEvent, ClusterRecord | None], bool]
OnClose = Callable[[int, str], None]


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event with its cluster as loaded after the event's commit (None once removed)."""

    event: ClusterEvent
    cluster: ClusterRecord | None


class Subscription:
    """One subscriber's bounded queue; iterate it for deliveries until it is closed."""

    def __init__(self, bus: EventBus, accepts: Accepts, on_close: OnClose | None, size: int):
        self._bus = bus
        self._accepts = accepts
        self._on_close = on_close
        self._queue: asyncio.Queue[Delivery | None] = asyncio.Queue(maxsize=size)
        self.closed_because: str | None = None

    def offer(self, delivery: Delivery) -> None:
        """Queue ``delivery`` if this subscriber wants it; never waits."""
        if self.closed_because is not None or not self._accepts(delivery.event, delivery.cluster):
            return
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            self._bus.overflows += 1
            self.close(
                CLOSE_TOO_SLOW,
                f"subscriber too slow: more than {self._queue.maxsize} events waiting",
            )

    def close(self, code: int, reason: str) -> None:
        """End this subscription and tell its connection why (once)."""
        if self.closed_because is not None:
            return
        self.closed_because = reason
        self._bus.discard(self)
        logger.warning("closing an event subscription (%d): %s", code, reason)
        # Wake the iterator even when the queue is full: drop what it holds, it is ending anyway.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)
        if self._on_close is not None:
            self._on_close(code, reason)

    def cancel(self) -> None:
        """The subscriber went away by itself: stop queueing for it."""
        if self.closed_because is None:
            self.closed_because = "unsubscribed"
            self._bus.discard(self)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Delivery:
        delivery = await self._queue.get()
        if delivery is None:
            raise StopAsyncIteration
        return delivery

    async def aclose(self) -> None:
        """Called by whoever iterates (graphql-core does) when the client unsubscribes."""
        self.cancel()


class EventBus:
    """Publish events after commit; subscribe with a filter. Owned by ``async with``."""

    def __init__(
        self, backend: BroadcastBackend, *, load_clusters: LoadClusters, queue_size: int = 4096
    ) -> None:
        self._broadcast = Broadcast(backend=backend)
        self._load_clusters = load_clusters
        self._queue_size = queue_size
        self._subscriptions: set[Subscription] = set()
        self._inbox: asyncio.Queue[str] = asyncio.Queue()
        self._stack = AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0
        self.publish_failures = 0
        self.dispatched = 0
        self.overflows = 0
        self.resyncs = 0

    async def __aenter__(self) -> Self:
        await self._broadcast.connect()
        self._stack.push_async_callback(self._broadcast.disconnect)
        try:
            subscriber = await self._stack.enter_async_context(self._broadcast.subscribe(CHANNEL))
        except BaseException:
            await self._stack.aclose()
            raise
        self._tasks = [
            asyncio.create_task(self._receive(subscriber), name="events.receive"),
            asyncio.create_task(self._dispatch_forever(), name="events.dispatch"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for subscription in list(self._subscriptions):
            subscription.close(CLOSE_RESUBSCRIBE, "the server is shutting down")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    async def publish(self, event: ClusterEvent) -> None:
        """Hand a committed change to every replica. Never raises: the change is stored, and a
        subscriber that misses it is told to resubscribe when the backend reconnects."""
        try:
            await self._broadcast.publish(CHANNEL, event.encode())
            self.published += 1
        except Exception as error:
            self.publish_failures += 1
            logger.warning(
                "cannot publish the %s event of cluster %s: %s",
                event.kind.value,
                event.cluster_id,
                type(error).__name__,
            )

    async def publish_change(self, change: StateChange) -> None:
        """The poller's hook: a check's committed change, as an event."""
        await self.publish(
            ClusterEvent(
                kind=EventKind.STATE_CHANGED,
                cluster_id=change.cluster_id,
                status=change.status,
                previous_status=change.previous_status,
                changed_fields=change.changed_fields,
                at=change.at,
            )
        )

    def subscribe(
        self, accepts: Accepts, *, on_close: OnClose | None = None, queue_size: int | None = None
    ) -> Subscription:
        """Register now, so every event dispatched from here on is offered to it."""
        subscription = Subscription(self, accepts, on_close, queue_size or self._queue_size)
        self._subscriptions.add(subscription)
        return subscription

    def discard(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    async def _receive(self, subscriber: object) -> None:
        async for event in subscriber:  # type: ignore[attr-defined]
            if event is not None:
                self._inbox.put_nowait(event.message)

    async def _dispatch_forever(self) -> None:
        while True:
            batch = [await self._inbox.get()]
            while not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            try:
                await self._dispatch(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Subscribers would wait for events that never come: make them resubscribe.
                logger.exception("cannot dispatch %d events; closing subscriptions", len(batch))
                self._resync("the server could not load the clusters of some events")

    async def _dispatch(self, messages: list[str]) -> None:
        events: list[ClusterEvent] = []
        for message in messages:
            if message == RESYNC:
                self.resyncs += 1
                self._resync("the event stream was interrupted; subscribe again, then query")
                continue
            try:
                events.append(ClusterEvent.decode(message))
            except InvalidEvent as error:
                logger.warning("ignoring an event: %s", error)
        if not events or not self._subscriptions:
            return
        clusters = await self._load_clusters(list({event.cluster_id for event in events}))
        for event in events:
            delivery = Delivery(event, clusters.get(event.cluster_id))
            for subscription in list(self._subscriptions):
                subscription.offer(delivery)
            self.dispatched += 1

    def _resync(self, reason: str) -> None:
        for subscription in list(self._subscriptions):
            subscription.close(CLOSE_RESUBSCRIBE, reason)
