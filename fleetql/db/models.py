"""The tables, as SQLAlchemy 2 declarative models. Alembic migrations are the source of truth for
the schema; these mirror them so that queries are typed."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Integer,
    LargeBinary,
    Numeric,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class ClusterStatus(enum.StrEnum):
    """A cluster's health as the last check saw it. Stored as text so adding a status is a plain
    migration, not an ALTER TYPE."""

    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"
    UNREACHABLE = "UNREACHABLE"
    UNKNOWN = "UNKNOWN"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSONB,
    }


class Cluster(Base):
    __tablename__ = "clusters"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, server_default="")
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    api_server_url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column()
    version: Mapped[int] = mapped_column(BigInteger, server_default="1")
    credential_kind: Mapped[str | None] = mapped_column(Text)
    credential_expires_at: Mapped[datetime | None] = mapped_column()
    credential_subject: Mapped[str | None] = mapped_column(Text)
    credential_warned_at: Mapped[datetime | None] = mapped_column()

    state: Mapped[ClusterState] = relationship(back_populates="cluster", lazy="raise")


class ClusterCredential(Base):
    """A live cluster's encrypted kubeconfig, and which key and format made it. Kept apart from
    ``clusters`` (1:1) so that the ~1 KB ciphertext does not fill the heap every list scans; only
    the poller, imports and key rotation read it. A removed cluster has none."""

    __tablename__ = "cluster_credentials"

    cluster_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("clusters.id", ondelete="CASCADE"), primary_key=True
    )
    kubeconfig_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    kubeconfig_key_id: Mapped[str] = mapped_column(Text)
    kubeconfig_format: Mapped[int] = mapped_column(SmallInteger)


class ClusterState(Base):
    __tablename__ = "cluster_states"

    cluster_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("clusters.id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[str] = mapped_column(Text, server_default=ClusterStatus.UNKNOWN.value)
    node_count: Mapped[int | None] = mapped_column(Integer)
    ready_node_count: Mapped[int | None] = mapped_column(Integer)
    # CPU in cores (exact decimals: 3500m is 3.5), memory in bytes.
    cpu_capacity_cores: Mapped[Decimal | None] = mapped_column(Numeric(20, 3))
    cpu_allocatable_cores: Mapped[Decimal | None] = mapped_column(Numeric(20, 3))
    cpu_usage_cores: Mapped[Decimal | None] = mapped_column(Numeric(20, 3))
    memory_capacity_bytes: Mapped[int | None] = mapped_column(BigInteger)
    memory_allocatable_bytes: Mapped[int | None] = mapped_column(BigInteger)
    memory_usage_bytes: Mapped[int | None] = mapped_column(BigInteger)
    kubernetes_version: Mapped[str | None] = mapped_column(Text)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column()
    last_checked_at: Mapped[datetime | None] = mapped_column()
    last_error_code: Mapped[str | None] = mapped_column(Text)
    last_error_message: Mapped[str | None] = mapped_column(Text)
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default="0")
    next_check_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    pending_status: Mapped[str | None] = mapped_column(Text)
    pending_count: Mapped[int] = mapped_column(Integer, server_default="0")
    claimed_until: Mapped[datetime | None] = mapped_column()

    cluster: Mapped[Cluster] = relationship(back_populates="state", lazy="raise")


class FleetTotal(Base):
    """One shard of the sums over live clusters of one (status, minor version): kept by triggers
    (alembic/versions/0006_fleet_totals.py); only the sum over a group's shards means anything."""

    __tablename__ = "fleet_totals"

    status: Mapped[str] = mapped_column(Text, primary_key=True)
    # "v1.28"; '' when the version is unknown (a key column cannot be null).
    minor: Mapped[str] = mapped_column(Text, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    clusters: Mapped[int] = mapped_column(BigInteger, server_default="0")
    nodes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    ready_nodes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cpu_capacity_cores: Mapped[Decimal] = mapped_column(Numeric, server_default="0")
    cpu_allocatable_cores: Mapped[Decimal] = mapped_column(Numeric, server_default="0")
    memory_capacity_bytes: Mapped[Decimal] = mapped_column(Numeric, server_default="0")
    memory_allocatable_bytes: Mapped[Decimal] = mapped_column(Numeric, server_default="0")


class EventType(enum.StrEnum):
    """What an entry of the event log records."""

    IMPORTED = "IMPORTED"
    UPDATED = "UPDATED"
    REMOVED = "REMOVED"
    STATUS_CHANGED = "STATUS_CHANGED"
    VERSION_CHANGED = "VERSION_CHANGED"
    NODES_CHANGED = "NODES_CHANGED"
    CHECK_FAILED = "CHECK_FAILED"
    RECOVERED = "RECOVERED"
    CREDENTIAL_EXPIRING = "CREDENTIAL_EXPIRING"


class ClusterEventRecord(Base):
    """One entry of the event log, written in the transaction of the change it records."""

    __tablename__ = "cluster_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    cluster_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("clusters.id"))
    type: Mapped[str] = mapped_column(Text)
    previous_status: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(Text)
    changes: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    message: Mapped[str] = mapped_column(Text, server_default="")
    actor: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(server_default=func.now())


class EventRelayPosition(Base):
    __tablename__ = "event_relay"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    last_event_id: Mapped[int] = mapped_column(BigInteger)
    pruned_through: Mapped[int] = mapped_column(BigInteger, server_default="0")


class EncryptionKeyRecord(Base):
    """Fingerprints of the keys that encrypted stored kubeconfigs, never the keys themselves."""

    __tablename__ = "encryption_keys"

    key_id: Mapped[str] = mapped_column(Text, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ApiTokenRecord(Base):
    """A token for scripts and CI. Only the SHA-256 of its secret is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    name: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    scope: Mapped[str | None] = mapped_column(Text)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    created_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
