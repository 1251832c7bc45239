"""/livez and /readyz, including while PostgreSQL is away."""

from __future__ import annotations

import asyncio

import httpx

from fleetql.app import create_app
from fleetql.config import load_settings
from fleetql.crypto import EncryptionKey
from tests.conftest import RestartablePostgres, ThreadedServer


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
