"""Key rotation: rewrap every stored data key onto the primary key, online, in small batches.

Run by ``fleetql rotate-key`` while servers and pollers keep running with the same key ring. It is
resumable and idempotent by construction: it only ever selects records that are not yet wrapped
by the primary key in the current format, so a second run (or one after a crash) continues where
the first stopped, and two runs at once split the work (``SKIP LOCKED``). Format 1 records (issue
2's direct encryption) are converted to format 2 on the way.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.crypto import FORMAT_VERSION, DecryptionError, EncryptedBlob, KubeconfigCipher
from fleetql.db.rotation import (
    StoredKubeconfig,
    count_kubeconfigs_by_key,
    forget_unused_keys,
    lock_kubeconfigs_to_rewrap,
    store_rewrapped,
)

DEFAULT_BATCH_SIZE = 100


@dataclass
class RotationReport:
    """What a rotation did, and what (if anything) still keeps an old key in use."""

    primary: str
    rewrapped: int = 0
    # Records not on the primary key (or not in the current format) before the run, by key id.
    found: dict[str, int] = field(default_factory=dict)
    # Records not on the primary key (or not in the current format) after the run, by key id.
    remaining: dict[str, int] = field(default_factory=dict)
    # Records the ring could not open: cluster id -> the problem (never key material).
    failed: dict[uuid.UUID, str] = field(default_factory=dict)
    # Key ids whose recorded fingerprint was dropped because no record uses them any more.
    retired: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.remaining


async def rotate_keys(
    sessions: async_sessionmaker[AsyncSession],
    cipher: KubeconfigCipher,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[str], None] = lambda line: None,
    passes: int = 10,
    retry_delay: float = 1.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> RotationReport:
    """Rewrap every live record that the primary key did not wrap, ``batch_size`` per short
    transaction. Records locked by other work meanwhile are retried in up to ``passes`` passes."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    report = RotationReport(primary=cipher.key_id)
    report.found = await _stale_by_key(sessions, cipher)
    for attempt in range(passes):
        await _one_pass(sessions, cipher, batch_size=batch_size, report=report, progress=progress)
        report.remaining = await _stale_by_key(sessions, cipher)
        waiting = sum(report.remaining.values()) - len(report.failed)
        if waiting <= 0 or attempt == passes - 1:
            break
        progress(f"{waiting} records were busy (locked by other work); another pass follows")
        await sleep(retry_delay)
    if report.complete:
        async with sessions() as session:
            report.retired = await forget_unused_keys(session, keep=cipher.key_id)
            await session.commit()
    return report


async def _stale_by_key(
    sessions: async_sessionmaker[AsyncSession], cipher: KubeconfigCipher
) -> dict[str, int]:
    async with sessions() as session:
        counts = await count_kubeconfigs_by_key(session)
    stale: dict[str, int] = {}
    for (key_id, format_version), count in counts.items():
        if (key_id, format_version) != (cipher.key_id, FORMAT_VERSION):
            stale[key_id] = stale.get(key_id, 0) + count
    return stale


async def _one_pass(
    sessions: async_sessionmaker[AsyncSession],
    cipher: KubeconfigCipher,
    *,
    batch_size: int,
    report: RotationReport,
    progress: Callable[[str], None],
) -> None:
    after: uuid.UUID | None = None
    while True:
        async with sessions() as session:
            batch = await lock_kubeconfigs_to_rewrap(
                session,
                primary=cipher.key_id,
                format_version=FORMAT_VERSION,
                after=after,
                skip=list(report.failed),
                limit=batch_size,
            )
            if not batch:
                return
            rewrapped = [r for r in (_rewrap(cipher, record, report) for record in batch) if r]
            await store_rewrapped(session, rewrapped)
            await session.commit()
        after = batch[-1].cluster_id
        report.rewrapped += len(rewrapped)
        progress(f"rewrapped {report.rewrapped} records onto key {cipher.key_id}")


def _rewrap(
    cipher: KubeconfigCipher, record: StoredKubeconfig, report: RotationReport
) -> StoredKubeconfig | None:
    blob = EncryptedBlob(record.format_version, record.key_id, record.payload)
    try:
        new = cipher.rewrap(blob, cluster_id=record.cluster_id)
    except DecryptionError as error:
        report.failed[record.cluster_id] = str(error)
        return None
    return StoredKubeconfig(record.cluster_id, new.format_version, new.key_id, new.payload)


def record_checker(cipher: KubeconfigCipher) -> Callable[[StoredKubeconfig], str | None]:
    """For the start-up key check: the problem opening a record with ``cipher``, or None."""

    def problem(record: StoredKubeconfig) -> str | None:
        blob = EncryptedBlob(record.format_version, record.key_id, record.payload)
        try:
            cipher.check(blob, cluster_id=record.cluster_id)
        except DecryptionError as error:
            return str(error)
        return None

    return problem
