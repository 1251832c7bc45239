"""From an Authorization header (or a websocket's connection_init payload) to a Principal."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any, Self

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.access import ANONYMOUS, Grant, Principal, Role
from fleetql.auth.api_tokens import hash_secret, is_api_token
from fleetql.auth.jwt_verifier import InvalidToken, JwtVerifier, UnknownKeyId
from fleetql.auth.oidc import OidcKeys
from fleetql.config import AuthSettings
from fleetql.db import tokens
from fleetql.db.tokens import LAST_USE_RESOLUTION

__all__ = ["AuthenticationError", "Authenticator"]


_AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


class AuthenticationError(Exception):
    """The caller cannot be let in. ``status`` is 401 (who are you?) or 403 (known, but no
    role); the message is safe to show the client."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class Authenticator:
    """Use with ``async with`` when the mode is oidc: that fetches the issuer's keys (or fails
    the start) and keeps them fresh until the block ends."""

    def __init__(self, settings: AuthSettings, sessions: async_sessionmaker[AsyncSession]):
        self._settings = settings
        self._sessions = sessions
        self._jwt = JwtVerifier(settings) if settings.mode in ("jwt", "oidc") else None
        self._oidc: OidcKeys | None = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        if self._settings.mode != "oidc" or self._jwt is None:
            return self
        # No proxies or .netrc from the environment, no redirects: only the configured issuer.
        http = await self._stack.enter_async_context(
            httpx.AsyncClient(trust_env=False, follow_redirects=False)
        )
        self._oidc = OidcKeys(self._settings, self._jwt, http)
        try:
            await self._oidc.start()
        except BaseException:
            await self._stack.aclose()
            raise
        refresh = asyncio.create_task(self._oidc.refresh_forever(), name="auth.oidc.refresh")
        self._stack.push_async_callback(_cancel, refresh)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def required(self) -> bool:
        """Whether a request without credentials is refused."""
        return self._settings.mode != "none"

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal for an ``Authorization`` header value (None when absent)."""
        if not authorization:
            if self.required:
                raise AuthenticationError("authentication required: send a bearer token")
            return ANONYMOUS
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
        if is_api_token(credential):
            return await self._api_token(credential)
        if self._jwt is None:
            if not self.required:
                return ANONYMOUS  # authentication is off: a token has nothing to add
            raise AuthenticationError("this server accepts API tokens only")
        try:
            claims = self._jwt.verify(credential)
        except UnknownKeyId as error:
            # The issuer may have rotated its keys since we fetched them: look once more.
            if self._oidc is None or not await self._oidc.refresh_for_unknown_key():
                raise AuthenticationError(str(error)) from None
            try:
                claims = self._jwt.verify(credential)
            except InvalidToken as again:
                raise AuthenticationError(str(again)) from None
        except InvalidToken as error:
            raise AuthenticationError(str(error)) from None
        return self._principal_from_claims(claims)

    async def _api_token(self, secret: str) -> Principal:
        now = datetime.now(UTC)
        async with self._sessions() as session:
            # AUTOCOMMIT: a request costs one statement (no BEGIN, no ROLLBACK) to read its
            # token, and the occasional record of its use is one UPDATE that commits itself.
            connection = await session.connection(execution_options=_AUTOCOMMIT)
            token = await tokens.find_token(connection, hash_secret(secret))
            if token is None:
                raise AuthenticationError("unknown API token")
            if token.revoked_at is not None:
                raise AuthenticationError("the API token has been revoked")
            if token.expires_at is not None and token.expires_at <= now:
                raise AuthenticationError("the API token has expired")
            if token.last_used_at is None or token.last_used_at < now - LAST_USE_RESOLUTION:
                # Not on every request: most uses then cost one read, no write.
                await tokens.touch_token(connection, token.id, now)
        return Principal(
            name=f"token:{token.name}",
            grants=(Grant.of(Role.parse(token.role), token.scope),),
            expires_at=token.expires_at,
            token_id=token.id,
        )

    def _principal_from_claims(self, claims: Mapping[str, Any]) -> Principal:
        values = _claim(claims, self._settings.roles_claim)
        names = [values] if isinstance(values, str) else values
        grants: list[Grant] = []
        if isinstance(names, Sequence):
            for name in names:
                binding = self._settings.roles.get(name) if isinstance(name, str) else None
                if binding is not None:
                    grants.append(Grant.of(Role.parse(binding.role), binding.scope))
        if not grants:
            raise AuthenticationError(
                f"the token's {self._settings.roles_claim!r} claim grants no fleetql role",
                status=403,
            )
        subject = _claim(claims, self._settings.subject_claim)
        expires = claims.get("exp")
        return Principal(
            name=str(subject) if subject is not None else None,
            grants=tuple(dict.fromkeys(grants)),
            expires_at=None
            if not isinstance(expires, int | float)
            else datetime.fromtimestamp(expires, UTC),
        )


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by dotted path (``realm_access.roles``); None when absent."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
