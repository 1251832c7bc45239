"""Authenticating every HTTP request to the GraphQL endpoint before strawberry sees it.

The principal goes into the request's state for the context to pick up. A request with a bad
credential gets 401 (403 when the credential is good but grants no role) with a GraphQL-shaped
body; the GraphiQL page itself (a GET without a query) loads without one, and whatever it then
sends is authenticated like any other request. Websockets authenticate at connection_init
instead (app.py), because browsers cannot set headers on them.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetql.auth.authenticator import AuthenticationError, Authenticator
from fleetql.bodylimit import refusal

__all__ = ["PRINCIPAL_STATE", "AuthenticationMiddleware"]

logger = logging.getLogger(__name__)

PRINCIPAL_STATE = "principal"


class AuthenticationMiddleware:
    def __init__(self, app: ASGIApp, *, path: str = "/graphql") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        authenticator: Authenticator = scope["app"].state.authenticator
        authorization = Headers(scope=scope).get("authorization")
        if authorization is None and _is_ide_page(scope):
            await self.app(scope, receive, send)
            return
        try:
            principal = await authenticator.authenticate(authorization)
        except AuthenticationError as error:
            logger.info("refused a request (%d): %s", error.status, error)
            await _refuse(scope, receive, send, error)
            return
        scope.setdefault("state", {})[PRINCIPAL_STATE] = principal
        await self.app(scope, receive, send)


def _is_ide_page(scope: Scope) -> bool:
    return scope["method"] == "GET" and b"query=" not in scope.get("query_string", b"")


async def _refuse(scope: Scope, receive: Receive, send: Send, error: AuthenticationError) -> None:
    code = "UNAUTHENTICATED" if error.status == 401 else "FORBIDDEN"
    response = refusal(error.status, code, str(error))
    if error.status == 401:
        response.headers["www-authenticate"] = 'Bearer error="invalid_token"'
    await response(scope, receive, send)
