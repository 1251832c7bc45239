"""The event bus: one broadcaster subscription per process, fanned out to bounded queues.

broadcaster gives every subscriber an unbounded queue and delivers to them one after another, so
one stalled websocket would grow memory without limit and delay everyone behind it. Here the
process holds a single broadcaster subscription, which carries the ids of logged events (the
relay publishes them in id order); a dispatcher task loads each batch of events and their
clusters once (two statements) and offers them to every matching subscriber without waiting. A
subscriber whose queue is full is cut off with a reason instead of slowing the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from broadcaster import Broadcast
from broadcaster._backends.base import BroadcastBackend

from fleetql.db.clusters import ClusterRecord
from fleetql.db.events import LoggedEvent
from fleetql.events.backends import RESYNC
from fleetql.events.model import MAX_IDS_PER_MESSAGE, InvalidEvent, decode_ids, encode_ids
from fleetql.mailbox import Mailbox
from fleetql.metrics.instruments import EventMetrics

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
LoadEvents = Callable[[Sequence[int]], Awaitable[Mapping[int, LoggedEvent]]]
LoadLabels = Callable[[Sequence[uuid.UUID]], Awaitable[Mapping[uuid.UUID, Mapping[str, str]]]]
Accepts = Callable[[LoggedEvent, ClusterRecord | None], bool]
# Access control, apart from the client's own filter: may this subscriber see an event of a
# cluster with these labels (None: the cluster is unknown)?
Visible = Callable[[Mapping[str, str] | None], bool]
OnClose = Callable[[int, str], None]


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event with its cluster as loaded after the event's commit (None once removed).

    One Delivery is shared by every subscriber; ``memo`` lets the layers above keep what they
    derive from it (the GraphQL object, its results) once for all of them.
    """

    event: LoggedEvent
    cluster: ClusterRecord | None
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # The cluster's labels, a removed cluster's too (who may see its removal depends on them).
    labels: Mapping[str, str] | None = None
    # When the bus dispatched it (time.monotonic(); None: a replay). Every
    # subscriber sees the same value, so windows measured from it end alike for all of them.
    offered_at: float | None = None


class Subscription:
    """One subscriber's bounded queue; iterate it for deliveries until it is closed."""

    __slots__ = (
        "_accepts",
        "_bus",
        "_on_close",
        "_queue",
        "_visible",
        "closed_because",
        "skip_through",
    )

    def __init__(
        self,
        bus: EventBus,
        accepts: Accepts,
        on_close: OnClose | None,
        size: int,
        visible: Visible | None = None,
    ):
        self._bus = bus
        self._accepts = accepts
        self._visible = visible
        self._on_close = on_close
        # Not an asyncio.Queue: that is 3 KiB per subscriber even while empty (mailbox.py).
        self._queue: Mailbox[Delivery | None] = Mailbox(maxsize=size)
        self.closed_because: str | None = None
        # Events up to this id were already handed over (by a replay): skip them live.
        self.skip_through = 0

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def accepts(self, delivery: Delivery) -> bool:
        if self._visible is not None and not self._visible(delivery.labels):
            return False
        return self._accepts(delivery.event, delivery.cluster)

    def offer(self, delivery: Delivery) -> None:
        """Queue ``delivery`` if this subscriber wants it; never waits."""
        if (
            self.closed_because is not None
            or delivery.event.id <= self.skip_through
            or not self.accepts(delivery)
        ):
            return
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            self._bus.overflows += 1
            self._bus.metrics.overflows.inc()
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
        while True:
            delivery = await self._queue.get()
            if delivery is None:
                raise StopAsyncIteration
            # Queued before a replay finished, and handed over by it.
            if delivery.event.id > self.skip_through:
                self._bus.metrics.delivered.inc()
                return delivery

    def next_nowait(self) -> Delivery | None:
        """The next waiting delivery, or None when none is queued (or the subscription ended:
        iterating then stops)."""
        while not self._queue.empty():
            delivery = self._queue.get_nowait()
            if delivery is None:
                self._queue.put_nowait(None)  # leave the end for the iterator to see
                return None
            if delivery.event.id > self.skip_through:
                self._bus.metrics.delivered.inc()
                return delivery
        return None

    async def aclose(self) -> None:
        """Called by whoever iterates (graphql-core does) when the client unsubscribes."""
        self.cancel()


class EventBus:
    """Publish events after commit; subscribe with a filter. Owned by ``async with``."""

    def __init__(
        self,
        backend: BroadcastBackend,
        *,
        load_events: LoadEvents,
        load_clusters: LoadClusters,
        load_labels: LoadLabels | None = None,
        queue_size: int = 4096,
        metrics: EventMetrics | None = None,
    ) -> None:
        self._backend = backend
        self._broadcast = Broadcast(backend=backend)
        self._load_events = load_events
        self._load_clusters = load_clusters
        self._load_labels = load_labels
        self._last_dispatched = 0
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
        self.metrics = metrics or EventMetrics()
        # Read at scrape time: how many subscribers, and how far behind they are.
        self.metrics.subscribers.set_function(lambda: len(self._subscriptions))
        self.metrics.queued.set_function(lambda: sum(self.queue_depths(), 0))
        self.metrics.deepest_queue.set_function(lambda: max(self.queue_depths(), default=0))
        self.metrics.inbox.set_function(self._inbox.qsize)

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
    def connected(self) -> bool:
        """Whether the event backend is connected (a backend that cannot tell is assumed to
        be) and the bus's own tasks are alive."""
        alive = bool(self._tasks) and not any(task.done() for task in self._tasks)
        return alive and bool(getattr(self._backend, "connected", True))

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def queue_depths(self) -> list[int]:
        """Events waiting for each subscriber."""
        return [subscription.queued for subscription in self._subscriptions]

    async def publish_ids(self, ids: Sequence[int]) -> None:
        """Tell every replica that these logged events are ready (the relay calls this, in id
        order). Raises when the backend cannot take them, so the relay retries."""
        for start in range(0, len(ids), MAX_IDS_PER_MESSAGE):
            await self._broadcast.publish(
                CHANNEL, encode_ids(ids[start : start + MAX_IDS_PER_MESSAGE])
            )
        self.published += len(ids)
        self.metrics.published.inc(len(ids))

    async def deliveries(
        self,
        events: Sequence[LoggedEvent],
        *,
        clusters: bool = True,
        live: bool = False,
    ) -> list[Delivery]:
        """``events`` with their clusters, loaded in one statement (and the labels of removed
        ones in another, when there are any). ``clusters=False``: only the labels, in one
        lighter statement, for a replay that shows no cluster but must check access.
        ``live``: stamped with ``offered_at``, now that they are loaded."""
        ids = list({event.cluster_id for event in events})
        if not clusters and self._load_labels is not None:
            labels = await self._load_labels(ids)
            return [Delivery(event, None, labels=labels.get(event.cluster_id)) for event in events]
        loaded = await self._load_clusters(ids)
        removed = [cluster_id for cluster_id in ids if cluster_id not in loaded]
        removed_labels: Mapping[uuid.UUID, Mapping[str, str]] = {}
        if removed and self._load_labels is not None:
            removed_labels = await self._load_labels(removed)
        deliveries = []
        offered_at = time.monotonic() if live else None
        for event in events:
            cluster = loaded.get(event.cluster_id)
            deliveries.append(
                Delivery(
                    event,
                    cluster,
                    labels=cluster.labels
                    if cluster is not None
                    else removed_labels.get(event.cluster_id),
                    offered_at=offered_at,
                )
            )
        return deliveries

    def subscribe(
        self,
        accepts: Accepts,
        *,
        on_close: OnClose | None = None,
        queue_size: int | None = None,
        visible: Visible | None = None,
    ) -> Subscription:
        """Register now, so every event dispatched from here on is offered to it."""
        subscription = Subscription(
            self, accepts, on_close, queue_size or self._queue_size, visible=visible
        )
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
        ids: list[int] = []
        for message in messages:
            if message == RESYNC:
                self.resyncs += 1
                self.metrics.resyncs.inc()
                self._resync("the event stream was interrupted; subscribe again, then query")
                continue
            try:
                ids.extend(decode_ids(message))
            except InvalidEvent as error:
                logger.warning("ignoring an event message: %s", error)
        # A new relay leader may publish again what the last one already did: ids only go up.
        fresh = sorted(i for i in set(ids) if i > self._last_dispatched)
        if not fresh:
            return
        self._last_dispatched = fresh[-1]
        if not self._subscriptions:
            return
        events = await self._load_events(fresh)
        loaded = [events[i] for i in fresh if i in events]
        for delivery in await self.deliveries(loaded, live=True):
            for subscription in list(self._subscriptions):
                subscription.offer(delivery)
            self.dispatched += 1
            self.metrics.dispatched.inc()

    def _resync(self, reason: str) -> None:
        for subscription in list(self._subscriptions):
            subscription.close(CLOSE_RESUBSCRIBE, reason)
