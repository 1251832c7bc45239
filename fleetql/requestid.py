"""A request id for every HTTP request, so a masked error can be found in the log.

The id is also set as the log context for the request's whole life, so every line logged while
serving it (uvicorn's access line included) carries it.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetql.logs import log_context

HEADER = "x-request-id"
# A client's id is kept only if it cannot forge log lines or grow them without bound.
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_of(scope: Scope) -> str:
    """The id this request was given (set by RequestIdMiddleware)."""
    return str(scope.get("state", {}).get("request_id", "-"))


class RequestIdMiddleware:
    """Take ``X-Request-ID`` when a client sends a sane one, otherwise make one; echo it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        sent = next(
            (
                value.decode("latin-1")
                for name, value in scope["headers"]
                if name == HEADER.encode()
            ),
            "",
        )
        request_id = sent if _ACCEPTABLE.match(sent) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(HEADER, request_id)
            await send(message)

        with log_context(request_id=request_id):
            await self.app(scope, receive, send_with_id)
