"""Importing a cluster: validate everything, encrypt the resolved kubeconfig, store it.

Every expected failure comes back as a ``UserError``; all independent problems are reported at
once so that a form can mark every bad field in one round trip. Nothing is stored unless all of
the input is good.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError

from fleetql.credentials import inspect_credential
from fleetql.db import clusters as db
from fleetql.db.events import NewEvent, log_events
from fleetql.db.models import ClusterStatus, EventType
from fleetql.kubeconfig import (
    KubeconfigError,
    ResolvedKubeconfig,
    decode_kubeconfig_input,
    parse_kubeconfig,
)
from fleetql.labels import LabelError, validate_label_key, validate_label_value, validate_name
from fleetql.netpolicy import AddressPolicy, AddressRefused, NotCanonicalAddress, check_server
from fleetql.resolvers.authorization import check_new_labels
from fleetql.resolvers.context import Context
from fleetql.resolvers.errors import UserError

MAX_DESCRIPTION_LENGTH = 2048


@dataclass(frozen=True)
class ImportResult:
    cluster: db.ClusterRecord | None
    user_errors: list[UserError] = field(default_factory=list)


def check_name(name: str) -> list[UserError]:
    try:
        validate_name(name)
    except LabelError as error:
        return [UserError("name", "INVALID_NAME", str(error))]
    return []


def check_labels(
    labels: Sequence[tuple[str, str]], *, field_name: str = "labels"
) -> list[UserError]:
    errors: list[UserError] = []
    seen: set[str] = set()
    for index, (key, value) in enumerate(labels):
        try:
            validate_label_key(key)
        except LabelError as error:
            errors.append(UserError(f"{field_name}[{index}].key", "INVALID_LABEL", str(error)))
            continue
        try:
            validate_label_value(value)
        except LabelError as error:
            errors.append(UserError(f"{field_name}[{index}].value", "INVALID_LABEL", str(error)))
        if key in seen:
            errors.append(
                UserError(
                    f"{field_name}[{index}].key", "INVALID_LABEL", f"label {key!r} is given twice"
                )
            )
        seen.add(key)
    return errors


async def resolve_kubeconfig(
    context: Context, kubeconfig: str, kube_context: str | None
) -> ResolvedKubeconfig | UserError:
    """Decode and resolve off the event loop (a large YAML document takes a while to parse),
    then check the address of its server against the outbound address policy."""
    manager = context.services.settings.cluster_manager
    max_bytes = manager.max_kubeconfig_bytes

    def resolve() -> ResolvedKubeconfig:
        data = decode_kubeconfig_input(kubeconfig, max_bytes=max_bytes)
        return parse_kubeconfig(
            data,
            context=kube_context,
            max_bytes=max_bytes,
            allow_insecure_tls=manager.allow_insecure_tls,
        )

    try:
        resolved = await asyncio.to_thread(resolve)
    except KubeconfigError as error:
        return UserError(error.field, error.code, error.message)
    # Where the server is: checked now, and again by the poller on every connection.
    try:
        await check_server(
            resolved.server,
            AddressPolicy.from_settings(context.services.settings),
            lookup_timeout=manager.connect_timeout.total_seconds(),
        )
    except AddressRefused as error:
        return UserError("kubeconfig", "FORBIDDEN_ADDRESS", f"server: {error}")
    except NotCanonicalAddress as error:
        return UserError("kubeconfig", "INVALID_SERVER", str(error))
    except ValueError:
        return UserError("kubeconfig", "INVALID_SERVER", "server is not a valid URL")
    return resolved


async def import_cluster(
    context: Context,
    *,
    name: str,
    kubeconfig: str,
    description: str = "",
    kube_context: str | None = None,
    labels: Sequence[tuple[str, str]] = (),
) -> ImportResult:
    errors = check_name(name) + check_labels(labels)
    if not errors and (refused := check_new_labels(context, "labels", dict(labels))):
        errors.append(refused)
    if len(description) > MAX_DESCRIPTION_LENGTH:
        errors.append(
            UserError(
                "description",
                "INVALID_DESCRIPTION",
                f"description is {len(description)} characters; at most {MAX_DESCRIPTION_LENGTH}",
            )
        )
    resolved = await resolve_kubeconfig(context, kubeconfig, kube_context)
    if isinstance(resolved, UserError):
        errors.append(resolved)
    if errors or isinstance(resolved, UserError):
        return ImportResult(cluster=None, user_errors=errors)

    cluster_id = uuid.uuid4()
    blob = context.services.cipher.encrypt(resolved.to_yaml(), cluster_id=cluster_id)
    credential = inspect_credential(resolved)
    new = db.NewCluster(
        id=cluster_id,
        name=name,
        description=description,
        labels=dict(labels),
        api_server_url=resolved.server,
        kubeconfig_ciphertext=blob.payload,
        kubeconfig_key_id=blob.key_id,
        kubeconfig_format=blob.format_version,
        credential_kind=credential.kind.value,
        credential_expires_at=credential.expires_at,
        credential_subject=credential.subject,
    )
    imported = NewEvent(
        cluster_id=cluster_id,
        type=EventType.IMPORTED,
        status=ClusterStatus.UNKNOWN.value,
        message=f"imported {name!r} ({resolved.server})",
        actor=context.actor,
    )
    # No name check first: the partial unique index on live names answers NAME_TAKEN in the
    # insert itself, race-free, and the record comes back from the insert (no read-back).
    async with context.services.sessions() as session:
        try:
            record = await db.insert_cluster(session, new)
            await log_events(session, [imported])
            await session.commit()
        except IntegrityError as error:
            if not db.is_name_conflict(error):
                raise
            await session.rollback()
            taken = UserError("name", "NAME_TAKEN", f"a cluster named {name!r} already exists")
            return ImportResult(cluster=None, user_errors=[taken])
    context.services.relay.wake()
    return ImportResult(cluster=record)


async def refresh_kubeconfig(context: Context, *, name: str, kubeconfig: str) -> UserError | None:
    """Give the existing cluster ``name`` a new kubeconfig (the demo fleet's simulator has new
    certificates each run). Returns the problem, if any; nothing is stored then."""
    resolved = await resolve_kubeconfig(context, kubeconfig, None)
    if isinstance(resolved, UserError):
        return resolved
    async with context.services.sessions() as session:
        cluster_id = await db.find_cluster_id(session, name)
        if cluster_id is None:
            return UserError("name", "NOT_FOUND", f"no cluster named {name!r}")
        blob = context.services.cipher.encrypt(resolved.to_yaml(), cluster_id=cluster_id)
        await db.replace_kubeconfig(
            session,
            cluster_id,
            api_server_url=resolved.server,
            kubeconfig_ciphertext=blob.payload,
            kubeconfig_key_id=blob.key_id,
            kubeconfig_format=blob.format_version,
        )
        await session.commit()
    return None
