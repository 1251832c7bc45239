"""The poller against the simulator over TLS and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import yaml
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.config import PollerSettings, Settings
from fleetql.crypto import EncryptionKey, KubeconfigCipher
from fleetql.db.engine import create_engine, create_session_factory
from fleetql.db.states import StateChange
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
    status pendingStatus nodeCount readyNodeCount kubernetesVersion consecutiveFailures
    lastHeartbeatAt
    cpuCapacityCores cpuAllocatableCores cpuUsageCores
    memoryCapacityBytes memoryAllocatableBytes memoryUsageBytes
    lastError { code message }
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

    async def add(self, name: str, *, token: str | None = None, **spec: Any) -> str:
        if name not in self.sim.clusters:
            self.sim.add_cluster(name, **spec)
        kubeconfig = yaml.safe_dump(self.sim.kubeconfig(name, token=token))
        data = await self.api.data(IMPORT, {"input": {"name": name, "kubeconfig": kubeconfig}})
        payload = data["importCluster"]
        assert payload["userErrors"] == [], payload["userErrors"]
        return str(payload["cluster"]["id"])

    def poller(
        self, *, pool: ClientPool | None = None, publish: Any = None, **settings: Any
    ) -> Poller:
        defaults: dict[str, Any] = {
            "client_timeout": "2s",
            "retry_attempts": 2,
            "retry_delay": "10ms",
            "max_concurrency": 10,
            # Damping has tests of its own; the others see each status at once.
            "status_threshold": 1,
        }
        poller = Poller(
            sessions=self.sessions,
            cipher=self.cipher,
            settings=PollerSettings.model_validate(defaults | settings),
            pool=pool if pool is not None else ClientPool(),
        )
        if publish is not None:
            poller.publish = publish
        return poller

    async def state(self, cluster_id: str) -> dict[str, Any]:
        result: dict[str, Any] = (await self.api.data(STATE, {"id": cluster_id}))["cluster"]
        return result

    async def make_due(self) -> None:
        connection = await asyncpg.connect(asyncpg_dsn(self.database_url))
        try:
            await connection.execute("UPDATE cluster_states SET next_check_at = now()")
        finally:
            await connection.close()


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


async def sweep(poller: Poller) -> int:
    try:
        return await poller.sweep()
    finally:
        await poller.pool.aclose()


async def test_healthy_cluster_gets_counts_capacity_usage_and_version(fleet: Fleet) -> None:
    cluster_id = await fleet.add("healthy", node_count=4, version="v1.29.3")
    assert await sweep(fleet.poller()) == 1
    state = await fleet.state(cluster_id)
    assert state["status"] == "HEALTHY"
    assert (state["nodeCount"], state["readyNodeCount"]) == (4, 4)
    assert state["kubernetesVersion"] == "v1.29.3"
    # Four nodes of the default shape: 8 CPU / 7910m allocatable, 32596084Ki / 32493684Ki.
    assert Decimal(str(state["cpuCapacityCores"])) == 32
    assert Decimal(str(state["cpuAllocatableCores"])) == Decimal("31.64")
    assert state["memoryCapacityBytes"] == 4 * 32596084 * 1024
    assert state["memoryAllocatableBytes"] == 4 * 32493684 * 1024
    assert state["cpuUsageCores"] is not None and state["memoryUsageBytes"] is not None
    assert state["lastHeartbeatAt"] is not None and state["lastError"] is None


@pytest.mark.parametrize(
    ("spec", "status", "error_code"),
    [
        ({"node_count": 3, "ready_nodes": 2}, "DEGRADED", None),
        ({"node_count": 3, "ready_nodes": 0}, "UNHEALTHY", None),
        ({"node_count": 0}, "UNHEALTHY", None),
        ({"failing_checks": ("etcd",)}, "UNHEALTHY", "API_ERROR"),
        ({"readyz_served": False}, "HEALTHY", None),
    ],
)
async def test_cluster_states_map_to_statuses(
    fleet: Fleet, spec: dict[str, Any], status: str, error_code: str | None
) -> None:
    cluster_id = await fleet.add("faulty", **spec)
    await sweep(fleet.poller())
    state = await fleet.state(cluster_id)
    assert state["status"] == status
    assert (state["lastError"] or {}).get("code") == error_code


async def test_failing_readiness_names_the_failed_check(fleet: Fleet) -> None:
    cluster_id = await fleet.add("etcd-down", failing_checks=("etcd",))
    await sweep(fleet.poller())
    assert "etcd" in (await fleet.state(cluster_id))["lastError"]["message"]


async def test_absent_metrics_api_leaves_usage_null(fleet: Fleet) -> None:
    cluster_id = await fleet.add("no-metrics", metrics_served=False)
    await sweep(fleet.poller())
    state = await fleet.state(cluster_id)
    assert state["status"] == "HEALTHY"
    assert state["cpuUsageCores"] is None and state["memoryUsageBytes"] is None


async def test_unreachable_only_after_retries_then_recovery_clears_the_error(fleet: Fleet) -> None:
    fleet.sim.add_cluster("flaky", own_port=True)
    cluster_id = await fleet.add("flaky")
    fleet.sim.cluster("flaky").down = True
    poller = fleet.poller(retry_attempts=2)
    # retry_delay is 10 ms: sweeping for a while runs the first check and both retries, and no
    # more, since the next check after giving up is a whole interval away.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while loop.time() < deadline:
        await poller.sweep()
        await asyncio.sleep(0.02)
    await poller.pool.aclose()
    assert poller.stats.checks == 3
    state = await fleet.state(cluster_id)
    assert state["status"] == "UNREACHABLE"
    assert state["consecutiveFailures"] == 3
    assert state["lastError"]["code"] == "CONNECTION_REFUSED"

    fleet.sim.cluster("flaky").down = False
    await fleet.make_due()
    await sweep(fleet.poller())
    state = await fleet.state(cluster_id)
    assert state["status"] == "HEALTHY"
    assert state["lastError"] is None and state["consecutiveFailures"] == 0


async def test_unresolvable_host_is_a_dns_error(fleet: Fleet) -> None:
    fleet.sim.add_cluster("nowhere")
    kubeconfig = fleet.sim.kubeconfig("nowhere")
    kubeconfig["clusters"][0]["cluster"]["server"] = "https://no-such-host.invalid:6443"
    data = await fleet.api.data(
        IMPORT, {"input": {"name": "nowhere", "kubeconfig": yaml.safe_dump(kubeconfig)}}
    )
    cluster_id = data["importCluster"]["cluster"]["id"]
    await sweep(fleet.poller(retry_attempts=0))
    state = await fleet.state(cluster_id)
    assert state["status"] == "UNREACHABLE"
    assert state["lastError"]["code"] == "DNS"
    assert "no-such-host.invalid" in state["lastError"]["message"]


async def test_one_failed_check_is_pending_and_two_change_the_status(fleet: Fleet) -> None:
    """Damping, one rule for every path: a new status is recorded once it held for
    status_threshold checks in a row; until then it is pendingStatus, re-checked soon."""
    cluster_id = await fleet.add("steady")
    await sweep(fleet.poller(status_threshold=2))  # a first check is recorded at once
    assert (await fleet.state(cluster_id))["status"] == "HEALTHY"
    original = fleet.sim.cluster("steady").spec.token
    fleet.sim.cluster("steady").spec.token = "rotated-elsewhere"
    poller = fleet.poller(status_threshold=2, retry_attempts=3, retry_delay="1h")
    await fleet.make_due()
    await sweep(poller)
    state = await fleet.state(cluster_id)
    assert state["status"] == "HEALTHY" and state["pendingStatus"] == "UNREACHABLE"
    assert state["lastError"]["code"] == "UNAUTHORIZED" and state["consecutiveFailures"] == 1
    await fleet.make_due()
    await sweep(poller)
    state = await fleet.state(cluster_id)
    assert state["status"] == "UNREACHABLE" and state["pendingStatus"] is None
    # Recovery is damped the same way: one good check is pending, two are recorded.
    fleet.sim.cluster("steady").spec.token = original
    for expected, pending in (("UNREACHABLE", "HEALTHY"), ("HEALTHY", None)):
        await fleet.make_due()
        await sweep(poller)
        state = await fleet.state(cluster_id)
        assert (state["status"], state["pendingStatus"]) == (expected, pending)
    await poller.pool.aclose()


async def test_refused_credentials_are_unauthorized(fleet: Fleet) -> None:
    fleet.sim.add_cluster("locked")
    cluster_id = await fleet.add("locked", token="not-the-token")
    await sweep(fleet.poller(retry_attempts=0))
    state = await fleet.state(cluster_id)
    assert state["status"] == "UNREACHABLE"
    assert state["lastError"]["code"] == "UNAUTHORIZED"
    assert "not-the-token" not in state["lastError"]["message"]


async def test_hung_cluster_times_out_within_the_client_timeout(fleet: Fleet) -> None:
    cluster_id = await fleet.add("hung", delay=30)
    poller = fleet.poller(client_timeout="300ms", retry_attempts=0)
    started = asyncio.get_running_loop().time()
    await sweep(poller)
    assert asyncio.get_running_loop().time() - started < 5
    state = await fleet.state(cluster_id)
    assert (state["status"], state["lastError"]["code"]) == ("UNREACHABLE", "TIMEOUT")


async def test_large_cluster_is_listed_page_by_page(fleet: Fleet) -> None:
    cluster_id = await fleet.add("big", node_count=1200, ready_nodes=1199)
    await sweep(fleet.poller())
    state = await fleet.state(cluster_id)
    assert (state["nodeCount"], state["readyNodeCount"]) == (1200, 1199)
    assert state["status"] == "DEGRADED"


async def test_a_malformed_node_list_is_an_invalid_response_not_a_crash(fleet: Fleet) -> None:
    from fleetql.sim.spec import NodeShape

    cluster_id = await fleet.add("garbled", node_shapes=(NodeShape(cpu_capacity="lots"),))
    poller = fleet.poller()
    await sweep(poller)
    state = await fleet.state(cluster_id)
    assert poller.stats.checks == 1
    assert state["status"] == "DEGRADED"
    assert state["lastError"]["code"] == "INVALID_RESPONSE"
    assert "lots" in state["lastError"]["message"]


async def test_two_pollers_check_each_due_cluster_once(fleet: Fleet) -> None:
    ids = [await fleet.add(f"shared-{i:02d}", delay=0.05) for i in range(16)]
    first, second = fleet.poller(max_concurrency=4), fleet.poller(max_concurrency=4)
    counts = await asyncio.gather(sweep(first), sweep(second))
    assert sum(counts) == 16
    assert first.stats.checks + second.stats.checks == 16
    # Each check makes the same four requests (readyz, version, nodes, metrics): one check each.
    per_cluster = {fleet.sim.cluster(f"shared-{i:02d}").requests for i in range(16)}
    assert per_cluster == {4}
    states = [await fleet.state(cluster_id) for cluster_id in ids]
    assert {state["status"] for state in states} == {"HEALTHY"}


async def test_a_stop_during_a_claim_releases_what_the_claim_took(fleet: Fleet) -> None:
    """Cancelling the runner after PostgreSQL committed a claim but before its rows came back
    must not orphan the claims until their lease runs out."""
    for i in range(3):
        await fleet.add(f"claimed-{i}")
    await fleet.make_due()
    committed = asyncio.Event()
    real_sessions = fleet.sessions

    @contextlib.asynccontextmanager
    async def slow_after_commit() -> AsyncIterator[AsyncSession]:
        async with real_sessions() as session:
            commit = session.commit

            async def commit_then_linger() -> None:
                await commit()
                committed.set()
                await asyncio.sleep(0.5)  # the reply is "still on its way" when stop cancels

            session.commit = commit_then_linger  # type: ignore[method-assign]
            yield session

    poller = fleet.poller(max_concurrency=3)
    poller.sessions = slow_after_commit  # type: ignore[assignment]
    runner = asyncio.create_task(poller.run())
    await asyncio.wait_for(committed.wait(), 30)
    await poller.stop()
    await poller.pool.aclose()
    assert runner.done()
    connection = await asyncpg.connect(asyncpg_dsn(fleet.database_url))
    try:
        held = await connection.fetchval(
            "SELECT count(*) FROM cluster_states WHERE claimed_until > now()"
        )
    finally:
        await connection.close()
    assert held == 0


async def test_state_change_is_published_after_commit_and_only_on_change(fleet: Fleet) -> None:
    cluster_id = await fleet.add("watched", node_count=3)
    seen: list[tuple[StateChange, str]] = []

    async def publish(change: StateChange) -> None:
        # Another connection must already see what the event announces.
        connection = await asyncpg.connect(asyncpg_dsn(fleet.database_url))
        try:
            committed = await connection.fetchval(
                "SELECT status FROM cluster_states WHERE cluster_id = $1", change.cluster_id
            )
        finally:
            await connection.close()
        seen.append((change, committed))

    await sweep(fleet.poller(publish=publish))
    [(change, committed)] = seen
    assert change.cluster_id == uuid.UUID(cluster_id)
    assert (change.previous_status, change.status, committed) == ("UNKNOWN", "HEALTHY", "HEALTHY")
    assert {"status", "node_count", "kubernetes_version"} <= set(change.changed_fields)

    await fleet.make_due()
    await sweep(fleet.poller(publish=publish))
    assert len(seen) == 1, "an unchanged check must not publish"

    fleet.sim.cluster("watched").spec.ready_nodes = 2
    await fleet.make_due()
    await sweep(fleet.poller(publish=publish))
    change = seen[-1][0]
    assert (change.previous_status, change.status) == ("HEALTHY", "DEGRADED")
    assert change.changed_fields == ("status", "ready_node_count")


async def test_concurrency_never_exceeds_the_limit(fleet: Fleet) -> None:
    for i in range(9):
        await fleet.add(f"slow-{i}", delay=0.05)
    poller = fleet.poller(max_concurrency=3)
    await sweep(poller)
    assert poller.stats.checks == 9
    assert poller.stats.peak_in_flight == 3


async def test_removed_cluster_is_not_polled(fleet: Fleet) -> None:
    cluster_id = await fleet.add("gone")
    connection = await asyncpg.connect(asyncpg_dsn(fleet.database_url))
    try:
        await connection.execute(
            "UPDATE clusters SET deleted_at = now() WHERE id = $1", uuid.UUID(cluster_id)
        )
    finally:
        await connection.close()
    assert await sweep(fleet.poller()) == 0
    assert fleet.sim.cluster("gone").requests == 0


async def test_pool_evicts_least_recently_used_and_closes_it(fleet: Fleet) -> None:
    for i in range(3):
        await fleet.add(f"pooled-{i}")
    pool = ClientPool(max_clients=2)
    await sweep(fleet.poller(pool=pool, max_concurrency=1))
    assert pool.stats.misses == 3 and pool.stats.evictions == 1
    assert pool.stats.closed == 3  # one evicted, two at shutdown


async def test_changed_kubeconfig_rebuilds_the_client(fleet: Fleet) -> None:
    from fleetql.poller.client import build_api_client

    fleet.sim.add_cluster("rotated")
    document = fleet.sim.kubeconfig("rotated")
    cluster_id = uuid.uuid4()
    built = []

    def build() -> Any:
        built.append(build_api_client(document))
        return built[-1]

    async with ClientPool() as pool:
        async with pool.client(cluster_id, "v1", build) as first:
            pass
        async with pool.client(cluster_id, "v1", build) as again:
            assert again is first
        async with pool.client(cluster_id, "v2", build) as second:
            assert second is not first
        assert pool.stats.closed == 1 and len(built) == 2
    assert pool.stats.closed == 2


async def test_interval_spreads_first_checks_and_jitters_later_ones(fleet: Fleet) -> None:
    from fleetql.db.states import DueCluster

    poller = fleet.poller(check_interval="100s")
    due = DueCluster(uuid.uuid4(), "x", b"", "k", 1, "UNKNOWN", 0, None)
    first = {poller._interval(due) for _ in range(50)}
    assert min(first) >= timedelta(seconds=10) and max(first) <= timedelta(seconds=100)
    assert max(first) - min(first) > timedelta(seconds=20)
    checked_before = dataclasses.replace(due, last_checked_at=datetime.now(UTC))
    later = [poller._interval(checked_before) for _ in range(50)]
    assert all(timedelta(seconds=90) <= value <= timedelta(seconds=110) for value in later)


async def test_serve_checks_a_newly_imported_cluster_within_seconds(
    fleet: Fleet, settings: Settings
) -> None:
    from fleetql.app import create_app
    from tests.conftest import ThreadedServer

    polling = settings.model_copy(
        update={"poller": PollerSettings(enabled=True, check_interval=timedelta(minutes=5))}
    )
    with ThreadedServer(create_app(polling, migrate=False), polling):
        cluster_id = await fleet.add("fresh", node_count=2)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (state := await fleet.state(cluster_id))["status"] == "UNKNOWN":
            assert loop.time() < deadline, "the new cluster was not checked within 10 s"
            await asyncio.sleep(0.1)
    assert state["status"] == "HEALTHY" and state["nodeCount"] == 2
