"""Sending a cohort's encoded ``next`` message to each member's websocket directly.

Executing an event once per cohort (``execution.py``) left strawberry's per-subscriber result
loop as most of the server's CPU per delivery: its operation loop, extension hooks and the
``typing`` protocol checks they make cost twice the socket write itself (bench/RESULTS.md,
"Subscription fan-out"). Here, the first member of a cohort to reach a delivery (its *leader*)
still goes through strawberry, whose result is encoded once (orjson); every other member writes
those bytes to its own websocket from inside its event stream, and strawberry never sees that
delivery for it. Results with errors or extensions, and results orjson cannot encode, take
strawberry's path for every member, as before.

A cohort is the same document, variables and principal scope (see ``cohort_key``), so a
principal never receives a payload computed for another's grants. graphql-transport-ws only:
the legacy graphql-ws handler keeps strawberry's path throughout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from contextvars import ContextVar
from typing import Any

import orjson
from starlette.websockets import WebSocketDisconnect
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.schema.schema import StreamResult
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.types.execution import ExecutionResult, PreExecutionError

__all__ = [
    "CohortFrames",
    "FanoutTransportWSHandler",
    "Outlet",
    "cohort_key",
    "current_outlet",
    "encode_payload",
]

# Set in each graphql-transport-ws operation's task, read by the subscription resolver that
# runs inside it: the operation's way to its websocket.
_OUTLET: ContextVar[Outlet | None] = ContextVar("fleetql_outlet", default=None)

# One encoded payload (or None: "take strawberry's path") per cohort, kept on what is delivered.
CohortFrames = dict[Hashable, "asyncio.Future[str | None]"]


def current_outlet() -> Outlet | None:
    """The websocket operation the caller runs in, when it can take encoded frames."""
    return _OUTLET.get()


def cohort_key(operation: object, variables: Any, principal: Any) -> Hashable:
    """Same document (the parser cache hands identical documents one operation node, kept alive
    by each member), same variables, same grants: the same result."""
    # A str, not orjson's bytes: those keep orjson's whole output buffer (~4 KiB) allocated,
    # and the key lives as long as the subscription.
    encoded = orjson.dumps(variables or {}, option=orjson.OPT_SORT_KEYS, default=repr).decode()
    return (id(operation), encoded, None if principal is None else principal.scope_key)


def encode_payload(result: ExecutionResult) -> str | None:
    """The ``next`` payload as JSON, or None when each member must build its own (errors are
    counted and logged per subscriber; extensions may be per subscriber)."""
    if result.errors or result.extensions:
        return None
    try:
        return orjson.dumps({"data": result.data}).decode()
    except orjson.JSONEncodeError:
        return None  # e.g. an integer beyond 64 bits: json.dumps takes it


class Outlet:
    """One operation's websocket, for frames encoded once per cohort."""

    __slots__ = ("_handler", "_operation", "_prefix", "leading")

    def __init__(self, handler: FanoutTransportWSHandler, operation: Operation[Any, Any]) -> None:
        self._handler = handler
        self._operation = operation
        self._prefix = '{"id":' + orjson.dumps(operation.id).decode() + ',"type":"next","payload":'
        # The cohort slot this operation's next strawberry result must fill, when it leads.
        self.leading: asyncio.Future[str | None] | None = None

    async def send(self, payload: str) -> None:
        if self._operation.completed:
            return
        await self._handler.send_text(self._prefix + payload + "}")

    def settle(self) -> None:
        """A lead that produced no frame (the stream ended, failed or was cancelled): members
        waiting for it take strawberry's path instead of waiting forever."""
        leading, self.leading = self.leading, None
        if leading is not None and not leading.done():
            leading.set_result(None)


class FanoutTransportWSHandler(BaseGraphQLTransportWSHandler[Any, Any]):
    """graphql-transport-ws, with a cohort leader's result encoded once for its members."""

    async def run_operation(self, operation: Operation[Any, Any]) -> None:
        # Each operation runs in a task of its own: the variable is that task's alone.
        outlet = Outlet(self, operation)
        _OUTLET.set(outlet)
        try:
            await super().run_operation(operation)
        finally:
            outlet.settle()

    async def _send_result_stream(
        self, operation: Operation[Any, Any], result_source: StreamResult
    ) -> None:
        outlet = _OUTLET.get()
        is_first_result = True
        async for result in result_source:
            if is_first_result and isinstance(result, PreExecutionError):
                await self._handle_pre_execution_error(operation, result)
                return
            if not isinstance(result, ExecutionResult):
                await self._reject_incremental_delivery(operation)
                return
            is_first_result = False
            leading = outlet.leading if outlet is not None else None
            if outlet is not None and leading is not None:
                outlet.leading = None
                payload = encode_payload(result)
                if not leading.done():
                    leading.set_result(payload)
                if payload is not None:
                    await outlet.send(payload)
                    continue
            await operation.send_next(result)

    async def send_text(self, text: str) -> None:
        websocket = self.websocket.ws  # type: ignore[attr-defined]
        try:
            await websocket.send_text(text)
        except WebSocketDisconnect as error:
            raise WebSocketDisconnected from error
