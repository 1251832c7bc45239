"""``/livez`` and ``/readyz``: what a load balancer and an orchestrator ask before routing.

``/livez`` touches nothing (a busy database must not get the process restarted); ``/readyz``
checks what a request needs — the database answers and is not behind the code's migrations, and
the event backend is connected — and names the check that failed, with 503. From the moment a
shutdown starts it answers 503 (``shutdown``), so the load balancer stops sending new work here.
Neither shows in the access log (``fleetql.logs.ProbeAccessFilter``).
"""

from __future__ import annotations

import asyncio
import functools

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from fleetql.db import migrations
from fleetql.resolvers.context import Services
from fleetql.shutdown import Drain

__all__ = ["livez", "readyz"]

_TIMEOUT = 2.0


async def livez(request: Request) -> Response:
    return PlainTextResponse("ok\n")


async def readyz(request: Request) -> Response:
    services: Services | None = getattr(request.app.state, "services", None)
    drain: Drain | None = getattr(request.app.state, "drain", None)
    if drain is not None and drain.started:
        return _unready({"shutdown": "the server is shutting down"})
    if services is None:
        return _unready({"startup": "the server is starting or stopping"})
    failed: dict[str, str] = {}
    try:
        async with asyncio.timeout(_TIMEOUT):
            async with services.sessions() as session:
                revision = await session.scalar(text("SELECT version_num FROM alembic_version"))
        if _behind(revision):
            failed["migrations"] = f"database at {revision}, code expects {_head_revision()}"
    except TimeoutError:
        failed["database"] = f"no answer within {_TIMEOUT:.0f}s"
    except Exception as error:
        failed["database"] = type(error).__name__
    if not services.events.connected:
        failed["events"] = "the event backend is not connected"
    if failed:
        return _unready(failed)
    return JSONResponse({"status": "ready"})


@functools.cache
def _head_revision() -> str | None:
    return migrations.head_revision()  # reads the scripts folder: once per process


@functools.cache
def _known_revisions() -> frozenset[str]:
    return migrations.known_revisions()


def _behind(revision: str | None) -> bool:
    """The database lacks a migration this code needs. One at a revision this code does not
    know is ahead of it: upgrades migrate first (migrations only add), then replace replicas,
    and the old replicas must stay ready meanwhile."""
    if revision == _head_revision():
        return False
    return revision is None or revision in _known_revisions()


def _unready(failed: dict[str, str]) -> Response:
    return JSONResponse({"status": "unready", "failed": failed}, status_code=503)
