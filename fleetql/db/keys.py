"""Which encryption keys the stored kubeconfigs need, checked once at start.

A server started without a key the database needs would otherwise start fine and then fail every
cluster it encrypted at its next check; refusing at start turns that into one clear message.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import distinct_on, insert
from sqlalchemy.ext.asyncio import AsyncSession

from fleetql.db.models import Cluster, ClusterCredential, EncryptionKeyRecord
from fleetql.db.rotation import StoredKubeconfig

# The problem when the ring's key under the record's key id did not make the record, else None.
CheckRecord = Callable[[StoredKubeconfig], str | None]


class KeyMismatchError(Exception):
    """The configured keys cannot decrypt what the database holds."""


async def verify_encryption_key(
    session: AsyncSession,
    *,
    key_id: str,
    can_decrypt: Callable[[str], bool],
    check: CheckRecord | None = None,
    needs_check: Callable[[str], bool] = lambda key_id: True,
) -> None:
    """Refuse a key ring that lacks a key some stored record (or recorded primary) needs, or
    whose key under a needed id is another key; record the primary key's id.

    ``check`` is tried on one record per key id in use for which ``needs_check`` holds: with
    named key ids, a different key under a known name is caught here rather than at every
    cluster's next check. (An id that is its key's fingerprint needs no check.)
    """
    usage = (
        select(ClusterCredential.kubeconfig_key_id, func.count())
        .join(Cluster, Cluster.id == ClusterCredential.cluster_id)
        .where(Cluster.deleted_at.is_(None))
        .group_by(ClusterCredential.kubeconfig_key_id)
    )
    records: dict[str, int] = {
        key: count for key, count in (await session.execute(usage)).all() if key is not None
    }
    recorded = set((await session.execute(select(EncryptionKeyRecord.key_id))).scalars())
    unreadable = sorted(key for key in recorded | set(records) if not can_decrypt(key))
    if unreadable:
        needs = ", ".join(
            f"{key} ({records.get(key, 0)} record{'' if records.get(key, 0) == 1 else 's'})"
            for key in unreadable
        )
        raise KeyMismatchError(
            "this key cannot decrypt the stored kubeconfigs: they need key "
            f"{needs}, which the configured key ring (primary {key_id}) does not hold. "
            "Start with every key the database uses; to retire a key, run `fleetql rotate-key` "
            "with it still in the ring until no record uses it."
        )
    if check is not None and (unproven := sorted(key for key in records if needs_check(key))):
        await _check_samples(session, check, unproven)
    await session.execute(
        insert(EncryptionKeyRecord).values(key_id=key_id).on_conflict_do_nothing()
    )


async def _check_samples(session: AsyncSession, check: CheckRecord, key_ids: list[str]) -> None:
    sample = (
        select(
            ClusterCredential.cluster_id,
            ClusterCredential.kubeconfig_format,
            ClusterCredential.kubeconfig_key_id,
            ClusterCredential.kubeconfig_ciphertext,
        )
        .join(Cluster, Cluster.id == ClusterCredential.cluster_id)
        .ext(distinct_on(ClusterCredential.kubeconfig_key_id))
        .where(
            ClusterCredential.kubeconfig_key_id.in_(key_ids),
            Cluster.deleted_at.is_(None),
        )
        .order_by(ClusterCredential.kubeconfig_key_id, ClusterCredential.cluster_id)
    )
    for row in (await session.execute(sample)).all():
        record = StoredKubeconfig.from_row(row)
        if (problem := check(record)) is not None:
            raise KeyMismatchError(
                f"this key cannot decrypt the stored kubeconfigs: the ring's key {record.key_id} "
                f"does not open the record of cluster {record.cluster_id} ({problem}). "
                "Is another key configured under that id?"
            )
