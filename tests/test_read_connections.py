"""Reads without a ping per checkout: one AUTOCOMMIT connection per request, and a read whose
pooled connection died is answered on a new one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from fleetql.app import create_app
from fleetql.config import Settings, load_settings
from fleetql.crypto import EncryptionKey
from fleetql.db.engine import (
    APPLICATION_NAME,
    create_engine,
    create_read_engine,
)
from fleetql.resolvers.context import SharedReads
from tests.conftest import GraphQLClient, RestartablePostgres, ThreadedServer, asyncpg_dsn
from tests.kubeconfigs import KubeconfigFactory

IMPORT = (
    "mutation($input: ImportClusterInput!) { importCluster(input: $input) "
    "{ cluster { id } userErrors { code } } }"
)
ONE = "query($id: ID!) { cluster(id: $id) { id name } }"
# The server's background tasks, which take connections of their own.
BACKGROUND = {"events.relay", "events.dispatch", "housekeeping", "auth.sockets", "pool.retire"}
PAGE = "{ clusters(limit: 5) { total items { name } } }"


def _small_pool(settings: Settings, **database: Any) -> Settings:
    raw = settings.model_dump()
    raw["database"].update(database)
    return Settings.model_validate(raw)


@pytest.fixture
def small_server(settings: Settings, api: GraphQLClient) -> Iterator[ThreadedServer]:
    """A server with one pooled connection and no overflow: a request that kept its
    connection would make the next one wait ``pool_timeout`` and fail."""
    small = _small_pool(settings, pool_size=1, max_overflow=0, pool_timeout=timedelta(seconds=3))
    with ThreadedServer(create_app(small, migrate=False), small) as running:
        yield running


@pytest.fixture
async def small(small_server: ThreadedServer) -> AsyncIterator[GraphQLClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield GraphQLClient(http, small_server.url)


async def _import(api: GraphQLClient, kubeconfigs: KubeconfigFactory, name: str) -> str:
    data = await api.data(IMPORT, {"input": {"name": name, "kubeconfig": kubeconfigs.yaml()}})
    assert data["importCluster"]["userErrors"] == []
    return str(data["importCluster"]["cluster"]["id"])


async def _pool_backends(database_url: str, *, terminate: bool = False) -> int:
    """fleetql's pooled connections to the test database (terminated, when asked)."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        action = "pg_terminate_backend(pid)" if terminate else "pid"
        rows = await connection.fetch(
            f"SELECT {action} FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database() "
            "AND pid <> pg_backend_pid()",
            APPLICATION_NAME,
        )
        return len(rows)
    finally:
        await connection.close()


async def test_reads_answer_after_every_pooled_connection_was_terminated(
    small: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster_id = await _import(small, kubeconfigs, "survivor")
    assert (await small.data(ONE, {"id": cluster_id}))["cluster"]["name"] == "survivor"
    assert await _pool_backends(database_url, terminate=True) >= 1
    # The pooled connection is dead and nothing pinged it: the read is retried on a new one.
    with caplog.at_level(logging.WARNING, logger="fleetql.resolvers.context"):
        assert (await small.data(ONE, {"id": cluster_id}))["cluster"]["name"] == "survivor"
    assert "reading again on a new one" in caplog.text
    await _pool_backends(database_url, terminate=True)
    page = await small.data(PAGE)
    assert page["clusters"]["total"] == 1
    for _ in range(20):
        assert (await small.data(ONE, {"id": cluster_id}))["cluster"]["id"] == cluster_id
    # The dead connections were replaced, not added to: one pooled connection per server here
    # (small's) and the ``api`` server's pool of 5 at most.
    assert await _pool_backends(database_url) <= 1 + 5 + 10


async def test_a_request_that_fails_gives_its_connection_back(
    small: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    cluster_id = await _import(small, kubeconfigs, "failing")
    # The first field reads (taking the request's connection), the second is refused.
    failing = "query($id: ID!) { cluster(id: $id) { name } clusters(limit: -1) { total } }"
    for _ in range(5):
        body = await small.post(failing, {"id": cluster_id})
        assert body["errors"][0]["extensions"]["argument"] == "limit"
    # A filter refused while the request holds its connection.
    broken = await small.post('{ clusters(filter: {labelSelector: "env in ("}) { total } }')
    assert "filter.labelSelector" in broken["errors"][0]["message"]
    # With its single connection kept by any of them, this would wait 3 s and fail.
    for _ in range(3):
        data = await small.data(ONE, {"id": cluster_id})
        assert data["cluster"]["name"] == "failing"


async def test_a_requests_reads_take_one_connection_from_the_pool(
    server: ThreadedServer, api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    cluster_id = await _import(api, kubeconfigs, "one-checkout")
    engine: AsyncEngine = server.app.state.services.reads
    checkouts: list[str] = []

    def count(*_args: object) -> None:
        task = asyncio.current_task()
        name = task.get_name() if task is not None else "-"
        if name not in BACKGROUND:  # the server's own tasks share the pool
            checkouts.append(name)

    event.listen(engine.sync_engine.pool, "checkout", count)
    try:
        data = await api.data(
            "query($id: ID!) { cluster(id: $id) { name events(first: 5) { items { type } } "
            'availability(window: "7d") { transitions } flapping } '
            "clusters(limit: 5) { total items { name } } }",
            {"id": cluster_id},
        )
    finally:
        event.remove(engine.sync_engine.pool, "checkout", count)
    assert data["cluster"]["name"] == "one-checkout"
    assert data["clusters"]["total"] == 1
    # Five resolvers read, some of them one after another: one checkout.
    assert len(checkouts) == 1, checkouts


async def test_read_sessions_run_each_statement_outside_a_transaction(
    settings: Settings, database_url: str, api: GraphQLClient
) -> None:
    engine = create_engine(database_url, settings.database)
    try:
        reads = SharedReads(create_read_engine(engine))
        async with reads.connection() as connection:
            # Inside one transaction both statements would see the same transaction id.
            first = await connection.scalar(text("SELECT pg_current_xact_id()::text"))
            second = await connection.scalar(text("SELECT pg_current_xact_id()::text"))
            pid = await connection.scalar(text("SELECT pg_backend_pid()"))
            again = await connection.scalar(text("SELECT pg_backend_pid()"))
        assert first != second
        assert pid == again
    finally:
        await engine.dispose()


async def test_reads_answer_after_postgresql_restarted(
    private_postgres: RestartablePostgres, kubeconfigs: KubeconfigFactory
) -> None:
    settings = load_settings(
        environ={},
        overrides={
            "database": {"url": private_postgres.url, "pool_size": 2},
            "encryption": {"key": EncryptionKey.generate().to_base64()},
            "poller": {"enabled": False},
        },
    )
    with ThreadedServer(create_app(settings), settings) as server:
        async with httpx.AsyncClient(timeout=30) as http:
            api = GraphQLClient(http, server.url)
            cluster_id = await _import(api, kubeconfigs, "restarted")
            await asyncio.gather(*(api.data(ONE, {"id": cluster_id}) for _ in range(4)))
            await private_postgres.stop()
            await private_postgres.start()
            for _ in range(3):
                data = await api.data(ONE, {"id": cluster_id})
                assert data["cluster"]["name"] == "restarted"


async def test_pooled_connections_are_recycled_not_pinged(settings: Settings) -> None:
    configured = _small_pool(settings, pool_recycle="90s")
    engine = create_engine(str(settings.database.url), configured.database)
    try:
        pool: Any = engine.sync_engine.pool
        assert pool._recycle == 90
        assert pool._pre_ping is False
    finally:
        await engine.dispose()
    assert Settings.model_validate(settings.model_dump()).database.pool_recycle == timedelta(
        minutes=30
    )
