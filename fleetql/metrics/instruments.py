"""The instruments this process updates, grouped by the component that owns them.

Each app gets its own ``CollectorRegistry`` (never prometheus_client's global one), so tests
that build many apps in one process never see each other's numbers. A component built without
metrics (a unit test, a benchmark) gets a group of its own on a private registry and works the
same; nobody scrapes it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection, QueuePool

__all__ = [
    "ApiMetrics",
    "DatabaseMetrics",
    "EventMetrics",
    "Metrics",
    "OperationNames",
    "PollerMetrics",
    "PoolMetrics",
]

# A check takes from milliseconds (a pooled client, a small cluster) to the client timeout.
CHECK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
OPERATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0)

ERROR_KINDS = ("parse", "validation", "bad_user_input", "execution", "internal")
OPERATION_TYPES = ("query", "mutation", "subscription", "unknown")


def _registry(registry: CollectorRegistry | None) -> CollectorRegistry:
    return registry if registry is not None else CollectorRegistry()


class PollerMetrics:
    """Checks by result, how long they take and how many run right now (this process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = _registry(registry)
        self.checks = Counter(
            "fleetql_cluster_checks",
            "Cluster checks this process finished, by result: ok or the error code.",
            ["result"],
            registry=registry,
        )
        self.check_duration = Histogram(
            "fleetql_cluster_check_duration_seconds",
            "Time one cluster check took, from claim to result (client build included).",
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "fleetql_cluster_checks_in_flight",
            "Cluster checks running in this process now.",
            registry=registry,
        )
        self.database_errors = Counter(
            "fleetql_poller_database_errors",
            "Claims or results the poller could not exchange with PostgreSQL.",
            registry=registry,
        )

    def declare_results(self, results: Iterable[str]) -> None:
        """Show every known result from the start (at 0), so rates exist before a failure."""
        for result in results:
            self.checks.labels(result=result)

    def observe_check(self, result: str, seconds: float) -> None:
        self.checks.labels(result=result).inc()
        self.check_duration.observe(seconds)


class PoolMetrics:
    """The cluster client pool: how many clients are open and how often one is reused."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = _registry(registry)
        self.clients = Gauge(
            "fleetql_client_pool_clients",
            "Cluster API clients open in this process's pool.",
            registry=registry,
        )
        self.hits = Counter(
            "fleetql_client_pool_hits",
            "Checks that reused a pooled cluster client.",
            registry=registry,
        )
        self.misses = Counter(
            "fleetql_client_pool_misses",
            "Checks that had to build a cluster client (first use, or new credentials).",
            registry=registry,
        )
        self.evictions = Counter(
            "fleetql_client_pool_evictions",
            "Clients closed because the pool was full (least recently used first).",
            registry=registry,
        )


class EventMetrics:
    """The event bus and relay: events in and out, subscribers and their queues."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = _registry(registry)
        self.published = Counter(
            "fleetql_events_published",
            "Event ids this process published to the event backend (as relay).",
            registry=registry,
        )
        self.dispatched = Counter(
            "fleetql_events_dispatched",
            "Events this process loaded and offered to its subscribers.",
            registry=registry,
        )
        self.delivered = Counter(
            "fleetql_events_delivered",
            "Events handed to a subscriber (one per subscriber per event).",
            registry=registry,
        )
        self.overflows = Counter(
            "fleetql_event_subscriber_overflows",
            "Subscribers closed (1008) because their queue was full.",
            registry=registry,
        )
        self.resyncs = Counter(
            "fleetql_event_stream_resyncs",
            "Times the event stream was interrupted and every subscriber told to resubscribe.",
            registry=registry,
        )
        self.subscribers = Gauge(
            "fleetql_event_subscribers",
            "Subscribers registered with this process's event bus.",
            registry=registry,
        )
        self.queued = Gauge(
            "fleetql_event_subscriber_queued_events",
            "Events waiting in all subscriber queues together.",
            registry=registry,
        )
        self.deepest_queue = Gauge(
            "fleetql_event_subscriber_queue_depth_max",
            "Events waiting in the fullest subscriber queue.",
            registry=registry,
        )
        self.inbox = Gauge(
            "fleetql_event_inbox_messages",
            "Messages from the event backend waiting to be dispatched.",
            registry=registry,
        )
        self.relay_leading = Gauge(
            "fleetql_event_relay_leading",
            "1 when this process's relay publishes events (leader, or memory://), else 0.",
            registry=registry,
        )


class OperationNames:
    """Bounds the operation-name label, which clients choose: a sane name is kept until
    ``limit`` distinct names are known; later ones are "other", unnamed ones "anonymous"."""

    _SANE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

    def __init__(self, limit: int = 200) -> None:
        self._limit = limit
        self._known: set[str] = set()

    def label(self, name: str | None) -> str:
        if not name:
            return "anonymous"
        if name in self._known:
            return name
        if len(self._known) >= self._limit or not self._SANE.fullmatch(name):
            return "other"
        self._known.add(name)
        return name


class ApiMetrics:
    """GraphQL operations, their errors, and the websockets and subscriptions open now."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, max_operation_names: int = 200
    ) -> None:
        self.registry = registry = _registry(registry)
        self.operation_names = OperationNames(max_operation_names)
        self.operation_duration = Histogram(
            "fleetql_graphql_operation_duration_seconds",
            "GraphQL operations by type and name, and how long each took (a subscription: "
            "until it was set up, not its lifetime).",
            ["type", "name"],
            buckets=OPERATION_BUCKETS,
            registry=registry,
        )
        self._durations: dict[tuple[str, str], Histogram] = {}
        self.errors = Counter(
            "fleetql_graphql_errors",
            "GraphQL errors by kind: parse, validation, bad_user_input (an argument or "
            "variable), execution (another GraphQL error), internal (masked).",
            ["kind"],
            registry=registry,
        )
        for kind in ERROR_KINDS:
            self.errors.labels(kind=kind)
        self.websockets = Gauge(
            "fleetql_websocket_connections_open",
            "Websocket connections open on /graphql.",
            registry=registry,
        )
        self.subscriptions = Gauge(
            "fleetql_graphql_subscriptions_open",
            "GraphQL subscriptions running now.",
            registry=registry,
        )

    def observe_operation(self, type_: str, name: str | None, seconds: float) -> None:
        key = (type_, self.operation_names.label(name))
        series = self._durations.get(key)
        if series is None:
            # Bounded as the labels are (operation types x known names); ``labels()`` checks
            # and locks on every call, which every request would pay.
            series = self._durations[key] = self.operation_duration.labels(*key)
        series.observe(seconds)


class DatabaseMetrics:
    """The SQLAlchemy pool (read at scrape time) and how long a connection takes to get."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = _registry(registry)
        self.pool_size = Gauge(
            "fleetql_db_pool_size",
            "Connections the pool keeps open (database.pool_size).",
            registry=registry,
        )
        self.checked_out = Gauge(
            "fleetql_db_pool_connections_checked_out",
            "Connections in use now.",
            registry=registry,
        )
        self.idle = Gauge(
            "fleetql_db_pool_connections_idle",
            "Open connections waiting in the pool.",
            registry=registry,
        )
        self.overflow = Gauge(
            "fleetql_db_pool_overflow",
            "Connections open beyond pool_size (negative: pool_size not yet all opened).",
            registry=registry,
        )
        self.checkout_wait = Histogram(
            "fleetql_db_pool_checkout_wait_seconds",
            "Time to get a connection from the pool: waiting for a free one or opening one.",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.checkout_timeouts = Counter(
            "fleetql_db_pool_checkout_timeouts",
            "Connection requests that gave up after database.pool_timeout.",
            registry=registry,
        )
        self.fleet_query = Histogram(
            "fleetql_fleet_query_duration_seconds",
            "Time the fleet figures of one scrape took to read from PostgreSQL.",
            buckets=OPERATION_BUCKETS,
            registry=registry,
        )
        self.fleet_query_errors = Counter(
            "fleetql_fleet_query_errors",
            "Scrapes whose fleet figures could not be read (the other metrics were served).",
            registry=registry,
        )

    def watch(self, engine: AsyncEngine) -> None:
        """Read the engine's pool at scrape time and time every checkout.

        SQLAlchemy has a pool event after a checkout but none before one, so the wait is timed
        around the pool's ``connect()``, which the engine calls for every connection it takes.
        """
        pool = engine.sync_engine.pool
        if not isinstance(pool, QueuePool):
            return  # not a pool that queues (NullPool, StaticPool): nothing to wait for
        self.pool_size.set_function(pool.size)
        self.checked_out.set_function(pool.checkedout)
        self.idle.set_function(pool.checkedin)
        self.overflow.set_function(pool.overflow)
        connect = pool.connect
        wait, timeouts = self.checkout_wait, self.checkout_timeouts

        def timed_connect() -> PoolProxiedConnection:
            started = time.perf_counter()
            try:
                return connect()
            except exc.TimeoutError:
                timeouts.inc()
                raise
            finally:
                wait.observe(time.perf_counter() - started)

        pool.connect = timed_connect  # type: ignore[method-assign]


class Metrics:
    """Every instrument of one app (or one ``fleetql poll``), on a registry of its own."""

    def __init__(self, *, max_operation_names: int = 200, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry()
        if process_metrics:
            # The standard process_*, python_gc_* and python_info series, on our registry.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.poller = PollerMetrics(self.registry)
        self.pool = PoolMetrics(self.registry)
        self.events = EventMetrics(self.registry)
        self.api = ApiMetrics(self.registry, max_operation_names=max_operation_names)
        self.database = DatabaseMetrics(self.registry)
