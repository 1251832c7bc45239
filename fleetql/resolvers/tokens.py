"""API tokens for scripts and CI: created by admins, shown once, revocable at once.

A token never grants more than its creator holds: an admin of ``team=payments`` can mint tokens
for ``team=payments`` (any role up to admin), not for the whole fleet. Such a scoped admin sees
and revokes the tokens it created; an admin of the whole fleet sees and revokes every token.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fleetql.access import Principal, Role
from fleetql.auth.api_tokens import hash_secret, new_secret
from fleetql.db import tokens as db
from fleetql.db.tokens import ApiToken
from fleetql.labels import parse_label_selector
from fleetql.resolvers.context import Context
from fleetql.resolvers.errors import UserError

__all__ = ["TokenResult", "create_api_token", "list_api_tokens", "revoke_api_token"]

MAX_NAME_LENGTH = 100


@dataclass(frozen=True)
class TokenResult:
    token: ApiToken | None = None
    # The secret, returned once when the token is created and never again.
    secret: str | None = None
    user_errors: list[UserError] = field(default_factory=list)


def _may_delegate(principal: Principal, role: Role, scope: str | None) -> bool:
    selector = None if scope is None else parse_label_selector(scope)
    return any(
        grant.role >= role and (grant.selector is None or grant.selector == selector)
        for grant in principal.grants
    )


def _manages_every_token(principal: Principal) -> bool:
    return principal.scope(Role.ADMIN) is None


async def create_api_token(
    context: Context,
    *,
    name: str,
    role: str,
    scope: str | None = None,
    expires_at: datetime | None = None,
) -> TokenResult:
    errors: list[UserError] = []
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        errors.append(
            UserError(
                "name",
                "INVALID_NAME",
                f"a token name is 1 to {MAX_NAME_LENGTH} printable characters",
            )
        )
    parsed_role = None
    try:
        parsed_role = Role.parse(role)
    except ValueError as error:
        errors.append(UserError("role", "INVALID_ROLE", str(error)))
    scope = scope.strip() if scope and scope.strip() else None
    if scope is not None:
        try:
            parse_label_selector(scope)
        except ValueError as error:
            errors.append(UserError("scope", "INVALID_SELECTOR", str(error)))
    if expires_at is not None:
        if expires_at.tzinfo is None:
            errors.append(UserError("expiresAt", "INVALID_INPUT", "give a time zone"))
        elif expires_at <= datetime.now(UTC):
            errors.append(UserError("expiresAt", "INVALID_INPUT", "must be in the future"))
    principal = context.principal
    if (
        not errors
        and parsed_role is not None
        and principal is not None
        and not _may_delegate(principal, parsed_role, scope)
    ):
        errors.append(
            UserError(
                "scope",
                "FORBIDDEN",
                "a token cannot grant more than you hold: give one of your own scopes "
                "and a role no stronger than yours there",
            )
        )
    if errors or parsed_role is None:
        return TokenResult(user_errors=errors)
    secret = new_secret()
    async with context.services.sessions() as session:
        token = await db.insert_token(
            session,
            name=name,
            role=parsed_role.name.lower(),
            scope=scope,
            secret_hash=hash_secret(secret),
            created_by=context.actor,
            expires_at=expires_at,
        )
        await session.commit()
    return TokenResult(token=token, secret=secret)


async def list_api_tokens(context: Context) -> list[ApiToken]:
    principal = context.principal
    if principal is None:
        return []
    found = await context.read(db.list_tokens)
    if _manages_every_token(principal):
        return found
    return [token for token in found if token.created_by == principal.name]


async def revoke_api_token(context: Context, token_id: str) -> TokenResult:
    """Revoked at once: the next request with it is refused, its open websockets close."""
    not_found = UserError("id", "NOT_FOUND", f"no API token with id {token_id[:64]}")
    try:
        parsed = uuid.UUID(token_id)
    except ValueError:
        return TokenResult(user_errors=[not_found])
    visible = {token.id for token in await list_api_tokens(context)}
    if parsed not in visible:
        return TokenResult(user_errors=[not_found])
    async with context.services.sessions() as session:
        token = await db.revoke_token(session, parsed)
        await session.commit()
    if token is None:
        return TokenResult(user_errors=[not_found])
    return TokenResult(token=token)
