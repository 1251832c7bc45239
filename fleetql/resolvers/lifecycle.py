"""Changing and removing clusters: all or nothing, versioned, and logged with the change.

Every change bumps the cluster's ``version``; a caller that read version 4 and sends
``expected_version=4`` gets CONFLICT if someone changed the cluster meanwhile, as Kubernetes does
with resourceVersion. The event log entry is written in the same transaction, so the log and the
cluster never disagree. Expected failures are ``UserError``s; nothing is stored when any occurs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from fleetql.access import Role
from fleetql.credentials import inspect_credential
from fleetql.crypto import EncryptedBlob
from fleetql.db import clusters as db
from fleetql.db.events import NewEvent, log_events
from fleetql.db.models import Cluster, EventType
from fleetql.db.states import request_checks
from fleetql.labels import LabelError, validate_label_key
from fleetql.resolvers.authorization import check_access, check_new_labels, not_found
from fleetql.resolvers.context import Context
from fleetql.resolvers.errors import UserError
from fleetql.resolvers.imports import (
    MAX_DESCRIPTION_LENGTH,
    check_labels,
    check_name,
    resolve_kubeconfig,
)

__all__ = [
    "ClusterUpdate",
    "LifecycleResult",
    "remove_cluster",
    "resync_cluster",
    "resync_clusters",
    "set_cluster_labels",
    "update_cluster",
]

MAX_BULK = 1000
RESYNC_POLL = 0.1


@dataclass(frozen=True)
class LifecycleResult:
    clusters: list[db.ClusterRecord] = field(default_factory=list)
    user_errors: list[UserError] = field(default_factory=list)

    @property
    def cluster(self) -> db.ClusterRecord | None:
        return self.clusters[0] if self.clusters else None


@dataclass(frozen=True)
class ClusterUpdate:
    """Fields to change; None leaves a field as it is."""

    name: str | None = None
    description: str | None = None
    labels: Sequence[tuple[str, str]] | None = None
    add_labels: Sequence[tuple[str, str]] = ()
    remove_labels: Sequence[str] = ()
    kubeconfig: str | None = None
    context: str | None = None
    expected_version: int | None = None


def _check_keys(keys: Sequence[str], field_name: str) -> list[UserError]:
    errors = []
    for index, key in enumerate(keys):
        try:
            validate_label_key(key)
        except LabelError as error:
            errors.append(UserError(f"{field_name}[{index}]", "INVALID_LABEL", str(error)))
    return errors


async def update_cluster(
    context: Context, cluster_id: uuid.UUID, change: ClusterUpdate
) -> LifecycleResult:
    errors: list[UserError] = []
    if change.name is not None:
        errors += check_name(change.name)
    if change.description is not None and len(change.description) > MAX_DESCRIPTION_LENGTH:
        errors.append(
            UserError(
                "description",
                "INVALID_DESCRIPTION",
                f"description is {len(change.description)} characters; "
                f"at most {MAX_DESCRIPTION_LENGTH}",
            )
        )
    if change.labels is not None:
        errors += check_labels(change.labels, field_name="labels")
    errors += check_labels(change.add_labels, field_name="addLabels")
    errors += _check_keys(change.remove_labels, "removeLabels")
    resolved = None
    if change.kubeconfig is not None:
        outcome = await resolve_kubeconfig(context, change.kubeconfig, change.context)
        if isinstance(outcome, UserError):
            errors.append(outcome)
        else:
            resolved = outcome
    elif change.context is not None:
        errors.append(
            UserError("context", "INVALID_INPUT", "context needs a kubeconfig to pick from")
        )
    if errors:
        return LifecycleResult(user_errors=errors)

    async with context.services.sessions() as session:
        cluster = await db.lock_live_cluster(session, cluster_id)
        if cluster is None:
            return LifecycleResult(user_errors=[not_found("id", cluster_id)])
        if refused := check_access(context, "id", cluster_id, cluster.labels, Role.OPERATOR):
            return LifecycleResult(user_errors=[refused])
        if change.expected_version is not None and change.expected_version != cluster.version:
            return LifecycleResult(
                user_errors=[
                    UserError(
                        "expectedVersion",
                        "CONFLICT",
                        f"the cluster is at version {cluster.version}, not "
                        f"{change.expected_version}: reload it and apply your change again",
                    )
                ]
            )
        changes: dict[str, tuple[Any, Any]] = {}
        blob: EncryptedBlob | None = None
        if change.name is not None and change.name != cluster.name:
            if await db.name_is_taken(session, change.name):
                return LifecycleResult(
                    user_errors=[
                        UserError(
                            "name",
                            "NAME_TAKEN",
                            f"a cluster named {change.name!r} already exists",
                        )
                    ]
                )
            changes["name"] = (cluster.name, change.name)
            cluster.name = change.name
        if change.description is not None and change.description != cluster.description:
            changes["description"] = (cluster.description, change.description)
            cluster.description = change.description
        labels = _new_labels(cluster.labels, change)
        if labels != cluster.labels:
            if refused := check_new_labels(context, "labels", labels):
                return LifecycleResult(user_errors=[refused])
            changes["labels"] = (cluster.labels, labels)
            cluster.labels = labels
        if resolved is not None:
            blob = context.services.cipher.encrypt(resolved.to_yaml(), cluster_id=cluster.id)
            credential = inspect_credential(resolved)
            # Which credential, never the credential: kinds and subjects only.
            changes["credential"] = (
                _credential_label(cluster.credential_kind, cluster.credential_subject),
                _credential_label(credential.kind.value, credential.subject),
            )
            if resolved.server != cluster.api_server_url:
                changes["api_server_url"] = (cluster.api_server_url, resolved.server)
            cluster.api_server_url = resolved.server
            cluster.credential_kind = credential.kind.value
            cluster.credential_expires_at = credential.expires_at
            cluster.credential_subject = credential.subject
            cluster.credential_warned_at = None
        if changes:
            cluster.version += 1
            cluster.updated_at = func.now()
            try:
                await session.flush()
            except IntegrityError:
                # Another change took the name between our check and our write.
                await session.rollback()
                return LifecycleResult(
                    user_errors=[UserError("name", "NAME_TAKEN", "the name was taken meanwhile")]
                )
            if blob is not None:
                await db.store_credentials(
                    session,
                    cluster.id,
                    kubeconfig_ciphertext=blob.payload,
                    kubeconfig_key_id=blob.key_id,
                    kubeconfig_format=blob.format_version,
                )
                await db.check_soon(session, cluster.id)
            await log_events(session, [_updated(cluster, changes, context.actor)])
            await session.commit()
        record = await db.get_cluster(session, cluster_id)
    if changes:
        context.services.relay.wake()
    return LifecycleResult(clusters=[] if record is None else [record])


def _credential_label(kind: str | None, subject: str | None) -> str | None:
    if kind is None:
        return None
    return f"{kind} {subject}" if subject else kind


def _new_labels(current: Mapping[str, str], change: ClusterUpdate) -> dict[str, str]:
    labels = dict(current) if change.labels is None else dict(change.labels)
    for key in change.remove_labels:
        labels.pop(key, None)
    labels.update(change.add_labels)
    return labels


def _updated(cluster: Cluster, changes: dict[str, tuple[Any, Any]], actor: str | None) -> NewEvent:
    names = ", ".join(sorted(changes))
    return NewEvent(
        cluster_id=cluster.id,
        type=EventType.UPDATED,
        status=None,
        changes=changes,
        message=f"updated {names}",
        actor=actor,
    )


async def remove_cluster(context: Context, cluster_id: uuid.UUID) -> LifecycleResult:
    """Soft delete: the cluster leaves every list and the poller's queue, its name is free, and
    its encrypted kubeconfig is erased in the same transaction. Its history stays."""
    async with context.services.sessions() as session:
        before = await db.get_cluster(session, cluster_id)
        cluster = await db.lock_live_cluster(session, cluster_id)
        if cluster is None or before is None:
            return LifecycleResult(user_errors=[not_found("id", cluster_id)])
        if refused := check_access(context, "id", cluster_id, cluster.labels, Role.ADMIN):
            return LifecycleResult(user_errors=[refused])
        cluster.deleted_at = func.now()
        cluster.updated_at = func.now()
        cluster.version += 1
        await session.flush()
        await db.erase_credentials(session, cluster.id)
        await log_events(
            session,
            [
                NewEvent(
                    cluster_id=cluster.id,
                    type=EventType.REMOVED,
                    status=before.status.value,
                    message=f"removed {cluster.name!r}",
                    actor=context.actor,
                )
            ],
        )
        await session.commit()
    context.services.relay.wake()
    return LifecycleResult(clusters=[before])


async def set_cluster_labels(
    context: Context,
    cluster_ids: Sequence[uuid.UUID],
    *,
    add: Sequence[tuple[str, str]] = (),
    remove: Sequence[str] = (),
) -> LifecycleResult:
    """Relabel many clusters in one transaction: every one of them, or none."""
    errors = check_labels(add, field_name="add") + _check_keys(remove, "remove")
    if not cluster_ids:
        errors.append(UserError("ids", "INVALID_INPUT", "give at least one cluster id"))
    if len(cluster_ids) > MAX_BULK:
        errors.append(UserError("ids", "INVALID_INPUT", f"at most {MAX_BULK} clusters at once"))
    if errors:
        return LifecycleResult(user_errors=errors)
    unique = list(dict.fromkeys(cluster_ids))
    change = ClusterUpdate(add_labels=add, remove_labels=remove)
    async with context.services.sessions() as session:
        found = await db.lock_live_clusters(session, unique)
        missing = [
            not_found(f"ids[{index}]", cluster_id)
            for index, cluster_id in enumerate(cluster_ids)
            if cluster_id not in found
        ]
        refusals = [
            refused
            for index, cluster_id in enumerate(cluster_ids)
            if cluster_id in found
            and (
                refused := check_access(
                    context, f"ids[{index}]", cluster_id, found[cluster_id].labels, Role.OPERATOR
                )
                or check_new_labels(
                    context, f"ids[{index}]", _new_labels(found[cluster_id].labels, change)
                )
            )
        ]
        if missing or refusals:
            return LifecycleResult(user_errors=missing + refusals)
        events = []
        for cluster in found.values():
            labels = _new_labels(cluster.labels, change)
            if labels != cluster.labels:
                events.append(
                    _updated(cluster, {"labels": (cluster.labels, labels)}, context.actor)
                )
                cluster.labels = labels
                cluster.version += 1
                cluster.updated_at = func.now()
        await session.flush()
        await log_events(session, events)
        await session.commit()
        records = await db.get_clusters(session, unique)
    if events:
        context.services.relay.wake()
    return LifecycleResult(clusters=[records[i] for i in unique if i in records])


async def resync_cluster(context: Context, cluster_id: uuid.UUID, *, wait: bool) -> LifecycleResult:
    """Check the cluster now, through the poller (so inside its concurrency limit, and once
    across replicas); with ``wait``, return the state that check wrote."""
    async with context.services.sessions() as session:
        now = await session.scalar(select(func.now()))
        assert now is not None
        requested_at: datetime = now
        found = await db.lock_live_cluster(session, cluster_id)
        if found is None:
            return LifecycleResult(user_errors=[not_found("id", cluster_id)])
        if refused := check_access(context, "id", cluster_id, found.labels, Role.OPERATOR):
            return LifecycleResult(user_errors=[refused])
        queued = await request_checks(session, [Cluster.id == cluster_id])
        await session.commit()
        record = await db.get_cluster(session, cluster_id)
    if not queued or record is None:
        return LifecycleResult(user_errors=[not_found("id", cluster_id)])
    if not wait:
        return LifecycleResult(clusters=[record])
    poller = context.services.settings.poller
    # A check makes a few requests, each bounded by client_timeout; the poller looks for due
    # clusters about every second.
    patience = poller.client_timeout.total_seconds() * 2 + 2.0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while loop.time() < deadline:
        await asyncio.sleep(RESYNC_POLL)
        async with context.services.sessions() as session:
            record = await db.get_cluster(session, cluster_id)
        if record is None:
            return LifecycleResult(user_errors=[not_found("id", cluster_id)])
        if record.last_checked_at is not None and record.last_checked_at >= requested_at:
            return LifecycleResult(clusters=[record])
    return LifecycleResult(
        clusters=[record],
        user_errors=[
            UserError(
                "id",
                "TIMEOUT",
                f"no check finished within {patience:.0f}s; it stays queued (is a poller running?)",
            )
        ],
    )


async def resync_clusters(context: Context, where: db.ClusterFilter) -> int:
    """Queue a check now for every cluster matching ``where`` that the caller operates;
    returns how many."""
    where = replace(where, scope=context.scope(Role.OPERATOR))
    async with context.services.sessions() as session:
        queued = await request_checks(session, [Cluster.id.in_(db.matching_ids(where))])
        await session.commit()
    return queued
