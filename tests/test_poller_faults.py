"""Each fault the simulator injects reaches the poller as the status and error code it stands for.

The poller runs against the real PostgreSQL and the simulator over TLS, as in test_poller.py;
clusters are imported through the GraphQL API and their states read back through it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.config import PollerSettings, Settings
from fleetql.crypto import EncryptionKey, KubeconfigCipher
from fleetql.db.engine import create_engine, create_session_factory
from fleetql.poller.pool import ClientPool
from fleetql.poller.worker import Poller
from fleetql.sim import Simulator
from tests.conftest import GraphQLClient, asyncpg_dsn

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { code message } }
}
"""
STATE = """
query($id: ID!) {
  cluster(id: $id) {
    status nodeCount readyNodeCount consecutiveFailures lastError { code message }
  }
}
"""


@dataclass
class Fleet:
    api: GraphQLClient
    sim: Simulator
    sessions: async_sessionmaker[AsyncSession]
    cipher: KubeconfigCipher
    database_url: str

    async def add(self, name: str, **kubeconfig: Any) -> str:
        """Import the simulator's cluster ``name``; ``kubeconfig`` goes to ``sim.kubeconfig``."""
        document = self.sim.kubeconfig_yaml(name, **kubeconfig)
        data = await self.api.data(IMPORT, {"input": {"name": name, "kubeconfig": document}})
        payload = data["importCluster"]
        assert payload["userErrors"] == [], payload["userErrors"]
        return str(payload["cluster"]["id"])

    def poller(self, **settings: Any) -> Poller:
        defaults: dict[str, Any] = {
            "client_timeout": "2s",
            "retry_attempts": 1,
            "retry_delay": "10ms",
            "max_concurrency": 10,
            "status_threshold": 1,  # damping is tested in test_poller.py
        }
        return Poller(
            sessions=self.sessions,
            cipher=self.cipher,
            settings=PollerSettings.model_validate(defaults | settings),
            pool=ClientPool(),
        )

    async def state(self, cluster_id: str) -> dict[str, Any]:
        result: dict[str, Any] = (await self.api.data(STATE, {"id": cluster_id}))["cluster"]
        return result

    async def make_due(self) -> None:
        connection = await asyncpg.connect(asyncpg_dsn(self.database_url))
        try:
            await connection.execute("UPDATE cluster_states SET next_check_at = now()")
        finally:
            await connection.close()

    async def sweep_until(
        self,
        poller: Poller,
        cluster_id: str,
        done: Callable[[dict[str, Any]], bool],
        *,
        within: float = 5.0,
    ) -> dict[str, Any]:
        """Sweep (retries are due 10 ms after a failure) until the state satisfies ``done``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            await poller.sweep()
            state = await self.state(cluster_id)
            if done(state):
                return state
            assert loop.time() < deadline, f"state not reached in {within}s: {state}"
            await asyncio.sleep(0.01)


@pytest.fixture
async def fleet(api: GraphQLClient, settings: Settings, database_url: str) -> AsyncIterator[Fleet]:
    engine = create_engine(database_url, settings.database)
    assert settings.encryption.key is not None
    cipher = KubeconfigCipher(EncryptionKey.from_base64(settings.encryption.key))
    try:
        async with Simulator() as sim:
            yield Fleet(api, sim, create_session_factory(engine), cipher, database_url)
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        # /api/v1/nodes alone is refused: the check completes without nodes.
        ("forbid_nodes", "DEGRADED", "FORBIDDEN"),
        # The API answers, but not sanely: unhealthy.
        ("malformed_json", "UNHEALTHY", "INVALID_RESPONSE"),
        # No answer at all, or none we can trust or are allowed: unreachable.
        ("reset_connections", "UNREACHABLE", "CONNECTION_RESET"),
        ("wrong_ca", "UNREACHABLE", "TLS"),
        ("auth_fails", "UNREACHABLE", "UNAUTHORIZED"),
    ],
)
async def test_fault_maps_to_its_status_and_error_and_recovery_clears_it(
    fleet: Fleet, fault: str, status: str, code: str
) -> None:
    cluster = fleet.sim.add_cluster("faulty", own_port=True, node_count=3)
    cluster_id = await fleet.add("faulty")
    # One poller throughout: the fault meets a pooled client with a keep-alive connection.
    poller = fleet.poller()
    try:
        await poller.sweep()
        assert (await fleet.state(cluster_id))["status"] == "HEALTHY"

        setattr(cluster.spec, fault, True)
        await fleet.make_due()
        state = await fleet.sweep_until(poller, cluster_id, lambda s: s["status"] == status)
        assert state["lastError"]["code"] == code, state["lastError"]
        if status == "DEGRADED":
            assert state["consecutiveFailures"] == 0  # the check completed
        else:
            assert state["consecutiveFailures"] >= 1
        if fault == "forbid_nodes":
            assert (
                'User "kubernetes-admin" cannot list resource "nodes"'
                in (state["lastError"]["message"])
            )
            # Node figures are those of the last complete listing.
            assert (state["nodeCount"], state["readyNodeCount"]) == (3, 3)

        setattr(cluster.spec, fault, False)
        await fleet.make_due()
        await poller.sweep()
        state = await fleet.state(cluster_id)
        assert state["status"] == "HEALTHY"
        assert state["lastError"] is None and state["consecutiveFailures"] == 0
    finally:
        await poller.pool.aclose()


async def test_client_certificate_kubeconfig_is_checked_healthy_through_the_pool(
    fleet: Fleet,
) -> None:
    cluster = fleet.sim.add_cluster("certified", node_count=2)
    cluster_id = await fleet.add("certified", auth="client-certificate")
    poller = fleet.poller()
    try:
        await poller.sweep()
        await fleet.make_due()
        await poller.sweep()
    finally:
        await poller.pool.aclose()
    state = await fleet.state(cluster_id)
    assert (state["status"], state["nodeCount"], state["lastError"]) == ("HEALTHY", 2, None)
    assert (poller.pool.stats.misses, poller.pool.stats.hits) == (1, 1)
    assert cluster.requests_by_path["/api/v1/nodes"] == 2


async def test_concurrent_requests_never_exceed_the_poller_limit(fleet: Fleet) -> None:
    clusters = fleet.sim.fleet(12, nodes=3, prefix="slow", delay=0.1)
    for cluster in clusters:
        await fleet.add(cluster.name)
    fleet.sim.reset_peaks()
    poller = fleet.poller(max_concurrency=3)
    running = asyncio.create_task(poller.run(), name="test.poller")
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while poller.stats.checks < 12:
            assert not running.done(), "the poller stopped"
            assert loop.time() < deadline, f"only {poller.stats.checks} checks in 15 s"
            assert fleet.sim.in_flight <= 3
            await asyncio.sleep(0.01)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await poller.pool.aclose()
    assert fleet.sim.peak_in_flight == 3
    assert {cluster.peak_in_flight for cluster in clusters} == {1}
    assert {cluster.requests for cluster in clusters} == {4}
