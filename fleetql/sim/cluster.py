"""One simulated cluster: its spec, the bytes rendered from it, and its injected failures.

Rendering 50 nodes costs about a millisecond; a benchmark polling 2,000 clusters cannot pay that
on every request. So each request compares a small key of the spec with the one the cached bytes
were made from, and renders again only when a field that shows in the nodes has changed.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fleetql.sim.discovery import version_body
from fleetql.sim.nodes import NodeState, node_list_body, render_node, render_node_metrics_list
from fleetql.sim.ports import DedicatedPort
from fleetql.sim.spec import ClusterSpec

__all__ = ["NodeListing", "RequestGauge", "SimCluster"]

# metrics-server scrapes kubelets every 15 s; its timestamps move in those steps.
_METRICS_RESOLUTION = 15.0


@dataclass(frozen=True)
class NodeListing:
    """The nodes of one rendering, in name order, with the list's resourceVersion.

    Only the full NodeList body is kept (about 10 KB a node, most of it ``status.images``; 200,000
    nodes in a benchmark): node
    ``i`` is ``full_body[bounds[i] : bounds[i + 1] - 1]``, so a page is one slice of it.
    """

    resource_version: int
    names: tuple[str, ...]
    states: tuple[NodeState, ...]
    full_body: bytes
    bounds: tuple[int, ...]

    def item(self, index: int) -> bytes:
        """Node ``index`` as rendered in the list."""
        return self.full_body[self.bounds[index] : self.bounds[index + 1] - 1]

    def page_body(self, metadata: dict[str, Any], start: int, end: int) -> bytes:
        """A NodeList of nodes ``start`` to ``end - 1`` with the given list metadata."""
        items = self.full_body[self.bounds[start] : self.bounds[end] - 1] if start < end else b""
        return node_list_body(metadata, items)


class RequestGauge:
    """How many requests are being handled now (delayed ones too), and the most there were at
    once since the last ``reset_peak``: what a test of a concurrency limit asserts on."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak_in_flight = 0

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count one request for as long as the block runs."""
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    def reset_peak(self) -> None:
        """Start measuring the peak afresh from the requests in flight now."""
        self.peak_in_flight = self.in_flight


class SimCluster:
    """A simulated cluster: change ``spec`` fields, or call ``fail_next``, between requests.

    ``requests`` counts every request, ``requests_by_path`` counts them by the path after the
    cluster's prefix (without the query), and ``load`` gauges those in flight.
    """

    def __init__(
        self,
        spec: ClusterSpec,
        *,
        server_url: str,
        port: DedicatedPort | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self._server_url = server_url
        self._port = port
        self._clock = clock
        self._created = _timestamp(clock())
        self._revision = 100
        self._failures: list[int] = []
        self._listing: NodeListing | None = None
        self._listing_key: tuple[object, ...] = ()
        self._ready_since: dict[str, tuple[str, str]] = {}
        self._metrics: tuple[tuple[object, ...], bytes] | None = None
        self._version: tuple[tuple[str, str], bytes] | None = None
        self.requests = 0
        self.requests_by_path: Counter[str] = Counter()
        self.load = RequestGauge()

    @property
    def name(self) -> str:
        """The cluster's name, which is also its path segment under /clusters/."""
        return self.spec.name

    @property
    def server_url(self) -> str:
        """The URL a kubeconfig's ``server`` field holds for this cluster."""
        return self._server_url

    @property
    def in_flight(self) -> int:
        """Requests of this cluster being handled now, including delayed ones."""
        return self.load.in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most requests of this cluster handled at once since it was added (or reset)."""
        return self.load.peak_in_flight

    @property
    def has_own_port(self) -> bool:
        """Whether the cluster listens on a port of its own (``own_port=True``)."""
        return self._port is not None

    @property
    def down(self) -> bool:
        """True while the cluster's own port refuses connections (needs ``own_port=True``)."""
        return self._port is not None and not self._port.is_open

    @down.setter
    def down(self, value: bool) -> None:
        if self._port is None:
            raise ValueError(
                f"cluster {self.name!r} shares the simulator's port and cannot refuse connections; "
                "create it with own_port=True to simulate it being down"
            )
        if value:
            self._port.close()
        else:
            self._port.open()

    def fail_next(self, count: int = 1, *, status: int = 503) -> None:
        """Answer the next ``count`` requests (any path) with a ``status`` Status error."""
        self._failures.extend([status] * count)

    def take_failure(self) -> int | None:
        """The status code to fail the current request with, if one is queued."""
        return self._failures.pop(0) if self._failures else None

    def node_listing(self) -> NodeListing:
        """The nodes as they are now, rendered again only if the spec changed since last time."""
        spec = self.spec
        key = (
            spec.name,
            spec.node_count,
            spec.ready_nodes,
            spec.not_ready_status,
            spec.node_shapes,
            spec.version,
        )
        if self._listing is None or key != self._listing_key:
            self._listing = self._render_nodes()
            self._listing_key = key
        return self._listing

    def metrics_body(self) -> bytes:
        """The NodeMetricsList body, its timestamp moving in metrics-server's 15 s steps."""
        listing = self.node_listing()
        now = self._clock()
        key = (listing.resource_version, int(now // _METRICS_RESOLUTION))
        if self._metrics is None or self._metrics[0] != key:
            sampled = _timestamp(now - now % _METRICS_RESOLUTION)
            self._metrics = (key, render_node_metrics_list(listing.states, timestamp=sampled))
        return self._metrics[1]

    def version_body(self) -> bytes:
        """The /version body for the spec's version."""
        key = (self.spec.version, self.spec.go_version)
        if self._version is None or self._version[0] != key:
            self._version = (key, version_body(key[0], go_version=key[1]))
        return self._version[1]

    def _render_nodes(self) -> NodeListing:
        spec = self.spec
        now = _timestamp(self._clock())
        ready_count = spec.node_count if spec.ready_nodes is None else spec.ready_nodes
        width = max(4, len(str(spec.node_count)))
        names = sorted(f"{spec.name}-node-{i:0{width}d}" for i in range(1, spec.node_count + 1))
        states: list[NodeState] = []
        ready_since: dict[str, tuple[str, str]] = {}
        for index, name in enumerate(names):
            ready = "True" if index < ready_count else spec.not_ready_status
            previous = self._ready_since.get(name)
            since = previous[1] if previous is not None and previous[0] == ready else now
            if previous is None:
                since = self._created
            ready_since[name] = (ready, since)
            self._revision += 1
            states.append(
                NodeState(
                    cluster=spec.name,
                    name=name,
                    index=index,
                    shape=spec.node_shapes[index % len(spec.node_shapes)],
                    ready=ready,
                    resource_version=self._revision,
                    created=self._created,
                    heartbeat=now,
                    transition=since,
                    kubelet_version=spec.version,
                )
            )
        self._ready_since = ready_since
        self._revision += 1
        items = [render_node(state) for state in states]
        joined = b",".join(items)
        full_body = node_list_body({"resourceVersion": str(self._revision)}, joined)
        position = len(full_body) - len(b"]}") - len(joined)  # where the first item starts
        bounds = []
        for item in items:
            bounds.append(position)
            position += len(item) + 1
        bounds.append(position)
        return NodeListing(
            resource_version=self._revision,
            names=tuple(names),
            states=tuple(states),
            full_body=full_body,
            bounds=tuple(bounds),
        )

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={getattr(self.spec, f.name)!r}"
            for f in dataclasses.fields(self.spec)
            if f.name != "token"
        )
        return f"SimCluster({fields})"


def _timestamp(seconds: float) -> str:
    """metav1.Time as the apiserver writes it: RFC 3339, whole seconds, UTC, ``Z``."""
    moment = datetime.datetime.fromtimestamp(int(seconds), tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
