"""``GET /metrics`` for a process that serves no API: ``fleetql poll``.

A poller-only process has its own checks, client pool and database pool to report, and
Prometheus scrapes each process separately. The fleet-wide gauges are the API replicas' to serve
(every poller exporting them as well would duplicate the series), so this serves the process's
own registry alone, on an address of its own, for as long as the context manager is open.
prometheus_client's server runs in a thread: a scrape never waits on the poller's event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["serving_metrics"]

logger = logging.getLogger(__name__)


@contextmanager
def serving_metrics(registry: CollectorRegistry, *, host: str, port: int) -> Iterator[int]:
    """Serve ``registry`` at ``http://host:port/metrics`` and yield the port (``port`` 0 picks a
    free one). A taken address raises OSError at once, rather than run a poller nobody can
    watch."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_address[1])
    logger.info("serving /metrics on http://%s:%d/metrics", host, bound)
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
