"""Only JSON bodies reach the GraphQL endpoint: a CSRF defence that needs no token.

A page on another site can make a browser POST to fleetql without asking first (no CORS
preflight) only with a "simple" content type: ``application/x-www-form-urlencoded``,
``multipart/form-data`` or ``text/plain``. Refusing every POST that is not
``application/json`` (which does need a preflight, and CORS refuses that for a foreign origin)
means such a request never runs, whatever cookies or network position the browser lends it.
Mutations over GET are refused by strawberry itself (GET runs queries only).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetql.bodylimit import refusal

__all__ = ["JsonOnlyMiddleware"]

JSON = "application/json"


class JsonOnlyMiddleware:
    """415 for a POST to ``path`` whose body is not ``application/json``."""

    def __init__(self, app: ASGIApp, *, path: str = "/graphql") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path and scope["method"] == "POST":
            content_type = Headers(scope=scope).get("content-type", "")
            if content_type.split(";", 1)[0].strip().lower() != JSON:
                shown = content_type.split(";", 1)[0].strip()[:100] or "none"
                await refusal(
                    415,
                    "UNSUPPORTED_MEDIA_TYPE",
                    f"POST /graphql takes {JSON} bodies only, not {shown!r}; form, multipart "
                    "and text bodies are refused (a cross-site page can send those)",
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)
