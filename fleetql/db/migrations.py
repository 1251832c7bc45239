"""Running Alembic from inside fleetql, on the server's own connection.

The migration scripts live in ``alembic/`` at the top of the source tree, beside the package, so
that ``alembic upgrade head`` works in a checkout. A non-editable install (a container image)
has no source tree: it finds them in ``<prefix>/share/fleetql/alembic`` instead, where the
Dockerfile copies them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from alembic import command

SOURCE_TREE_DIR = Path(__file__).resolve().parents[2] / "alembic"
INSTALLED_DIR = Path(sys.prefix) / "share" / "fleetql" / "alembic"


class MigrationsNotFound(RuntimeError):
    """Neither the source tree nor the install prefix holds the migration scripts."""


def alembic_dir() -> Path:
    """The folder of migration scripts: the source tree's, else the installed copy."""
    for candidate in (SOURCE_TREE_DIR, INSTALLED_DIR):
        if (candidate / "env.py").is_file():
            return candidate
    raise MigrationsNotFound(
        f"cannot find fleetql's migrations in {SOURCE_TREE_DIR} or {INSTALLED_DIR}; "
        "install from a checkout, or copy its alembic/ folder to the second place"
    )


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(alembic_dir()))
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    await _run(engine, lambda config: command.upgrade(config, revision))


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    await _run(engine, lambda config: command.downgrade(config, revision))


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revisions() -> frozenset[str]:
    """Every revision this code's scripts define; a database at another one was migrated by
    newer code (during a rolling upgrade, before this replica is replaced)."""
    scripts = ScriptDirectory.from_config(alembic_config())
    return frozenset(script.revision for script in scripts.walk_revisions())


async def _run(engine: AsyncEngine, action: Callable[[Config], None]) -> None:
    config = alembic_config()

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        action(config)

    async with engine.begin() as connection:
        await connection.run_sync(run)
