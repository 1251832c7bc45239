"""``GET /metrics``: this process's instruments, then the fleet read from PostgreSQL.

Collectors are synchronous and the database is not, so the handler reads the fleet first and
renders it from a collector made for this scrape alone; nothing is shared between scrapes. If
the database does not answer, the process's own metrics are still served (and the failure is
counted), because that is when they matter most.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from fleetql.db.fleet import fleet_figures
from fleetql.metrics.fleet import FleetCollector, render_per_cluster
from fleetql.resolvers.context import Services

__all__ = ["metrics_endpoint"]

logger = logging.getLogger(__name__)

_TIMEOUT = 5.0


async def metrics_endpoint(request: Request) -> Response:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        return PlainTextResponse("starting or stopping\n", status_code=503)
    metrics = services.metrics
    per_cluster = services.settings.metrics.per_cluster_series
    fleet = b""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(_TIMEOUT), services.sessions() as session:
            figures = await fleet_figures(session, per_cluster=per_cluster)
    except Exception as error:
        metrics.database.fleet_query_errors.inc()
        logger.warning("cannot read the fleet for /metrics: %s", type(error).__name__)
    else:
        metrics.database.fleet_query.observe(time.perf_counter() - started)
        scrape = CollectorRegistry()
        scrape.register(FleetCollector(figures))
        fleet = generate_latest(scrape)
        if figures.clusters:
            # Tens of milliseconds for a large fleet: off the event loop, it delays nothing.
            text = await asyncio.to_thread(render_per_cluster, figures.clusters)
            fleet += text.encode()
    # The classic text format, which every Prometheus (2.x and 3.x) reads.
    body = generate_latest(metrics.registry) + fleet
    return Response(body, headers={"content-type": CONTENT_TYPE_PLAIN_0_0_4})
