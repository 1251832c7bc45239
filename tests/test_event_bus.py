"""The event bus on its own: fan-out, loading once per event, bounded queues, resync."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime

import pytest

from fleetql.db.clusters import ClusterRecord
from fleetql.db.events import LoggedEvent
from fleetql.db.models import ClusterStatus, EventType
from fleetql.events.backends import RESYNC, create_backend
from fleetql.events.bus import CHANNEL, CLOSE_RESUBSCRIBE, CLOSE_TOO_SLOW, EventBus
from fleetql.events.model import InvalidEvent, decode_ids, encode_ids
from fleetql.resolvers.errors import InvalidArgument
from fleetql.resolvers.events import event_filter


def record(cluster_id: uuid.UUID, labels: dict[str, str] | None = None) -> ClusterRecord:
    now = datetime.now(UTC)
    return ClusterRecord(
        id=cluster_id,
        name="c",
        description="",
        labels=labels or {},
        api_server_url="https://example",
        created_at=now,
        updated_at=now,
        status=ClusterStatus.HEALTHY,
        node_count=None,
        ready_node_count=None,
        cpu_capacity_cores=None,
        cpu_allocatable_cores=None,
        cpu_usage_cores=None,
        memory_capacity_bytes=None,
        memory_allocatable_bytes=None,
        memory_usage_bytes=None,
        kubernetes_version=None,
        last_heartbeat_at=None,
        last_checked_at=None,
        last_error_code=None,
        last_error_message=None,
        consecutive_failures=0,
        version=1,
        credential_kind=None,
        credential_expires_at=None,
        credential_subject=None,
        pending_status=None,
    )


def logged(
    event_id: int, cluster_id: uuid.UUID, status: str = "DEGRADED", previous: str = "HEALTHY"
) -> LoggedEvent:
    return LoggedEvent(
        id=event_id,
        cluster_id=cluster_id,
        type=EventType.STATUS_CHANGED,
        previous_status=previous,
        status=status,
        changes={"status": [previous, status]},
        message="",
        actor=None,
        at=datetime.now(UTC),
    )


class Store:
    """Logged events and clusters by id, counting how often the bus loads them."""

    def __init__(self) -> None:
        self.events: dict[int, LoggedEvent] = {}
        self.clusters: dict[uuid.UUID, ClusterRecord] = {}
        self.loads = 0

    def log(self, cluster_id: uuid.UUID, **kw: str) -> int:
        event_id = len(self.events) + 1
        self.events[event_id] = logged(event_id, cluster_id, **kw)
        return event_id

    async def load_events(self, ids: Sequence[int]) -> Mapping[int, LoggedEvent]:
        return {i: self.events[i] for i in ids if i in self.events}

    async def load(self, ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, ClusterRecord]:
        self.loads += 1
        return {i: self.clusters[i] for i in ids if i in self.clusters}


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
async def bus(store: Store) -> AsyncIterator[EventBus]:
    async with EventBus(
        create_backend("memory://", database_url=None),
        load_events=store.load_events,
        load_clusters=store.load,
        queue_size=8,
    ) as running:
        yield running


async def test_ids_survive_encoding_and_bad_payloads_are_named() -> None:
    assert decode_ids(encode_ids([1, 2, 3])) == [1, 2, 3]
    assert len(encode_ids(list(range(10**17, 10**17 + 200)))) < 8000
    for payload in ("{", '{"v": 1}', '{"v": 2, "ids": ["x"]}', '{"v": 2, "ids": [0]}', "[]"):
        with pytest.raises(InvalidEvent):
            decode_ids(payload)


async def test_every_subscriber_gets_the_event_with_its_cluster_loaded_once(
    bus: EventBus, store: Store
) -> None:
    cluster_id = uuid.uuid4()
    store.clusters[cluster_id] = record(cluster_id)
    subscriptions = [bus.subscribe(lambda e, c: True) for _ in range(50)]
    await bus.publish_ids([store.log(cluster_id)])
    deliveries = [await asyncio.wait_for(anext(s), 5) for s in subscriptions]
    assert {id(d) for d in deliveries} == {id(deliveries[0])}  # one shared object
    assert deliveries[0].cluster == store.clusters[cluster_id]
    assert store.loads == 1


async def test_an_id_published_twice_is_dispatched_once(bus: EventBus, store: Store) -> None:
    """A new relay leader may publish again what the old one did."""
    cluster_id = uuid.uuid4()
    subscription = bus.subscribe(lambda e, c: True)
    first, second = store.log(cluster_id), store.log(cluster_id)
    await bus.publish_ids([first])
    await bus.publish_ids([first, second])
    got = [(await asyncio.wait_for(anext(subscription), 5)).event.id for _ in range(2)]
    assert got == [first, second]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(subscription), 0.1)


async def test_nothing_is_loaded_without_subscribers(bus: EventBus, store: Store) -> None:
    await bus.publish_ids([store.log(uuid.uuid4())])
    await asyncio.sleep(0.05)
    assert store.loads == 0


async def test_a_full_queue_closes_that_subscriber_only(bus: EventBus, store: Store) -> None:
    cluster_id = uuid.uuid4()
    closed: list[tuple[int, str]] = []
    slow = bus.subscribe(lambda e, c: True, on_close=lambda code, why: closed.append((code, why)))
    fast = bus.subscribe(lambda e, c: True)
    received = 0
    for _ in range(12):
        await bus.publish_ids([store.log(cluster_id)])
        await asyncio.wait_for(anext(fast), 5)
        received += 1
    assert closed == [(CLOSE_TOO_SLOW, "subscriber too slow: more than 8 events waiting")]
    assert bus.overflows == 1 and bus.subscriber_count == 1
    with pytest.raises(StopAsyncIteration):
        await anext(slow)  # what it held is dropped; it ends
    assert received == 12


async def test_a_resync_closes_every_subscriber_so_clients_resubscribe(bus: EventBus) -> None:
    closed: list[int] = []
    subscriptions = [
        bus.subscribe(lambda e, c: True, on_close=lambda code, why: closed.append(code))
        for _ in range(3)
    ]
    bus._inbox.put_nowait(RESYNC)  # what the resilient backend yields after a reconnect
    for subscription in subscriptions:
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(subscription), 5)
    assert closed == [CLOSE_RESUBSCRIBE] * 3 and bus.resyncs == 1


async def test_a_cancelled_subscription_gets_nothing_more(bus: EventBus) -> None:
    subscription = bus.subscribe(lambda e, c: True)
    await subscription.aclose()
    assert bus.subscriber_count == 0


async def test_unreadable_messages_are_skipped(bus: EventBus, store: Store) -> None:
    cluster_id = uuid.uuid4()
    subscription = bus.subscribe(lambda e, c: True)
    await bus._broadcast.publish(CHANNEL, '{"v": 99}')
    await bus.publish_ids([store.log(cluster_id)])
    delivery = await asyncio.wait_for(anext(subscription), 5)
    assert delivery.event.cluster_id == cluster_id


def test_filters_match_ids_labels_selectors_types_and_either_status() -> None:
    one, two = uuid.uuid4(), uuid.uuid4()
    prod = record(one, {"env": "prod", "tier": "web"})
    dev = record(two, {"env": "dev"})
    by_id = event_filter(ids=[str(one)])
    assert by_id.accepts(logged(1, one), prod) and not by_id.accepts(logged(1, two), dev)
    by_label = event_filter(labels=[("env", "dev")])
    assert by_label.accepts(logged(1, two), dev) and not by_label.accepts(logged(1, one), prod)
    assert not by_label.accepts(logged(1, two), None)  # removed: no labels left to match
    by_selector = event_filter(label_selector="tier,env notin (dev)")
    assert by_selector.accepts(logged(1, one), prod)
    assert not by_selector.accepts(logged(1, two), dev)
    by_status = event_filter(statuses=[ClusterStatus.HEALTHY])
    assert by_status.accepts(logged(1, one, "DEGRADED", "HEALTHY"), prod)
    assert by_status.accepts(logged(1, one, "HEALTHY", "DEGRADED"), prod)
    assert not by_status.accepts(logged(1, one, "UNREACHABLE", "DEGRADED"), prod)
    by_type = event_filter(types=[EventType.IMPORTED])
    assert not by_type.accepts(logged(1, one), prod)


def test_event_filter_refuses_one_label_key_with_two_values() -> None:
    with pytest.raises(InvalidArgument) as refused:
        event_filter(labels=[("env", "prod"), ("tier", "web"), ("env", "dev")])
    assert str(refused.value) == "filter.labels[2]: label 'env' is given twice"
    assert event_filter(labels=[("env", "dev"), ("env", "dev")]).labels == (("env", "dev"),)


def test_each_subscription_event_gets_its_own_sub_field_cache() -> None:
    """graphql-core shares the cache across per-event executors and never hits it, so it
    would grow with every event of every subscription (a leak the fan-out benchmark found)."""
    from graphql import parse

    from fleetql.schema import PerEventExecutionContext, build_schema

    schema = build_schema()
    executor = PerEventExecutionContext.build(
        schema._schema, parse("subscription { clusterStateChanged { id } }")
    )
    assert isinstance(executor, PerEventExecutionContext)
    first = executor.build_per_event_executor({})
    second = executor.build_per_event_executor({})
    assert first._relevant_sub_fields is not executor._relevant_sub_fields
    assert first._relevant_sub_fields is not second._relevant_sub_fields
