"""Event backends deliver across replicas, refuse what NOTIFY cannot carry, and survive outages."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import asyncpg
import pytest
from broadcaster import Broadcast, Event
from broadcaster._backends.memory import MemoryBackend
from broadcaster._base import Subscriber

from fleetql.events.backends import (
    RESYNC,
    BackendDisconnected,
    PostgresBackend,
    ResilientBackend,
    create_backend,
    url_location,
)
from tests.conftest import PostgresServer, RestartablePostgres

CHANNEL = "fleetql_test_events"


@pytest.fixture(scope="session")
def events_url(postgres: PostgresServer) -> str:
    """A database of its own, so terminating LISTEN connections here touches no other test."""
    return postgres.create_database("fleetql_events_test")


async def eventually(condition: Callable[[], bool], *, within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def next_event(subscriber: Subscriber, *, within: float = 5) -> Event:
    async with asyncio.timeout(within):
        return await subscriber.get()


async def terminate_backend(admin_dsn: str, pid: int | None) -> None:
    assert pid is not None
    connection = await asyncpg.connect(admin_dsn)
    try:
        assert await connection.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await connection.close()


def inner_postgres(backend: ResilientBackend) -> PostgresBackend:
    assert isinstance(backend.inner, PostgresBackend)
    return backend.inner


async def test_an_event_published_by_one_replica_reaches_another(events_url: str) -> None:
    async with (
        Broadcast(backend=PostgresBackend(events_url)) as publisher,
        Broadcast(backend=PostgresBackend(events_url)) as listener,
        listener.subscribe(CHANNEL) as subscriber,
    ):
        await publisher.publish(CHANNEL, "cluster 42 changed")
        assert await next_event(subscriber) == Event(CHANNEL, "cluster 42 changed")


async def test_fifty_concurrent_publishes_on_the_listening_backend_all_arrive(
    events_url: str,
) -> None:
    async with (
        Broadcast(backend=PostgresBackend(events_url)) as broadcast,
        broadcast.subscribe(CHANNEL) as subscriber,
    ):
        messages = {f"event {i}" for i in range(50)}
        await asyncio.gather(*(broadcast.publish(CHANNEL, message) for message in messages))
        received = {(await next_event(subscriber)).message for _ in messages}
        assert received == messages


async def test_a_payload_of_8000_bytes_is_refused_before_sending(events_url: str) -> None:
    async with (
        Broadcast(backend=PostgresBackend(events_url)) as broadcast,
        broadcast.subscribe(CHANNEL) as subscriber,
    ):
        with pytest.raises(ValueError, match="8000 bytes"):
            await broadcast.publish(CHANNEL, "x" * 8000)
        with pytest.raises(ValueError, match="8000 bytes"):
            await broadcast.publish(CHANNEL, "é" * 4000)  # counted in bytes, not characters
        await broadcast.publish(CHANNEL, "y" * 7999)
        assert (await next_event(subscriber)).message == "y" * 7999


@pytest.mark.parametrize(
    "channel", ["", "clusters; DROP TABLE clusters", 'a"b', "1st", "events.v1", "a" * 64]
)
async def test_a_channel_that_is_not_a_short_identifier_is_refused(
    events_url: str, channel: str
) -> None:
    backend = PostgresBackend(events_url)
    await backend.connect()
    try:
        with pytest.raises(ValueError, match="channel"):
            await backend.publish(channel, "1")
        with pytest.raises(ValueError, match="channel"):
            await backend.subscribe(channel)
    finally:
        await backend.disconnect()


async def test_postgres_backend_reports_a_lost_listen_connection_once_and_relistens(
    postgres: PostgresServer, events_url: str
) -> None:
    backend = PostgresBackend(events_url)
    await backend.connect()
    try:
        await backend.subscribe(CHANNEL)
        first_pid = backend.listen_pid
        await terminate_backend(postgres.admin_dsn, first_pid)
        with pytest.raises(BackendDisconnected):
            async with asyncio.timeout(5):
                await backend.next_published()
        await backend.subscribe("fleetql_test_later")  # while lost: LISTENed at reconnect
        await backend.reconnect()
        assert backend.listen_pid not in (None, first_pid)
        await backend.publish("fleetql_test_later", "later")
        await backend.publish(CHANNEL, "again")
        async with asyncio.timeout(5):
            received = [await backend.next_published(), await backend.next_published()]
        assert received == [Event("fleetql_test_later", "later"), Event(CHANNEL, "again")]
    finally:
        await backend.disconnect()


async def test_resilient_backend_resyncs_and_resumes_after_its_listen_connection_is_killed(
    postgres: PostgresServer, events_url: str
) -> None:
    backend = ResilientBackend(PostgresBackend(events_url), initial_backoff=0.01)
    async with (
        Broadcast(backend=backend) as broadcast,
        broadcast.subscribe(CHANNEL) as subscriber,
    ):
        first_pid = inner_postgres(backend).listen_pid
        await terminate_backend(postgres.admin_dsn, first_pid)

        assert await next_event(subscriber) == Event(CHANNEL, RESYNC)
        assert backend.reconnects == 1
        assert backend.connected
        assert inner_postgres(backend).listen_pid not in (None, first_pid)
        await broadcast.publish(CHANNEL, "after")
        assert await next_event(subscriber) == Event(CHANNEL, "after")


async def test_resilient_backend_resyncs_and_resumes_after_postgres_restarts(
    private_postgres: RestartablePostgres,
) -> None:
    backend = ResilientBackend(
        PostgresBackend(private_postgres.uri, timeout=2), initial_backoff=0.05, max_backoff=0.2
    )
    async with (
        Broadcast(backend=backend) as broadcast,
        broadcast.subscribe(CHANNEL) as subscriber,
    ):
        await broadcast.publish(CHANNEL, "before")
        assert await next_event(subscriber) == Event(CHANNEL, "before")

        await private_postgres.stop()  # PostgreSQL goes away
        await eventually(lambda: not backend.connected, within=5, what="the loss")
        with pytest.raises(OSError):  # fails fast and clearly, does not hang
            await broadcast.publish(CHANNEL, "lost")

        await private_postgres.start()
        assert await next_event(subscriber, within=10) == Event(CHANNEL, RESYNC)
        assert backend.reconnects == 1
        await broadcast.publish(CHANNEL, "after")
        assert await next_event(subscriber) == Event(CHANNEL, "after")


class FreezingProxy:
    """A TCP proxy to the server's Unix socket that can stop forwarding, like a dead network."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(self.socket_path)
        self._writers += [writer, upstream_writer]
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            await self.flowing.wait()
            sink.write(data)
            await sink.drain()
        sink.close()


async def test_a_publish_into_a_dead_network_times_out_instead_of_hanging(
    postgres: PostgresServer, events_url: str
) -> None:
    socket_dir = urlsplit(events_url).query.removeprefix("host=")
    async with FreezingProxy(f"{socket_dir}/.s.PGSQL.5432") as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/fleetql_events_test"
        backend = PostgresBackend(url, timeout=0.3)
        await backend.connect()
        try:
            await backend.publish(CHANNEL, "through the proxy")
            proxy.flowing.clear()
            with pytest.raises(TimeoutError, match=r"timed out after 0\.3 s"):
                await backend.publish(CHANNEL, "into the void")
        finally:
            await backend.disconnect()


class FlakyMemoryBackend(MemoryBackend):
    """broadcaster's memory backend, with a listener that breaks and connects that fail."""

    def __init__(self) -> None:
        super().__init__("memory://")
        self.failed_connects = 0
        self.connects = 0

    async def connect(self) -> None:
        if self.failed_connects > 0:
            self.failed_connects -= 1
            raise ConnectionRefusedError("the bus is down")
        self.connects += 1
        await super().connect()

    async def disconnect(self) -> None:
        self._subscribed.clear()
        await super().disconnect()

    async def break_listener(self, *, failed_connects: int) -> None:
        self.failed_connects = failed_connects
        await self._published.put(Event("broken", "broken"))

    async def next_published(self) -> Event:
        event = await super().next_published()
        if event.channel == "broken":
            raise ConnectionResetError("the bus dropped us")
        return event


async def test_resilient_backend_reconnects_any_backend_with_backoff_and_resubscribes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    inner = FlakyMemoryBackend()
    backend = ResilientBackend(
        inner, label="memory://", initial_backoff=0.1, max_backoff=0.3, sleep=sleep
    )
    await backend.connect()
    try:
        await backend.subscribe("broken")
        await backend.subscribe("a")
        await backend.subscribe("b")
        caplog.set_level(logging.WARNING, logger="fleetql.events.backends")
        await inner.break_listener(failed_connects=3)

        async with asyncio.timeout(5):
            resyncs = [await backend.next_published() for _ in range(3)]
        assert resyncs == [Event(name, RESYNC) for name in ("a", "b", "broken")]
        assert sleeps == [0.1, 0.2, 0.3]
        assert backend.reconnects == 1
        assert backend.connected
        assert inner._subscribed == {"a", "b", "broken"}

        await backend.publish("a", "after")
        async with asyncio.timeout(5):
            assert await backend.next_published() == Event("a", "after")
        assert "memory://" in caplog.text
        assert "ConnectionResetError" in caplog.text
    finally:
        await backend.disconnect()


def test_logged_locations_carry_no_credentials() -> None:
    assert (
        url_location("postgresql+asyncpg://fleetql:s3cret@db.example:5432/fleet?sslmode=require")
        == "postgresql+asyncpg://db.example"
    )
    assert url_location("postgresql://postgres@/fleet?host=/run/pg") == "postgresql:///run/pg"
    assert url_location("redis://:s3cret@cache:6379/0") == "redis://cache"


async def test_create_backend_builds_a_resilient_memory_backend() -> None:
    backend = create_backend("memory://", database_url=None)
    assert isinstance(backend, ResilientBackend)
    assert isinstance(backend.inner, MemoryBackend)
    async with Broadcast(backend=backend) as broadcast, broadcast.subscribe(CHANNEL) as subscriber:
        await broadcast.publish(CHANNEL, "hello")
        assert await next_event(subscriber) == Event(CHANNEL, "hello")


async def test_create_backend_with_a_bare_postgres_url_uses_the_database(
    events_url: str,
) -> None:
    backend = create_backend("postgres://", database_url=events_url)
    assert isinstance(backend, ResilientBackend)
    assert isinstance(backend.inner, PostgresBackend)
    async with Broadcast(backend=backend) as broadcast, broadcast.subscribe(CHANNEL) as subscriber:
        await broadcast.publish(CHANNEL, "hello")
        assert await next_event(subscriber) == Event(CHANNEL, "hello")


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+asyncpg"])
def test_create_backend_accepts_every_postgres_spelling(scheme: str, events_url: str) -> None:
    url = events_url.replace("postgresql+asyncpg", scheme, 1)
    backend = create_backend(url, database_url=None)
    assert isinstance(backend, ResilientBackend)
    assert isinstance(backend.inner, PostgresBackend)


def test_create_backend_refuses_a_bare_postgres_url_without_a_database() -> None:
    with pytest.raises(ValueError, match="configured database"):
        create_backend("postgres://", database_url=None)


@pytest.mark.parametrize("url", ["kafka://broker:9092", "amqp://u:s3cret@mq/", "no-scheme"])
def test_create_backend_refuses_an_unknown_scheme_and_lists_the_supported_ones(url: str) -> None:
    with pytest.raises(ValueError, match=r"memory://.*postgres://.*redis://") as refused:
        create_backend(url, database_url=None)
    assert "s3cret" not in str(refused.value)


@pytest.mark.skipif(importlib.util.find_spec("redis") is not None, reason="redis is installed")
def test_create_backend_says_to_install_redis_for_a_redis_url() -> None:
    with pytest.raises(ValueError, match="install redis to use a redis:// events URL"):
        create_backend("redis://cache:6379/0", database_url=None)
