"""Alembic environment.

`fleetql migrate` (and `fleetql serve`) hand a live connection in ``config.attributes``; run by
hand, Alembic reads the URL from fleetql's settings (``DATABASE_URL`` / ``FLEETQL_DATABASE__URL``).
"""

import asyncio

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context
from fleetql.config import load_settings
from fleetql.db.models import Base

target_metadata = Base.metadata
# Several replicas may start at once; one migrates while the others wait on this lock.
MIGRATION_LOCK_ID = 0x666C656574716C


def run_with(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        context.run_migrations()


async def run_from_settings() -> None:
    url = load_settings().database.url
    if url is None:
        raise SystemExit("set DATABASE_URL, or run `fleetql migrate` to use the embedded database")
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        await connection.run_sync(run_with)
    await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_with(connection)
else:
    asyncio.run(run_from_settings())
