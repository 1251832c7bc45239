"""Migrations, the key check at start, and the embedded PostgreSQL."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from fleetql.app import open_services
from fleetql.config import ConfigError, Settings, load_settings
from fleetql.crypto import EncryptedBlob, EncryptionKey, KubeconfigCipher
from fleetql.db import migrations
from fleetql.db.keys import KeyMismatchError
from fleetql.db.models import Base
from tests.conftest import GraphQLClient, PostgresServer, asyncpg_dsn
from tests.kubeconfigs import KubeconfigFactory
from tests.test_api_import import IMPORT


async def table_names(url: str) -> set[str]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}


@pytest.fixture
def scratch_database(postgres: PostgresServer) -> str:
    return postgres.create_database("fleetql_scratch")


async def test_upgrade_head_and_downgrade_base_both_work(scratch_database: str) -> None:
    engine = create_async_engine(scratch_database)
    try:
        await migrations.upgrade(engine)
        assert {"clusters", "cluster_states", "encryption_keys"} <= await table_names(
            scratch_database
        )
        assert await migrations.current_revision(engine) == migrations.head_revision()
        await migrations.downgrade(engine, "base")
        assert await table_names(scratch_database) == {"alembic_version"}
        await migrations.upgrade(engine)
        assert "clusters" in await table_names(scratch_database)
    finally:
        await engine.dispose()


async def test_models_match_the_migrations(scratch_database: str) -> None:
    engine = create_async_engine(scratch_database)
    try:
        await migrations.upgrade(engine)
        async with engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()
    # Indexes created in raw SQL (trigram, partial) are not modelled; tables and columns are.
    relevant = [d for d in differences if d[0] not in ("add_index", "remove_index")]
    assert relevant == []


async def test_upgrade_to_0005_moves_every_kubeconfig_and_keeps_it_decryptable(
    scratch_database: str,
) -> None:
    """Clusters stored by 0004 keep their credentials through 0005 (and back): each record
    lands in ``cluster_credentials`` byte for byte, still opens with its cluster id as the
    associated data, and a removed cluster (no credentials) gets no row."""
    engine = create_async_engine(scratch_database)
    cipher = KubeconfigCipher(EncryptionKey.generate())
    plaintexts = {uuid.uuid4(): f"kubeconfig {n}".encode() * 40 for n in range(3)}
    removed = uuid.uuid4()
    connection = await asyncpg.connect(asyncpg_dsn(scratch_database))
    try:
        await migrations.upgrade(engine, "0004")
        for number, (cluster_id, plaintext) in enumerate(plaintexts.items()):
            blob = cipher.encrypt(plaintext, cluster_id=cluster_id)
            await connection.execute(
                "INSERT INTO clusters (id, name, api_server_url, kubeconfig_ciphertext, "
                "kubeconfig_key_id, kubeconfig_format) VALUES ($1, $2, 'https://k8s:6443', "
                "$3, $4, $5)",
                cluster_id,
                f"c{number}",
                blob.payload,
                blob.key_id,
                blob.format_version,
            )
        await connection.execute(
            "INSERT INTO clusters (id, name, api_server_url, deleted_at) "
            "VALUES ($1, 'gone', 'https://k8s:6443', now())",
            removed,
        )
        before = {
            row["id"]: row["kubeconfig_ciphertext"]
            for row in await connection.fetch("SELECT id, kubeconfig_ciphertext FROM clusters")
        }
        assert before[removed] is None

        await migrations.upgrade(engine, "0005")
        columns = await connection.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'clusters'"
        )
        assert not {row[0] for row in columns} & {"kubeconfig_ciphertext", "kubeconfig_key_id"}
        rows = await connection.fetch("SELECT * FROM cluster_credentials")
        assert {row["cluster_id"] for row in rows} == set(plaintexts)
        for row in rows:
            assert row["kubeconfig_ciphertext"] == before[row["cluster_id"]]
            blob = EncryptedBlob(
                row["kubeconfig_format"], row["kubeconfig_key_id"], row["kubeconfig_ciphertext"]
            )
            opened = cipher.decrypt(blob, cluster_id=row["cluster_id"])
            assert opened == plaintexts[row["cluster_id"]]

        await migrations.downgrade(engine, "0004")
        rows = await connection.fetch("SELECT * FROM clusters")
        assert {row["id"]: row["kubeconfig_ciphertext"] for row in rows} == before
        for row in rows:
            if row["id"] in plaintexts:
                blob = EncryptedBlob(
                    row["kubeconfig_format"], row["kubeconfig_key_id"], row["kubeconfig_ciphertext"]
                )
                assert cipher.decrypt(blob, cluster_id=row["id"]) == plaintexts[row["id"]]
    finally:
        await connection.close()
        await engine.dispose()


async def test_server_with_a_different_key_refuses_to_start(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, settings: Settings
) -> None:
    imported = await api.data(
        IMPORT, {"input": {"name": "keyed", "kubeconfig": kubeconfigs.base64()}}
    )
    assert imported["importCluster"]["userErrors"] == []
    other = settings.model_copy(
        update={
            "encryption": settings.encryption.model_copy(
                update={"key": EncryptionKey.generate().to_base64()}
            )
        }
    )
    with pytest.raises(KeyMismatchError, match=r"this key cannot decrypt the stored kubeconfigs"):
        async with open_services(other, migrate=False):
            pass


async def test_key_of_wrong_length_is_refused_at_start(settings: Settings) -> None:
    import base64

    short = settings.model_copy(
        update={
            "encryption": settings.encryption.model_copy(
                update={"key": base64.b64encode(b"x" * 16).decode()}
            )
        }
    )
    with pytest.raises(ConfigError, match=r"encryption\.key: .*32 bytes"):
        async with open_services(short, migrate=False):
            pass


async def test_external_database_without_key_is_refused(database_url: str) -> None:
    settings = load_settings(environ={}, overrides={"database": {"url": database_url}})
    with pytest.raises(ConfigError, match=r"encryption\.key: required with an external database"):
        async with open_services(settings, migrate=False):
            pass


async def test_embedded_database_generates_a_private_key_and_keeps_it(scratch_dir: Path) -> None:
    settings = load_settings(
        environ={},
        overrides={"database": {"embedded_data_dir": str(scratch_dir / "data" / "pgdata")}},
    )
    async with open_services(settings) as services, services.sessions() as session:
        from sqlalchemy import text

        assert (await session.execute(text("SELECT count(*) FROM clusters"))).scalar() == 0
    key_file = scratch_dir / "data" / "encryption.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first_key = key_file.read_text()
    async with open_services(settings):
        pass
    assert key_file.read_text() == first_key
