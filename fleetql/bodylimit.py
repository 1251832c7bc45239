"""Refusing request bodies over ``server.max_body_bytes`` with 413, before anything parses them.

uvicorn reads whatever body a client sends, and strawberry holds a whole JSON body in memory
before it parses it; without a bound one request could take the server's memory. A declared
``Content-Length`` over the limit is refused at once, without reading a byte; a chunked body (or
one longer than it said) is counted as it arrives and refused as soon as it passes the limit.
Starlette's own ``max_body_size`` waits for the app to read before it looks at Content-Length,
answers in plain text, and needs a newer Starlette than fleetql requires.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware", "refusal"]

logger = logging.getLogger(__name__)


class _BodyTooLarge(Exception):
    """Raised out of ``receive`` once the body passes the limit; turned into a 413 here."""


def refusal(status: int, code: str, message: str) -> JSONResponse:
    """A GraphQL-shaped error response, for requests refused before GraphQL sees them."""
    return JSONResponse(
        {"errors": [{"message": message, "extensions": {"code": code}}]}, status_code=status
    )


class BodyLimitMiddleware:
    """413 for HTTP request bodies over ``max_bytes``; websockets are bounded by uvicorn."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and not declared.strip().isdigit():
            await refusal(400, "BAD_REQUEST", "Content-Length is not a number")(
                scope, receive, send
            )
            return
        if declared is not None and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0
        responded = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def watching_send(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.start":
                responded = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except _BodyTooLarge:
            if responded:  # cannot happen with strawberry, which reads first; be safe anyway
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        logger.info("refused a request body over %d bytes", self.max_bytes)
        response = refusal(
            413,
            "PAYLOAD_TOO_LARGE",
            f"the request body is larger than {self.max_bytes} bytes (server.max_body_bytes)",
        )
        # The client may still be sending; uvicorn closes the connection after this response
        # rather than read the rest.
        await response(scope, receive, send)
