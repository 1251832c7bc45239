"""Reads running at the same time in one context share a connection, given back with the last."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from fleetql.resolvers.context import SharedReads
from tests.conftest import GraphQLClient
from tests.kubeconfigs import KubeconfigFactory


def _shared_reads(sessions: async_sessionmaker[AsyncSession]) -> SharedReads:
    """Reads on the test database's engine (the one ``sessions`` is bound to)."""
    engine: AsyncEngine = sessions.kw["bind"]
    return SharedReads(engine)


async def _backend_pid(reads: SharedReads, started: asyncio.Event, go: asyncio.Event) -> int:
    async with reads.connection() as connection:
        started.set()
        await go.wait()
        return int(await connection.scalar(text("SELECT pg_backend_pid()")) or 0)


async def test_concurrent_reads_share_one_connection_and_later_ones_get_another(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    reads = _shared_reads(sessions)
    started, go = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(_backend_pid(reads, started, go))
    await started.wait()
    # The second reader waits for its turn on the same connection.
    second = asyncio.create_task(_backend_pid(reads, asyncio.Event(), go))
    go.set()
    one, two = await asyncio.gather(first, second)
    assert one == two != 0
    async with reads.connection() as connection:
        # Both were done: the shared connection was given back and this is a new one, in a new
        # transaction (a shared one would still be in the first transaction).
        assert connection.in_transaction() is False
        await connection.execute(text("SELECT 1"))
        assert connection.in_transaction() is True


async def test_a_failed_read_does_not_abort_the_next_readers_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    reads = _shared_reads(sessions)
    started = asyncio.Event()

    async def failing() -> None:
        async with reads.connection() as connection:
            started.set()
            await connection.execute(text("SELECT 1 / 0"))

    async def after() -> int:
        await started.wait()
        async with reads.connection() as connection:
            return int(await connection.scalar(text("SELECT 41 + 1")) or 0)

    results = await asyncio.gather(failing(), after(), return_exceptions=True)
    assert isinstance(results[0], DBAPIError)
    assert results[1] == 42


async def test_a_cancelled_read_leaves_the_waiting_readers_a_working_connection(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    reads = _shared_reads(sessions)
    started = asyncio.Event()

    async def slow() -> None:
        async with reads.connection() as connection:
            started.set()
            await connection.execute(text("SELECT pg_sleep(30)"))

    async def waiting() -> int:
        async with reads.connection() as connection:
            return int(await connection.scalar(text("SELECT 7")) or 0)

    stuck = asyncio.create_task(slow())
    await started.wait()
    after = asyncio.create_task(waiting())
    await asyncio.sleep(0.1)  # let the statement start; the result does not depend on it
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    assert await asyncio.wait_for(after, timeout=20) == 7


async def test_a_clusters_events_and_availability_answer_together(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    imported = await api.data(
        "mutation($input: ImportClusterInput!) { importCluster(input: $input) "
        "{ cluster { id } userErrors { code } } }",
        {"input": {"name": "shared-reads", "kubeconfig": kubeconfigs.yaml()}},
    )
    cluster_id = imported["importCluster"]["cluster"]["id"]
    data = await api.data(
        "query($id: ID!) { cluster(id: $id) { events(first: 5) { items { type } } "
        'availability(window: "7d") { ratio transitions } flapping } }',
        {"id": cluster_id},
    )
    cluster = data["cluster"]
    assert [item["type"] for item in cluster["events"]["items"]] == ["IMPORTED"]
    assert cluster["availability"]["transitions"] >= 0
    assert cluster["flapping"] is False
    # A refused argument (raised before any read) fails its field and nothing else breaks.
    body = await api.post(
        'query($id: ID!) { cluster(id: $id) { events { items { type } } availability(window: "x")'
        " { ratio } } }",
        {"id": cluster_id},
    )
    assert body["errors"][0]["path"] == ["cluster", "availability"]
    assert body["errors"][0]["message"].startswith("window")
    assert body["data"] is None or body["data"]["cluster"] is None
