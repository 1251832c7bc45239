"""Which encryption keys the stored kubeconfigs need, checked once at start.

A server started with the wrong key would otherwise start fine and then fail every cluster at its
next check; refusing at start turns that into one clear message.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import CompoundSelect, select, union
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from fleetql.db.models import Cluster, EncryptionKeyRecord


class KeyMismatchError(Exception):
    """The configured key cannot decrypt what the database holds."""


async def verify_encryption_key(
    session: AsyncSession, *, key_id: str, can_decrypt: Callable[[str], bool]
) -> None:
    """Refuse a key that cannot decrypt the stored kubeconfigs; record the key's fingerprint."""
    used: CompoundSelect[str | None] = union(
        select(EncryptionKeyRecord.key_id),
        select(Cluster.kubeconfig_key_id).where(
            Cluster.kubeconfig_key_id.is_not(None), Cluster.deleted_at.is_(None)
        ),
    )
    stored = {row[0] for row in (await session.execute(used)).all() if row[0] is not None}
    unreadable = sorted(key for key in stored if not can_decrypt(key))
    if unreadable:
        raise KeyMismatchError(
            "this key cannot decrypt the stored kubeconfigs: they were encrypted with key "
            f"{', '.join(unreadable)}, the configured key is {key_id}. "
            "Start with the key the database was set up with."
        )
    await session.execute(
        insert(EncryptionKeyRecord).values(key_id=key_id).on_conflict_do_nothing()
    )
