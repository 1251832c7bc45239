"""Graceful shutdown: a real ``fleetql serve`` process, real clients, a real SIGTERM.

The in-flight query is ``resyncCluster(wait: true)`` on a cluster whose simulated API server
holds every answer: the replica's poller has claimed it and is waiting on it when the signal
comes. The draining replica must release that claim, and a second replica (a poller in this
test, on the same database) must then check the cluster at once, long before the claim's lease
would have run out; the draining replica's query sees that check and completes with its data.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.exceptions import InvalidStatus

from fleetql.app import create_app
from fleetql.config import PollerSettings, Settings
from fleetql.crypto import EncryptionKey, KubeconfigCipher
from fleetql.db.engine import create_engine, create_session_factory
from fleetql.poller.pool import ClientPool
from fleetql.poller.worker import Poller
from fleetql.sim import Simulator
from tests.conftest import (
    GraphQLClient,
    PostgresServer,
    ThreadedServer,
    _create_database,
    asyncpg_dsn,
    free_port,
)
from tests.wsclient import GraphQLWebSocket

REPO = Path(__file__).resolve().parents[1]
GRACE = 20.0

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { code message } }
}
"""
RESYNC = """
mutation($id: ID!) {
  resyncCluster(id: $id, wait: true) {
    cluster { name status lastCheckedAt } userErrors { code message }
  }
}
"""
STATUS = "query($id: ID!) { cluster(id: $id) { status lastCheckedAt } }"
WATCH = "subscription { clusterStateChanged { id type clusterId } }"


@dataclass
class Replica:
    """A ``fleetql serve`` process on its own port."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def shutdown_database(postgres: PostgresServer) -> str:
    asyncio.run(_create_database(postgres.admin_dsn, "fleetql_shutdown"))
    return postgres.url("fleetql_shutdown")


@pytest.fixture
def key() -> EncryptionKey:
    return EncryptionKey.generate()


@pytest.fixture
def replica(shutdown_database: str, key: EncryptionKey, tmp_path: Path) -> Iterator[Replica]:
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLEETQL_")}
    env.pop("DATABASE_URL", None)
    env.update(
        {
            "FLEETQL_DATABASE__URL": shutdown_database,
            "FLEETQL_ENCRYPTION__KEY": key.to_base64(),
            "FLEETQL_SERVER__SHUTDOWN_GRACE": f"{GRACE:.0f}s",
            "FLEETQL_POLLER__CHECK_INTERVAL": "1h",
            # Long enough that the held check is still in flight when the signal comes.
            "FLEETQL_POLLER__CLIENT_TIMEOUT": "60s",
            "FLEETQL_LOG__FORMAT": "json",
        }
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "fleetql", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Replica(process, port, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


async def wait_ready(replica: Replica, http: httpx.AsyncClient) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    while True:
        assert replica.process.poll() is None, "\n".join(replica.log_lines())
        try:
            if (await http.get(f"{replica.base}/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert loop.time() < deadline, "the server did not become ready"
        await asyncio.sleep(0.1)


async def poll_until(condition: object, what: str, within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():  # type: ignore[operator]
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def second_replica(
    shutdown_database: str, key: EncryptionKey
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(shutdown_database, Settings().database)
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


async def test_sigterm_drains_queries_closes_websockets_with_1012_and_releases_claims(
    replica: Replica,
    second_replica: async_sessionmaker[AsyncSession],
    shutdown_database: str,
    key: EncryptionKey,
) -> None:
    database = await asyncpg.connect(asyncpg_dsn(shutdown_database))
    async with Simulator() as sim, httpx.AsyncClient(timeout=60) as http:
        try:
            await wait_ready(replica, http)
            api = GraphQLClient(http, f"{replica.base}/graphql")
            slow = sim.add_cluster("slow", node_count=2)
            data = await api.data(
                IMPORT, {"input": {"name": "slow", "kubeconfig": sim.kubeconfig_yaml("slow")}}
            )
            cluster_id = data["importCluster"]["cluster"]["id"]

            async def first_check_done() -> bool:
                state = (await api.data(STATUS, {"id": cluster_id}))["cluster"]
                return bool(state["status"] != "UNKNOWN")

            await poll_until(first_check_done, "the first check")

            # From now on the cluster holds every answer: a check of it stays in flight.
            slow.spec.delay = 120.0
            async with GraphQLWebSocket.open(f"ws://127.0.0.1:{replica.port}/graphql") as ws:
                await ws.subscribe(WATCH)
                await ws.query("{ clusters(limit: 1) { total } }")  # the subscription is live
                resync = asyncio.create_task(api.post(RESYNC, {"id": cluster_id}))

                async def check_in_flight() -> bool:
                    claimed = await database.fetchval(
                        "SELECT claimed_until FROM cluster_states WHERE cluster_id = $1",
                        cluster_id,
                    )
                    return claimed is not None and slow.in_flight > 0

                await poll_until(check_in_flight, "the poller to claim the held cluster")

                loop = asyncio.get_running_loop()
                signalled = loop.time()
                replica.process.send_signal(signal.SIGTERM)

                # The cluster answers again, for whichever replica checks it next.
                slow.spec.delay = 0.0
                other = Poller(
                    sessions=second_replica,
                    cipher=KubeconfigCipher(key),
                    settings=PollerSettings.model_validate(
                        {"client_timeout": "5s", "check_interval": "1h"}
                    ),
                    pool=ClientPool(),
                )
                running = asyncio.create_task(other.run(), name="test.second-replica")
                try:
                    await asyncio.wait_for(ws.closed.wait(), 15)
                    assert ws.connection.close_code == 1012
                    assert ws.connection.close_reason == "service restart"

                    # The query that was running when the signal came completes, with data.
                    response = await asyncio.wait_for(resync, GRACE)
                    payload = response["data"]["resyncCluster"]
                    assert payload["userErrors"] == [], payload
                    assert payload["cluster"]["name"] == "slow"
                    assert payload["cluster"]["status"] == "HEALTHY"

                    code = await asyncio.to_thread(replica.process.wait, GRACE + 5)
                    elapsed = loop.time() - signalled
                    assert code == 0, "\n".join(replica.log_lines()[-30:])
                    assert elapsed < GRACE, f"exited {elapsed:.1f}s after SIGTERM"
                    # The other replica checked the released cluster long before the lease
                    # (4 x 60 s + 30 s) would have run out.
                    assert other.stats.checks >= 1
                finally:
                    await other.stop()
                    await asyncio.gather(running, return_exceptions=True)
                    await other.pool.aclose()

            claimed = await database.fetch("SELECT claimed_until FROM cluster_states")
            assert [row["claimed_until"] for row in claimed] == [None]
        finally:
            await database.close()

    lines = [orjson.loads(line) for line in replica.log_lines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assert "released 1 claims for another replica" in messages
    assert any(m.startswith("shutting down: /readyz answers 503") for m in messages)


async def test_readyz_turns_503_as_soon_as_the_drain_starts(
    settings: Settings, server: ThreadedServer
) -> None:
    app = create_app(settings, migrate=False)  # ``server`` migrated the database
    with ThreadedServer(app, settings) as draining:
        base = draining.url.removesuffix("/graphql")
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{base}/readyz")).status_code == 200
            assert draining.loop is not None
            draining.loop.call_soon_threadsafe(app.state.drain.begin)

            async def unready() -> bool:
                return (await http.get(f"{base}/readyz")).status_code == 503

            await poll_until(unready, "/readyz to fail", within=10)
            answer = await http.get(f"{base}/readyz")
            assert answer.json()["failed"] == {"shutdown": "the server is shutting down"}
            assert (await http.get(f"{base}/livez")).status_code == 200
        # A console connecting now is turned away, to another replica.
        with pytest.raises(InvalidStatus) as refused:
            async with GraphQLWebSocket.open(draining.ws_url):
                pass
        assert refused.value.response.status_code == 403
