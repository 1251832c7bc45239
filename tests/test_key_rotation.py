"""Online key rotation: `fleetql rotate-key` rewraps every data key in bounded batches while
servers and pollers run; resumable and idempotent; then the old key can go."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from fleetql.access import SYSTEM
from fleetql.app import open_services
from fleetql.config import Settings, load_settings
from fleetql.crypto import EncryptedBlob, EncryptionKey
from fleetql.db.keys import KeyMismatchError
from fleetql.poller.service import running_poller
from fleetql.poller.worker import Poller
from fleetql.resolvers.context import Context, Services
from fleetql.resolvers.imports import import_cluster
from fleetql.rotation import rotate_keys
from fleetql.sim import Simulator
from tests.conftest import PostgresServer, asyncpg_dsn
from tests.kubeconfigs import KubeconfigFactory
from tests.test_envelope import legacy_blob

# `python -m fleetql` from this checkout (the venv's `fleetql` script may belong to another one).
REPO = Path(__file__).resolve().parents[1]
OLD, NEW = EncryptionKey.generate(), EncryptionKey.generate()


@pytest.fixture
def rotation_database(postgres: PostgresServer) -> str:
    return postgres.create_database("fleetql_rotation")


def ring(database_url: str, primary: str, *key_ids: str, **poller: Any) -> Settings:
    keys = {"old": OLD, "new": NEW}
    return load_settings(
        environ={},
        overrides={
            "database": {"url": database_url, "pool_size": 3},
            "encryption": {
                "keys": [{"id": key_id, "key": keys[key_id].to_base64()} for key_id in key_ids],
                "primary": primary,
            },
            "poller": poller or {"enabled": False},
        },
    )


async def eventually(condition: Callable[[], Awaitable[bool]], *, within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def fetch(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def import_fleet(services: Services, kubeconfigs: dict[str, str]) -> dict[str, uuid.UUID]:
    context = Context(services=services, request_id="test", principal=SYSTEM)
    ids = {}
    for name, kubeconfig in kubeconfigs.items():
        result = await import_cluster(context, name=name, kubeconfig=kubeconfig)
        assert result.cluster is not None, result.user_errors
        ids[name] = uuid.UUID(str(result.cluster.id))
    return ids


async def store_as_issue_2_did(
    database_url: str, services: Services, cluster_id: uuid.UUID
) -> None:
    """Replace a record with its format 1 form (direct encryption under the old key)."""
    row = (
        await fetch(
            database_url, "SELECT * FROM cluster_credentials WHERE cluster_id = $1", cluster_id
        )
    )[0]
    blob = EncryptedBlob(
        row["kubeconfig_format"], row["kubeconfig_key_id"], row["kubeconfig_ciphertext"]
    )
    legacy = legacy_blob(OLD, services.cipher.decrypt(blob, cluster_id=cluster_id), cluster_id)
    await fetch(
        database_url,
        "UPDATE cluster_credentials SET kubeconfig_ciphertext = $2, kubeconfig_key_id = $3, "
        "kubeconfig_format = 1 WHERE cluster_id = $1",
        cluster_id,
        legacy.payload,
        legacy.key_id,
    )


async def plaintexts(database_url: str, services: Services) -> dict[uuid.UUID, bytes]:
    rows = await fetch(database_url, "SELECT * FROM cluster_credentials")
    return {
        row["cluster_id"]: services.cipher.decrypt(
            EncryptedBlob(
                row["kubeconfig_format"], row["kubeconfig_key_id"], row["kubeconfig_ciphertext"]
            ),
            cluster_id=row["cluster_id"],
        )
        for row in rows
    }


async def key_usage(database_url: str) -> dict[tuple[str, int], int]:
    rows = await fetch(
        database_url,
        "SELECT kubeconfig_key_id, kubeconfig_format, count(*) FROM cluster_credentials "
        "GROUP BY 1, 2",
    )
    return {(row[0], row[1]): row[2] for row in rows}


@pytest.fixture
async def old_fleet(
    rotation_database: str, kubeconfigs: KubeconfigFactory
) -> AsyncIterator[dict[uuid.UUID, bytes]]:
    """Seven clusters under the old key, two of them still as issue 2 stored them; yields their
    kubeconfigs as they decrypt before any rotation."""
    async with open_services(ring(rotation_database, "old", "old")) as services:
        ids = await import_fleet(services, {f"c{i}": kubeconfigs.base64() for i in range(7)})
        for name in ("c0", "c3"):
            await store_as_issue_2_did(rotation_database, services, ids[name])
        kubeconfigs_before = await plaintexts(rotation_database, services)
    yield kubeconfigs_before


async def test_rotation_rewraps_every_record_in_batches_and_touches_nothing_else(
    rotation_database: str, old_fleet: dict[uuid.UUID, bytes]
) -> None:
    assert await key_usage(rotation_database) == {(OLD.key_id, 1): 2, ("old", 2): 5}
    before = await fetch(rotation_database, "SELECT id, version, updated_at FROM clusters")
    events_before = await fetch(rotation_database, "SELECT count(*) FROM cluster_events")
    lines: list[str] = []

    async with open_services(
        ring(rotation_database, "new", "old", "new"), migrate=False
    ) as services:
        report = await rotate_keys(
            services.sessions, services.cipher, batch_size=3, progress=lines.append
        )
        again = await rotate_keys(services.sessions, services.cipher, batch_size=3)

    assert (report.rewrapped, report.remaining, report.failed) == (7, {}, {})
    assert report.complete and report.retired == ["old"]
    assert lines == [f"rewrapped {n} records onto key new" for n in (3, 6, 7)]
    assert (again.rewrapped, again.complete) == (0, True)  # idempotent: nothing left to do
    assert await key_usage(rotation_database) == {("new", 2): 7}
    # A rewrap is not a change of the cluster: same version, same updated_at, no event.
    after = await fetch(rotation_database, "SELECT id, version, updated_at FROM clusters")
    assert sorted(map(tuple, after)) == sorted(map(tuple, before))
    assert await fetch(rotation_database, "SELECT count(*) FROM cluster_events") == events_before
    # The old key can go: a ring of the new key alone starts and opens every kubeconfig.
    async with open_services(ring(rotation_database, "new", "new"), migrate=False) as services:
        assert await plaintexts(rotation_database, services) == old_fleet


async def test_an_interrupted_rotation_resumes_where_it_stopped(
    rotation_database: str, old_fleet: dict[uuid.UUID, bytes]
) -> None:
    class Interrupted(Exception):
        pass

    def crash(line: str) -> None:
        raise Interrupted(line)

    settings = ring(rotation_database, "new", "old", "new")
    async with open_services(settings, migrate=False) as services:
        with pytest.raises(Interrupted):
            await rotate_keys(services.sessions, services.cipher, batch_size=3, progress=crash)
        usage = await key_usage(rotation_database)
        assert usage[("new", 2)] == 3 and sum(usage.values()) == 7
        # Started without the old key now, the server refuses, naming the key still in use.
        with pytest.raises(KeyMismatchError, match=r"need key .*old \(\d records?\)"):
            async with open_services(ring(rotation_database, "new", "new"), migrate=False):
                pass
        report = await rotate_keys(services.sessions, services.cipher, batch_size=3)

    assert (report.rewrapped, report.complete) == (4, True)
    async with open_services(ring(rotation_database, "new", "new"), migrate=False) as services:
        assert await plaintexts(rotation_database, services) == old_fleet


async def test_records_busy_elsewhere_are_skipped_then_rewrapped_in_another_pass(
    rotation_database: str, old_fleet: dict[uuid.UUID, bytes]
) -> None:
    busy = await asyncpg.connect(asyncpg_dsn(rotation_database))
    transaction = busy.transaction()
    await transaction.start()
    # (Not LIMIT/OFFSET with FOR UPDATE: PostgreSQL locks the rows the offset skips too.)
    locked = await busy.fetchval(
        "SELECT id FROM clusters WHERE id = (SELECT id FROM clusters ORDER BY id OFFSET 2 LIMIT 1) "
        "FOR UPDATE"
    )
    lines: list[str] = []

    async def release(seconds: float) -> None:
        await transaction.commit()

    try:
        async with open_services(
            ring(rotation_database, "new", "old", "new"), migrate=False
        ) as services:
            report = await rotate_keys(
                services.sessions, services.cipher, progress=lines.append, sleep=release
            )
    finally:
        await busy.close()

    assert (report.rewrapped, report.complete) == (7, True)
    assert "1 records were busy (locked by other work); another pass follows" in lines
    assert await key_usage(rotation_database) == {("new", 2): 7}
    assert locked in old_fleet


async def test_a_record_the_ring_cannot_open_is_reported_and_keeps_its_key(
    rotation_database: str, old_fleet: dict[uuid.UUID, bytes]
) -> None:
    damaged = sorted(old_fleet)[4]
    await fetch(
        rotation_database,
        "UPDATE cluster_credentials SET kubeconfig_ciphertext = "
        "overlay(kubeconfig_ciphertext placing '\\xff'::bytea from 40) WHERE cluster_id = $1",
        damaged,
    )
    async with open_services(
        ring(rotation_database, "new", "old", "new"), migrate=False
    ) as services:
        report = await rotate_keys(
            services.sessions, services.cipher, batch_size=2, passes=3, sleep=_no_wait
        )

    assert report.rewrapped == 6 and not report.complete
    assert list(report.failed) == [damaged]
    assert report.remaining in ({"old": 1}, {OLD.key_id: 1})
    assert report.retired == []
    assert OLD.to_base64() not in str(report.failed)


async def _no_wait(seconds: float) -> None:
    return None


async def test_rotate_key_command_reports_when_no_record_uses_the_old_key(
    rotation_database: str, old_fleet: dict[uuid.UUID, bytes], tmp_path: Path
) -> None:
    # The new key from a file, as a secret store would mount it; the old one inline.
    key_file = tmp_path / "new.key"
    key_file.write_text(NEW.to_base64() + "\n")
    key_file.chmod(0o600)
    keys = [{"id": "old", "key": OLD.to_base64()}, {"id": "new", "key_file": str(key_file)}]
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEETQL_")}
    env |= {
        "DATABASE_URL": rotation_database,
        "PYTHONPATH": str(REPO),
        "FLEETQL_ENCRYPTION__KEYS": json.dumps(keys),
        "FLEETQL_ENCRYPTION__PRIMARY": "new",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleetql",
        "rotate-key",
        "--batch-size",
        "4",
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output = (await asyncio.wait_for(process.communicate(), 120))[0].decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0, output
    assert "primary key new; other keys: old" in output
    assert "rewrapped 4 records onto key new" in output
    assert "rewrapped 7 records onto key new" in output
    assert "no record uses key old any more; it may be removed from the ring" in output
    assert f"no record uses key {OLD.key_id} any more" in output  # issue 2's records, converted
    assert OLD.to_base64() not in output and NEW.to_base64() not in output
    assert await key_usage(rotation_database) == {("new", 2): 7}


@asynccontextmanager
async def replica(settings: Settings) -> AsyncIterator[Poller]:
    """A server's worth of fleetql without HTTP: its services and a running poller."""
    async with (
        open_services(settings, migrate=False) as services,
        running_poller(settings, sessions=services.sessions, cipher=services.cipher) as poller,
    ):
        yield poller


async def test_rotation_under_two_polling_replicas_then_restart_without_the_old_key(
    rotation_database: str,
) -> None:
    polling = {
        "enabled": True,
        "check_interval": timedelta(milliseconds=400),
        "client_timeout": timedelta(seconds=10),
        "retry_attempts": 0,
        "status_threshold": 1,
        "max_concurrency": 4,
    }
    names = [f"rot-{i}" for i in range(10)]
    async with Simulator() as sim:
        for name in names:
            sim.add_cluster(name, node_count=2)
        async with open_services(ring(rotation_database, "old", "old")) as services:
            ids = await import_fleet(
                services, {name: yaml.safe_dump(sim.kubeconfig(name)) for name in names}
            )
            for name in names[:4]:  # some records still as issue 2 stored them
                await store_as_issue_2_did(rotation_database, services, ids[name])

        async def all_checked_after(since: datetime) -> bool:
            rows = await fetch(
                rotation_database,
                "SELECT count(*) FROM cluster_states WHERE last_checked_at > $1",
                since,
            )
            return bool(rows[0][0] == len(names))

        async def every_cluster_checked_twice_from_now(what: str) -> None:
            """Two completed checks of each cluster after this moment: the second was claimed
            (and its record read) after the moment, since a cluster has one check at a time."""
            for _ in range(2):
                since = (await fetch(rotation_database, "SELECT clock_timestamp()"))[0][0]
                await eventually(partial(all_checked_after, since), within=60, what=what)

        both_keys = ring(rotation_database, "new", "old", "new", **polling)
        async with AsyncExitStack() as replicas:
            pollers = [await replicas.enter_async_context(replica(both_keys)) for _ in range(2)]
            await every_cluster_checked_twice_from_now("first checks")

            # Rotate two records at a time, and let every cluster be checked between batches,
            # while the fleet is part old key, part new key, part issue 2's format.
            class BatchDone(Exception):
                pass

            def stop_after_a_batch(line: str) -> None:
                raise BatchDone(line)

            batches = 0
            async with open_services(
                ring(rotation_database, "new", "old", "new"), migrate=False, relay_events=False
            ) as rotating:
                while True:
                    try:
                        report = await rotate_keys(
                            rotating.sessions,
                            rotating.cipher,
                            batch_size=2,
                            progress=stop_after_a_batch,
                        )
                        break
                    except BatchDone:
                        batches += 1
                        await every_cluster_checked_twice_from_now("checks between batches")
            assert batches == 5 and report.complete
            assert await key_usage(rotation_database) == {("new", 2): 10}
            # Keep polling past the rotation: each cluster is checked again on its new record.
            await every_cluster_checked_twice_from_now("checks after the rotation")
            assert sum(poller.stats.checks for poller in pollers) > 0
            assert [poller.stats.failures for poller in pollers] == [0, 0]

        assert await key_usage(rotation_database) == {("new", 2): 10}
        failures = await fetch(
            rotation_database,
            "SELECT count(*) FROM cluster_events WHERE type = 'CHECK_FAILED'",
        )
        assert failures[0][0] == 0
        states = await fetch(
            rotation_database,
            "SELECT status, consecutive_failures, last_error_code FROM cluster_states",
        )
        assert {tuple(state) for state in states} == {("HEALTHY", 0, None)}

        # Restart without the old key: every cluster still decrypts, and every check succeeds.
        only_new = ring(rotation_database, "new", "new", **polling)
        async with replica(only_new) as poller:
            await every_cluster_checked_twice_from_now("checks after the restart")
            assert poller.stats.failures == 0 and poller.stats.checks >= len(names)
        states = await fetch(
            rotation_database,
            "SELECT status, consecutive_failures, last_error_code FROM cluster_states",
        )
        assert {tuple(state) for state in states} == {("HEALTHY", 0, None)}
        failures = await fetch(
            rotation_database,
            "SELECT count(*) FROM cluster_events WHERE type = 'CHECK_FAILED'",
        )
        assert failures[0][0] == 0
