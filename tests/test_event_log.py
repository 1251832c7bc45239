"""The event log as a transactional outbox: written with the change, relayed in id order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.db.events import NewEvent, list_events, log_events
from fleetql.db.models import EventType
from fleetql.db.states import record_check
from fleetql.events.backends import create_backend
from fleetql.events.bus import EventBus
from fleetql.events.relay import EventRelay
from tests.conftest import GraphQLClient, ThreadedServer, asyncpg_dsn
from tests.kubeconfigs import KubeconfigFactory
from tests.wsclient import GraphQLWebSocket

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { code message } }
}
"""
ORDERED = """
subscription($f: ClusterEventFilter) { clusterEvents(filter: $f) { id } }
"""
EVENTS = """
subscription($after: ID) {
  clusterEvents(after: $after) { id type clusterId status message }
}
"""


async def import_cluster(api: GraphQLClient, name: str, kubeconfigs: KubeconfigFactory) -> str:
    kubeconfig = kubeconfigs.yaml()
    data = await api.data(IMPORT, {"input": {"name": name, "kubeconfig": kubeconfig}})
    payload = data["importCluster"]
    assert payload["userErrors"] == [], payload
    return str(payload["cluster"]["id"])


async def logged(sessions: async_sessionmaker[AsyncSession], cluster_id: str) -> list[str]:
    async with sessions() as session:
        page = await list_events(session, cluster_ids=[uuid.UUID(cluster_id)])
    return [event.type.value for event in reversed(page.items)]


async def test_an_import_logs_one_event_and_a_refused_one_none(
    api: GraphQLClient, sessions: async_sessionmaker[AsyncSession], kubeconfigs: KubeconfigFactory
) -> None:
    cluster_id = await import_cluster(api, "logged", kubeconfigs)
    taken = await api.data(
        IMPORT,
        {"input": {"name": "logged", "kubeconfig": kubeconfigs.yaml()}},
    )
    assert taken["importCluster"]["userErrors"][0]["code"] == "NAME_TAKEN"
    assert await logged(sessions, cluster_id) == ["IMPORTED"]
    async with sessions() as session:
        total = await session.scalar(text("SELECT count(*) FROM cluster_events"))
    assert total == 1


async def test_check_events_are_written_in_the_checks_transaction(
    api: GraphQLClient, sessions: async_sessionmaker[AsyncSession], kubeconfigs: KubeconfigFactory
) -> None:
    cluster_id = uuid.UUID(await import_cluster(api, "checked", kubeconfigs))
    values = {
        "status": "HEALTHY",
        "node_count": 3,
        "ready_node_count": 3,
        "consecutive_failures": 0,
    }
    async with sessions() as session:
        change = await record_check(
            session, cluster_id, values, next_check_in=timedelta(minutes=5), heartbeat=True
        )
        assert change is not None
        await session.rollback()  # e.g. the commit failed: neither state nor event remains
    assert await logged(sessions, str(cluster_id)) == ["IMPORTED"]
    async with sessions() as session:
        await record_check(
            session, cluster_id, values, next_check_in=timedelta(minutes=5), heartbeat=True
        )
        await session.commit()
    assert await logged(sessions, str(cluster_id)) == ["IMPORTED", "STATUS_CHANGED"]
    failing = {"status": "HEALTHY", "last_error_code": "TIMEOUT", "consecutive_failures": 1}
    for failures in (1, 2):
        async with sessions() as session:
            await record_check(
                session,
                cluster_id,
                failing | {"consecutive_failures": failures},
                next_check_in=timedelta(seconds=1),
                heartbeat=False,
            )
            await session.commit()
    async with sessions() as session:
        await record_check(
            session,
            cluster_id,
            values | {"last_error_code": None},
            next_check_in=timedelta(minutes=5),
            heartbeat=True,
        )
        await session.commit()
    # One CHECK_FAILED per failure streak, one RECOVERED when it ends.
    assert await logged(sessions, str(cluster_id)) == [
        "IMPORTED",
        "STATUS_CHANGED",
        "CHECK_FAILED",
        "RECOVERED",
    ]


async def test_event_ids_follow_commit_order_so_no_subscriber_misses_one(
    api: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    server: ThreadedServer,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """With a plain sequence, a transaction could commit id n after another committed n + 1,
    and a reader already past n + 1 would never see n. Writers take the log's lock, so the
    second writer waits, and its id comes after the first's commit."""
    cluster_id = uuid.UUID(await import_cluster(api, "ordered", kubeconfigs))
    event = NewEvent(cluster_id=cluster_id, type=EventType.NODES_CHANGED, status="HEALTHY")
    async with GraphQLWebSocket.open(server.ws_url) as ws:
        operation = await ws.subscribe(
            ORDERED, {"f": {"ids": [str(cluster_id)], "types": ["NODES_CHANGED"]}}
        )
        await ws.query("{ clusters(limit: 0) { total } }")
        async with sessions() as first, sessions() as second:
            await log_events(first, [event])

            async def log_second() -> None:
                await log_events(second, [event])
                await second.commit()

            waiting = asyncio.create_task(log_second())
            await asyncio.sleep(0.3)
            assert not waiting.done(), "the second writer did not wait for the first"
            await first.commit()
            await asyncio.wait_for(waiting, 5)
        got = [int((await ws.next_data(operation))["clusterEvents"]["id"]) for _ in range(2)]
    assert got[0] < got[1]
    async with sessions() as session:
        page = await list_events(session, cluster_ids=[cluster_id], types=[EventType.NODES_CHANGED])
    assert sorted(e.id for e in page.items) == got


async def test_only_one_relay_leads_and_another_takes_over(
    sessions: async_sessionmaker[AsyncSession], database_url: str, server: ThreadedServer
) -> None:
    async def load_nothing(ids: Sequence[object]) -> dict[object, object]:
        return {}

    async with (
        EventBus(
            create_backend("memory://", database_url=None),
            load_events=load_nothing,  # type: ignore[arg-type]
            load_clusters=load_nothing,  # type: ignore[arg-type]
        ) as bus,
    ):
        relays = [EventRelay(database_url, sessions, bus, poll_interval=0.05) for _ in range(2)]
        tasks = [asyncio.create_task(relay.run()) for relay in relays]
        try:
            everyone = relays  # the test server's relay is a local one (memory://)
            await _eventually(lambda: sum(r.leading for r in everyone) == 1, "one leader")
            leader = next(r for r in everyone if r.leading)
            admin = await asyncpg.connect(asyncpg_dsn(database_url))
            try:
                # The leader's connection dies (as in a crash): its lock goes with it.
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted"
                )
            finally:
                await admin.close()
            await _eventually(
                lambda: (
                    sum(r.leading for r in everyone) == 1
                    and any(r.leading and r is not leader for r in everyone)
                ),
                "another leader",
                within=15,
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _eventually(condition: object, what: str, within: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_resumed_subscription_replays_what_it_missed_then_goes_live(
    api: GraphQLClient, server: ThreadedServer, database_url: str, kubeconfigs: KubeconfigFactory
) -> None:
    first = await import_cluster(api, "resume-1", kubeconfigs)
    async with GraphQLWebSocket.open(server.ws_url) as ws:
        operation = await ws.subscribe(EVENTS, {"after": "0"})
        seen = (await ws.next_data(operation))["clusterEvents"]
        assert seen["clusterId"] == first and seen["type"] == "IMPORTED"
        last = seen["id"]
    # Disconnected: two more imports happen meanwhile.
    missed = [await import_cluster(api, f"resume-{n}", kubeconfigs) for n in (2, 3)]
    async with GraphQLWebSocket.open(server.ws_url) as ws:
        operation = await ws.subscribe(EVENTS, {"after": last})
        replayed = [(await ws.next_data(operation))["clusterEvents"] for _ in missed]
        assert [e["clusterId"] for e in replayed] == missed
        live = await import_cluster(api, "resume-4", kubeconfigs)
        event = (await ws.next_data(operation))["clusterEvents"]
        assert event["clusterId"] == live
        assert int(event["id"]) > int(replayed[-1]["id"]) > int(last)
        with pytest.raises(TimeoutError):
            await ws.next_message(operation, within=0.3)  # nothing twice


async def test_resuming_from_before_the_retention_window_is_refused(
    api: GraphQLClient, server: ThreadedServer, database_url: str
) -> None:
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        before = await admin.fetchval("SELECT pruned_through FROM event_relay")
        await admin.execute("UPDATE event_relay SET pruned_through = 1000000")
        async with GraphQLWebSocket.open(server.ws_url) as ws:
            operation = await ws.subscribe(EVENTS, {"after": "5"})
            message = await ws.next_message(operation)
    finally:
        await admin.execute("UPDATE event_relay SET pruned_through = $1", before)
        await admin.close()
    payload = message["payload"]
    errors = payload if isinstance(payload, list) else payload["errors"]
    assert errors[0]["message"].startswith("after: event 5 is older than the event log keeps")


async def test_logged_changes_round_trip_decimals_datetimes_and_nested_values(
    api: GraphQLClient, sessions: async_sessionmaker[AsyncSession], kubeconfigs: KubeconfigFactory
) -> None:
    cluster_id = uuid.UUID(await import_cluster(api, "jsonb", kubeconfigs))
    seen = datetime(2026, 11, 26, 4, 30, 15, 123456, tzinfo=UTC)
    async with sessions() as session:
        await log_events(
            session,
            [
                NewEvent(
                    cluster_id=cluster_id,
                    type=EventType.UPDATED,
                    status=None,
                    changes={
                        "cpu_capacity_cores": (Decimal("3.500"), Decimal("4")),
                        "last_heartbeat_at": (None, seen),
                        "labels": ({"env": "prod", "tier": "é"}, {}),
                        "node_count": (2, 3),
                    },
                    message="ünïcode",
                )
            ],
        )
        await session.commit()
    async with sessions() as session:
        page = await list_events(session, cluster_ids=[cluster_id], types=[EventType.UPDATED])
    (event,) = page.items
    assert event.changes == {
        "cpu_capacity_cores": ["3.5", "4"],
        "last_heartbeat_at": [None, "2026-11-26T04:30:15.123456+00:00"],
        "labels": [{"env": "prod", "tier": "é"}, {}],
        "node_count": [2, 3],
    }
    assert event.message == "ünïcode"
