"""GET /metrics over real HTTP, parsed with prometheus_client's own text parser, against a fleet
counted by hand, a poller checking the simulator, and live websocket subscribers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.app import create_app
from fleetql.config import EventsSettings, MetricsSettings, PollerSettings, Settings, load_settings
from fleetql.crypto import EncryptionKey
from fleetql.db.fleet import FleetFigures, fleet_figures
from fleetql.db.models import ClusterStatus
from fleetql.events.backends import create_backend
from fleetql.events.bus import EventBus
from fleetql.metrics.instruments import EventMetrics, Metrics, OperationNames
from fleetql.sim import Simulator
from tests.conftest import (
    GraphQLClient,
    RestartablePostgres,
    ThreadedServer,
    asyncpg_dsn,
    truncate,
)
from tests.kubeconfigs import TOKEN, KubeconfigFactory
from tests.test_event_bus import Store, record
from tests.wsclient import GraphQLWebSocket

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { code message } }
}
"""
EVENTS = "subscription { clusterStateChanged { kind clusterId } }"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels (the parser rejects malformed text)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for sample_name, labels in samples if sample_name == name]


async def scrape(http: httpx.AsyncClient, server: ThreadedServer) -> tuple[str, Samples]:
    response = await http.get(f"http://127.0.0.1:{server.port}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text, parse(response.text)


async def eventually(check: Any, within: float = 20.0) -> Any:
    """Poll ``check`` (an async function returning a truthy value when done) until a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await check()
        if result or loop.time() > deadline:
            return result
        await asyncio.sleep(0.05)


# name, status, nodes, ready, cpu alloc, mem alloc, credential expires in (days), next check
FLEET = [
    ("a", "HEALTHY", 3, 3, "11.5", 2 * 2**30, 100, timedelta(hours=1)),
    ("b", "DEGRADED", 5, 4, "19", 4 * 2**30, 3, timedelta(hours=-1)),  # overdue by an hour
    ("c", "HEALTHY", 2, 2, "7.25", 2**29, None, timedelta(minutes=-1)),  # overdue, but claimed
    ("d", "UNKNOWN", None, None, None, None, None, timedelta(hours=1)),
]


async def seed_fleet(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, database_url: str
) -> dict[str, tuple[str, datetime | None]]:
    """Import FLEET and set each cluster's state; returns name -> (id, credential expiry)."""
    seeded = {}
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for name, status, nodes, ready, cpu, memory, days, next_check in FLEET:
            variables = {"input": {"name": name, "kubeconfig": kubeconfigs.yaml()}}
            payload = (await api.data(IMPORT, variables))["importCluster"]
            assert payload["userErrors"] == [], payload
            cluster_id = uuid.UUID(payload["cluster"]["id"])
            claimed = timedelta(minutes=5) if name == "c" else None
            await connection.execute(
                "UPDATE cluster_states SET status = $2, node_count = $3, ready_node_count = $4,"
                " cpu_allocatable_cores = $5::numeric, memory_allocatable_bytes = $6,"
                " next_check_at = now() + $7::interval, claimed_until = now() + $8::interval"
                " WHERE cluster_id = $1",
                cluster_id,
                status,
                nodes,
                ready,
                cpu,
                memory,
                next_check,
                claimed,
            )
            expires = None if days is None else datetime.now(UTC) + timedelta(days=days)
            await connection.execute(
                "UPDATE clusters SET credential_expires_at = $2 WHERE id = $1", cluster_id, expires
            )
            seeded[name] = (str(cluster_id), expires)
    finally:
        await connection.close()
    return seeded


async def test_metrics_report_a_hand_counted_fleet_from_the_database(
    server: ThreadedServer,
    api: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    database_url: str,
) -> None:
    seeded = await seed_fleet(api, kubeconfigs, database_url)
    text, samples = await scrape(api.http, server)

    clusters = {status: value(samples, "fleetql_clusters", status=status) for status in (
        "HEALTHY", "DEGRADED", "UNHEALTHY", "UNREACHABLE", "UNKNOWN"
    )}  # fmt: skip
    assert clusters == {
        "HEALTHY": 2,
        "DEGRADED": 1,
        "UNHEALTHY": 0,
        "UNREACHABLE": 0,
        "UNKNOWN": 1,
    }
    assert value(samples, "fleetql_fleet_nodes") == 10
    assert value(samples, "fleetql_fleet_ready_nodes") == 9
    assert value(samples, "fleetql_fleet_cpu_allocatable_cores") == 37.75
    assert value(samples, "fleetql_fleet_memory_allocatable_bytes") == 6 * 2**30 + 2**29

    def of(name: str) -> dict[str, str]:
        return {"cluster": seeded[name][0], "name": name}

    ready = {name: value(samples, "fleetql_cluster_ready", **of(name)) for name in "abcd"}
    assert ready == {"a": 1, "b": 1, "c": 1, "d": 0}
    assert value(samples, "fleetql_cluster_status", **of("b"), status="DEGRADED") == 1
    assert value(samples, "fleetql_cluster_nodes", **of("b")) == 5
    assert value(samples, "fleetql_cluster_ready_nodes", **of("b")) == 4
    assert value(samples, "fleetql_cluster_cpu_allocatable_cores", **of("c")) == 7.25
    assert value(samples, "fleetql_cluster_memory_allocatable_bytes", **of("a")) == 2 * 2**30
    # Never checked: no figures rather than zeros.
    assert value(samples, "fleetql_cluster_nodes", **of("d")) is None
    assert len(series(samples, "fleetql_cluster_nodes")) == 3
    expiry = value(samples, "fleetql_cluster_credential_expiry_timestamp_seconds", **of("b"))
    b_expires = seeded["b"][1]
    assert b_expires is not None and expiry == pytest.approx(b_expires.timestamp(), abs=0.01)
    assert len(series(samples, "fleetql_cluster_credential_expiry_timestamp_seconds")) == 2

    # b is an hour overdue; c is overdue too but claimed by a poller, so not in the backlog.
    assert value(samples, "fleetql_cluster_checks_due") == 1
    oldest = value(samples, "fleetql_cluster_checks_due_oldest_age_seconds")
    assert oldest is not None and 3600 <= oldest < 3700

    # The pool the test settings size at 5, and the checkouts this scrape already made.
    assert value(samples, "fleetql_db_pool_size") == 5
    waits = value(samples, "fleetql_db_pool_checkout_wait_seconds_count")
    assert waits is not None and waits >= 1
    assert (value(samples, "process_resident_memory_bytes") or 0) > 0

    # No credential ever: neither the kubeconfigs' token nor any certificate or key data.
    assert TOKEN not in text and "BEGIN" not in text and "-data" not in text


async def test_the_figures_by_status_from_fleet_totals_agree_with_a_count_of_every_cluster(
    api: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    sessions: async_sessionmaker[AsyncSession],
    database_url: str,
) -> None:
    async def both() -> tuple[FleetFigures, FleetFigures]:
        async with sessions() as session:
            counted = await fleet_figures(session, per_cluster=True)
            kept = await fleet_figures(session, per_cluster=False)
        return replace(counted, clusters=[]), kept

    async with sessions() as session:
        assert await fleet_figures(session, per_cluster=False) == FleetFigures(
            by_status={status.value: 0 for status in ClusterStatus}
        )
    seeded = await seed_fleet(api, kubeconfigs, database_url)
    counted, kept = await both()
    assert kept.by_status["HEALTHY"] == 2 and kept.nodes == 10 and kept.due == 1
    assert kept == replace(counted, oldest_due_seconds=kept.oldest_due_seconds)
    assert kept.oldest_due_seconds == pytest.approx(counted.oldest_due_seconds, abs=5)

    # b (DEGRADED, 5 nodes, the one due) is removed: it leaves the totals and the backlog.
    removed = await api.data(
        "mutation($id: ID!) { removeCluster(id: $id) { userErrors { code } } }",
        {"id": seeded["b"][0]},
    )
    assert removed["removeCluster"]["userErrors"] == []
    counted, kept = await both()
    assert kept.by_status["DEGRADED"] == 0 and kept.nodes == 5 and kept.due == 0
    assert kept == counted


async def test_operations_are_counted_by_type_and_name_and_errors_by_kind(
    server: ThreadedServer, api: GraphQLClient
) -> None:
    _, before = await scrape(api.http, server)
    await api.data("query FleetPage { clusters { total } }")
    await api.data("query FleetPage { clusters(limit: 1) { total } }")
    await api.data("{ clusters { total } }")
    assert "errors" in await api.post("query Broken { clusters { total")  # parse
    assert "errors" in await api.post("query Unknown { nope }")  # validation
    assert "errors" in await api.post("query Bad { clusters(limit: -1) { total } }")
    assert "errors" in await api.post(
        "mutation Relabel($ids: [ID!]!)"
        " { setClusterLabels(ids: $ids, add: []) { clusters { id } } }",
        {"ids": None},  # a variable that does not coerce
    )
    _, after = await scrape(api.http, server)

    def grew(metric: str, /, **labels: str) -> float:
        return (value(after, metric, **labels) or 0) - (value(before, metric, **labels) or 0)

    duration = "fleetql_graphql_operation_duration_seconds_count"
    assert grew(duration, type="query", name="FleetPage") == 2
    assert grew(duration, type="query", name="anonymous") == 1
    assert grew(duration, type="query", name="Unknown") == 1
    assert grew(duration, type="query", name="Bad") == 1
    assert grew(duration, type="unknown", name="anonymous") == 1  # did not parse: no name
    assert grew("fleetql_graphql_errors_total", kind="parse") == 1
    assert grew("fleetql_graphql_errors_total", kind="validation") >= 1
    assert grew("fleetql_graphql_errors_total", kind="bad_user_input") >= 2
    assert grew("fleetql_graphql_errors_total", kind="internal") == 0


def test_operation_names_are_bounded() -> None:
    names = OperationNames(limit=2)
    assert names.label(None) == "anonymous"
    assert names.label("First") == "First"
    assert names.label("x" * 65) == "other"  # too long
    assert names.label("drop table;") == "other"
    assert names.label("Second") == "Second"
    assert names.label("Third") == "other"  # past the limit
    assert names.label("First") == "First"  # known names stay


@pytest.mark.parametrize(
    ("metrics", "status", "per_cluster"),
    [
        (MetricsSettings(per_cluster_series=False), 200, False),
        (MetricsSettings(enabled=False), 404, False),
    ],
)
async def test_per_cluster_series_and_the_endpoint_can_be_turned_off(
    settings: Settings,
    api: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    database_url: str,
    metrics: MetricsSettings,
    status: int,
    per_cluster: bool,
) -> None:
    await seed_fleet(api, kubeconfigs, database_url)
    configured = settings.model_copy(update={"metrics": metrics})
    with ThreadedServer(create_app(configured, migrate=False), configured) as other:
        response = await api.http.get(f"http://127.0.0.1:{other.port}/metrics")
    assert response.status_code == status
    if status != 200:
        return
    samples = parse(response.text)
    assert value(samples, "fleetql_clusters", status="HEALTHY") == 2
    assert value(samples, "fleetql_fleet_nodes") == 10
    assert value(samples, "fleetql_cluster_checks_due") == 1
    oldest = value(samples, "fleetql_cluster_checks_due_oldest_age_seconds")
    assert oldest is not None and 3600 <= oldest < 3700
    for name in ("fleetql_cluster_ready", "fleetql_cluster_nodes", "fleetql_cluster_status"):
        assert series(samples, name) == []


@pytest.fixture(scope="module")
def polling_server(settings: Settings) -> Iterator[ThreadedServer]:
    """A server whose poller checks each new cluster once (the next check is an hour away)."""
    polling = settings.model_copy(
        update={
            "poller": PollerSettings(
                enabled=True,
                check_interval=timedelta(hours=1),
                client_timeout=timedelta(seconds=2),
                retry_attempts=0,
                status_threshold=1,
            ),
            "events": EventsSettings(connection_init_timeout=timedelta(seconds=2)),
        }
    )
    with ThreadedServer(create_app(polling), polling) as server:
        yield server


@pytest.fixture
async def polling(
    polling_server: ThreadedServer, database_url: str
) -> AsyncIterator[tuple[ThreadedServer, GraphQLClient, Simulator]]:
    await truncate(database_url)
    async with Simulator() as sim, httpx.AsyncClient(timeout=30) as http:
        yield polling_server, GraphQLClient(http, polling_server.url), sim


async def import_simulated(
    api: GraphQLClient, sim: Simulator, name: str, token: str | None = None
) -> str:
    sim.add_cluster(name, node_count=2)
    kubeconfig = yaml.safe_dump(sim.kubeconfig(name, token=token))
    data = await api.data(IMPORT, {"input": {"name": name, "kubeconfig": kubeconfig}})
    assert data["importCluster"]["userErrors"] == []
    return str(data["importCluster"]["cluster"]["id"])


async def test_the_pollers_checks_are_counted_by_result_and_timed(
    polling: tuple[ThreadedServer, GraphQLClient, Simulator],
) -> None:
    server, api, sim = polling
    _, before = await scrape(api.http, server)
    await import_simulated(api, sim, "fine")
    await import_simulated(api, sim, "locked", token="not-the-token")

    def grew(samples: Samples, metric: str, /, **labels: str) -> float:
        return (value(samples, metric, **labels) or 0) - (value(before, metric, **labels) or 0)

    async def both_checked() -> Samples | None:
        _, samples = await scrape(api.http, server)
        checks = "fleetql_cluster_checks_total"
        done = (
            grew(samples, checks, result="ok")
            and grew(samples, checks, result="UNAUTHORIZED")
            # Counted when the check ends, recorded a moment later.
            and value(samples, "fleetql_clusters", status="UNREACHABLE") == 1
            and value(samples, "fleetql_clusters", status="HEALTHY") == 1
        )
        return samples if done else None

    samples = await eventually(both_checked)
    assert samples is not None, "the poller did not check both clusters"
    assert grew(samples, "fleetql_cluster_checks_total", result="ok") == 1
    assert grew(samples, "fleetql_cluster_checks_total", result="UNAUTHORIZED") == 1
    assert value(samples, "fleetql_cluster_checks_total", result="TIMEOUT") is not None  # at 0
    assert grew(samples, "fleetql_cluster_check_duration_seconds_count") == 2
    assert grew(samples, "fleetql_client_pool_misses_total") == 2
    assert (value(samples, "fleetql_client_pool_clients") or 0) >= 2
    assert value(samples, "fleetql_cluster_checks_in_flight") == 0
    # Both were checked and their next checks are an hour away: no backlog.
    assert value(samples, "fleetql_cluster_checks_due") == 0


async def test_websockets_subscriptions_and_deliveries_are_counted(
    polling: tuple[ThreadedServer, GraphQLClient, Simulator],
) -> None:
    server, api, sim = polling
    _, before = await scrape(api.http, server)
    open_websockets = "fleetql_websocket_connections_open"
    open_subscriptions = "fleetql_graphql_subscriptions_open"

    async def gauges(websockets: float, subscriptions: float) -> Samples | None:
        _, samples = await scrape(api.http, server)
        now = (value(samples, open_websockets), value(samples, open_subscriptions))
        return samples if now == (websockets, subscriptions) else None

    async with GraphQLWebSocket.open(server.ws_url) as ws:
        operation = await ws.subscribe(EVENTS)
        assert await eventually(lambda: gauges(1, 1))
        await import_simulated(api, sim, "watched")
        assert (await ws.next_data(operation))["clusterStateChanged"]["kind"] == "IMPORTED"
        refused = await ws.subscribe(
            'subscription Filtered { clusterStateChanged(filter: {labelSelector: "=x"}) { kind } }'
        )
        assert "labelSelector" in str(await ws.next_message(refused))
        _, during = await scrape(api.http, server)
    assert await eventually(lambda: gauges(0, 0)), "the gauges did not return to 0"

    def grew(metric: str, /, **labels: str) -> float:
        return (value(during, metric, **labels) or 0) - (value(before, metric, **labels) or 0)

    assert grew("fleetql_events_published_total") >= 1
    assert grew("fleetql_events_dispatched_total") >= 1
    assert grew("fleetql_events_delivered_total") >= 1
    assert grew("fleetql_graphql_errors_total", kind="bad_user_input") == 1
    subscription_ops = value(
        during,
        "fleetql_graphql_operation_duration_seconds_count",
        type="subscription",
        name="anonymous",
    )
    assert subscription_ops is not None and subscription_ops >= 1
    assert value(during, "fleetql_event_relay_leading") == 1


async def test_an_overflowing_subscriber_and_queue_depths_are_measured() -> None:
    store = Store()
    metrics = EventMetrics()
    async with EventBus(
        create_backend("memory://", database_url=None),
        load_events=store.load_events,
        load_clusters=store.load,
        queue_size=4,
        metrics=metrics,
    ) as bus:
        cluster_id = uuid.uuid4()
        store.clusters[cluster_id] = record(cluster_id)
        slow = bus.subscribe(lambda e, c: True)
        bus.subscribe(lambda e, c: True, queue_size=100)

        async def depths(total: float, deepest: float) -> bool:
            samples = parse(generate_latest(metrics.registry).decode())
            return (
                value(samples, "fleetql_event_subscriber_queued_events"),
                value(samples, "fleetql_event_subscriber_queue_depth_max"),
            ) == (total, deepest)

        for _ in range(3):
            await bus.publish_ids([store.log(cluster_id)])
        assert await eventually(lambda: depths(6, 3))
        for _ in range(2):
            await bus.publish_ids([store.log(cluster_id)])
        # The slow one overflowed at the fifth event and was closed; the other holds five.
        assert await eventually(lambda: depths(5, 5))
        samples = parse(generate_latest(metrics.registry).decode())
        assert value(samples, "fleetql_event_subscriber_overflows_total") == 1
        assert value(samples, "fleetql_event_subscribers") == 1
        assert value(samples, "fleetql_events_published_total") == 5
        assert slow.closed_because is not None


def test_each_app_has_a_registry_of_its_own() -> None:
    first, second = Metrics(process_metrics=False), Metrics(process_metrics=False)
    first.poller.observe_check("ok", 0.1)
    assert (
        parse(generate_latest(second.registry).decode()).get(
            ("fleetql_cluster_checks_total", frozenset({("result", "ok")}))
        )
        is None
    )
    samples = parse(generate_latest(first.registry).decode())
    assert value(samples, "fleetql_cluster_checks_total", result="ok") == 1


async def test_without_the_database_the_process_metrics_are_still_served(
    private_postgres: RestartablePostgres,
) -> None:
    settings = load_settings(
        environ={},
        overrides={
            "database": {"url": private_postgres.url},
            "encryption": {"key": EncryptionKey.generate().to_base64()},
            "poller": {"enabled": False},
        },
    )
    async with httpx.AsyncClient(timeout=30) as http:
        with ThreadedServer(create_app(settings), settings) as server:
            _, samples = await scrape(http, server)
            assert value(samples, "fleetql_clusters", status="HEALTHY") == 0
            await private_postgres.stop()
            try:
                _, samples = await scrape(http, server)
            finally:
                await private_postgres.start()
    assert value(samples, "fleetql_fleet_query_errors_total") == 1
    assert series(samples, "fleetql_clusters") == []
    assert value(samples, "fleetql_websocket_connections_open") == 0
