"""Checks every mutation makes about the caller and the cluster it acts on.

A cluster outside everything the caller may see is NOT_FOUND, word for word what an unknown id
gets, so probing ids reveals nothing. A cluster the caller may see but not change is FORBIDDEN.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from fleetql.access import Role
from fleetql.resolvers.context import Context
from fleetql.resolvers.errors import UserError

__all__ = ["check_access", "check_new_labels", "not_found"]


def not_found(field_name: str, cluster_id: uuid.UUID) -> UserError:
    return UserError(field_name, "NOT_FOUND", f"no cluster with id {cluster_id}")


def check_access(
    context: Context,
    field_name: str,
    cluster_id: uuid.UUID,
    labels: Mapping[str, str],
    role: Role,
) -> UserError | None:
    """None when the caller holds ``role`` on a cluster with these labels."""
    principal = context.principal
    if principal is None or not principal.covers(labels):
        return not_found(field_name, cluster_id)
    if not principal.covers(labels, role):
        return UserError(
            field_name,
            "FORBIDDEN",
            f"you may view this cluster but this change needs the {role.name.lower()} role on it",
        )
    return None


def check_new_labels(
    context: Context, field_name: str, labels: Mapping[str, str], role: Role = Role.OPERATOR
) -> UserError | None:
    """Refuse labels that would put a cluster outside what the caller manages: a scoped
    operator must not be able to give a cluster away (or take one it cannot see back)."""
    principal = context.principal
    if principal is not None and principal.covers(labels, role):
        return None
    return UserError(
        field_name,
        "FORBIDDEN",
        "with these labels the cluster would be outside the clusters you may manage",
    )
