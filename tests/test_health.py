"""/livez and /readyz, including while PostgreSQL is away."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from fleetql.app import create_app
from fleetql.config import load_settings
from fleetql.crypto import EncryptionKey
from fleetql.db import migrations
from tests.conftest import PostgresServer, RestartablePostgres, ThreadedServer, asyncpg_dsn


async def test_live_and_ready(server: ThreadedServer) -> None:
    base = server.url.removesuffix("/graphql")
    async with httpx.AsyncClient(timeout=10) as http:
        live = await http.get(f"{base}/livez")
        ready = await http.get(f"{base}/readyz")
    assert (live.status_code, live.text) == (200, "ok\n")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_readyz_names_the_database_while_it_is_away_and_recovers(
    private_postgres: RestartablePostgres,
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
        base = server.url.removesuffix("/graphql")
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{base}/readyz")).status_code == 200
            await private_postgres.stop()
            away = await http.get(f"{base}/readyz")
            assert away.status_code == 503
            assert "database" in away.json()["failed"]
            assert (await http.get(f"{base}/livez")).status_code == 200
            await private_postgres.start()
            for _ in range(100):
                if (await http.get(f"{base}/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("/readyz did not recover after PostgreSQL came back")


@pytest.fixture
def upgrade_database(postgres: PostgresServer) -> str:
    return postgres.create_database("fleetql_health_upgrade")


async def test_readyz_fails_behind_the_code_but_not_ahead_of_it(
    upgrade_database: str, encryption_key: EncryptionKey
) -> None:
    """Rolling upgrade: the new code's migrations run first; the old replicas stay ready."""
    settings = load_settings(
        environ={},
        overrides={
            "database": {"url": upgrade_database, "pool_size": 2},
            "encryption": {"key": encryption_key.to_base64()},
            "poller": {"enabled": False},
        },
    )

    async def set_revision(revision: str) -> None:
        connection = await asyncpg.connect(asyncpg_dsn(upgrade_database))
        try:
            await connection.execute("UPDATE alembic_version SET version_num = $1", revision)
        finally:
            await connection.close()

    with ThreadedServer(create_app(settings), settings) as server:
        base = server.url.removesuffix("/graphql")
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{base}/readyz")).status_code == 200
            await set_revision("0001")  # behind: this code needs later migrations
            behind = await http.get(f"{base}/readyz")
            assert behind.status_code == 503
            assert behind.json()["failed"]["migrations"].startswith("database at 0001")
            await set_revision("9999_from_newer_code")  # ahead: newer code migrated already
            assert (await http.get(f"{base}/readyz")).status_code == 200
            await set_revision(str(migrations.head_revision()))
