"""The queries of a key rotation: lock a batch of records to rewrap, store them, count what is left.

Each batch is one short transaction that locks its rows with ``FOR UPDATE SKIP LOCKED``, so a
rotation runs beside the API and the pollers without waiting on them or making them wait long,
and two rotations at once share the work instead of doing it twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Row, bindparam, delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetql.db.models import Cluster, ClusterCredential, EncryptionKeyRecord


@dataclass(frozen=True)
class StoredKubeconfig:
    """One live cluster's encrypted kubeconfig as stored, and which key and format made it."""

    cluster_id: uuid.UUID
    format_version: int
    key_id: str
    payload: bytes

    @classmethod
    def from_row(
        cls, row: Row[uuid.UUID, int | None, str | None, bytes | None]
    ) -> StoredKubeconfig:
        """From a row of (cluster id, kubeconfig_format, kubeconfig_key_id,
        kubeconfig_ciphertext)."""
        cluster_id, format_version, key_id, payload = row
        return cls(cluster_id, format_version or 0, key_id or "", payload or b"")


# Only live clusters have credentials (a removal erases them); the join keeps a rotation racing
# a removal from rewrapping a record that is about to go.
_LIVE = (Cluster.id == ClusterCredential.cluster_id, Cluster.deleted_at.is_(None))


async def lock_kubeconfigs_to_rewrap(
    session: AsyncSession,
    *,
    primary: str,
    format_version: int,
    after: uuid.UUID | None,
    skip: Sequence[uuid.UUID] = (),
    limit: int,
) -> list[StoredKubeconfig]:
    """Lock up to ``limit`` records (in id order, past ``after``) not yet wrapped by ``primary``
    in ``format_version``. Rows another transaction holds are skipped, not waited for; the
    caller counts what is left at the end. The caller commits."""
    query = (
        select(
            ClusterCredential.cluster_id,
            ClusterCredential.kubeconfig_format,
            ClusterCredential.kubeconfig_key_id,
            ClusterCredential.kubeconfig_ciphertext,
        )
        .where(
            *_LIVE,
            or_(
                ClusterCredential.kubeconfig_key_id != primary,
                ClusterCredential.kubeconfig_format != format_version,
            ),
        )
        .order_by(ClusterCredential.cluster_id)
        .limit(limit)
        # The cluster's row too: a change or removal of the cluster (which locks it) is
        # waited for by nobody, and the record is rewrapped in a later pass.
        .with_for_update(of=(Cluster, ClusterCredential), skip_locked=True)
    )
    if after is not None:
        query = query.where(ClusterCredential.cluster_id > after)
    if skip:
        query = query.where(ClusterCredential.cluster_id.not_in(skip))
    rows = (await session.execute(query)).all()
    return [StoredKubeconfig.from_row(row) for row in rows]


async def store_rewrapped(session: AsyncSession, records: Sequence[StoredKubeconfig]) -> None:
    """Write rewrapped records over the ones locked. Only the ciphertext, key id and format
    change: a rewrap is not a change of the cluster, so its ``version`` and ``updated_at`` stay
    and no event is logged. The caller commits."""
    if not records:
        return
    statement = (
        update(ClusterCredential)
        .where(ClusterCredential.cluster_id == bindparam("b_id"))
        .values(
            kubeconfig_ciphertext=bindparam("b_payload"),
            kubeconfig_key_id=bindparam("b_key_id"),
            kubeconfig_format=bindparam("b_format"),
        )
    )
    connection = await session.connection()
    await connection.execute(
        statement,
        [
            {
                "b_id": record.cluster_id,
                "b_payload": record.payload,
                "b_key_id": record.key_id,
                "b_format": record.format_version,
            }
            for record in records
        ],
    )


async def count_kubeconfigs_by_key(session: AsyncSession) -> dict[tuple[str, int], int]:
    """How many live records each (key id, format version) has."""
    query = (
        select(
            ClusterCredential.kubeconfig_key_id, ClusterCredential.kubeconfig_format, func.count()
        )
        .where(*_LIVE)
        .group_by(ClusterCredential.kubeconfig_key_id, ClusterCredential.kubeconfig_format)
    )
    return {
        (key_id or "", format_version or 0): count
        for key_id, format_version, count in (await session.execute(query)).all()
    }


async def forget_unused_keys(session: AsyncSession, *, keep: str) -> list[str]:
    """Drop the recorded fingerprints of keys that no live record uses any more (except
    ``keep``), so that a server started without them is not refused. The caller commits."""
    in_use = exists().where(ClusterCredential.kubeconfig_key_id == EncryptionKeyRecord.key_id)
    statement = (
        delete(EncryptionKeyRecord)
        .where(EncryptionKeyRecord.key_id != keep, ~in_use)
        .returning(EncryptionKeyRecord.key_id)
    )
    return sorted((await session.execute(statement)).scalars())
