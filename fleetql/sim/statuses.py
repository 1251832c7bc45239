"""The apiserver's ``Status`` error objects, byte for byte in the shape clients parse.

Clients (kubernetes_asyncio's ApiException, kubectl) read ``reason`` and ``code`` from these, so
they follow shared/k8s-captures/status-*.json: same keys, same order, ``details`` only where the
real server sends it.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "bad_request",
    "forbidden",
    "method_not_allowed",
    "node_not_found",
    "status_body",
    "transient_failure",
    "unauthorized",
]

ANONYMOUS = "system:anonymous"


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> bytes:
    """A ``Failure`` Status; ``details`` is left out when None, as the server omits it."""
    document: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        document["details"] = details
    document["code"] = code
    return orjson.dumps(document)


def unauthorized() -> bytes:
    """What any request with a token the cluster does not know gets (status-401.json)."""
    return status_body(401, "Unauthorized", "Unauthorized")


def forbidden(
    user: str, verb: str, resource: str, group: str = "", *, name: str = "", path: str = ""
) -> bytes:
    """RBAC's refusal: for a resource (or one ``name``d object of it) as in status-403-*.json,
    else ``cannot get path``."""
    if not resource:
        return status_body(
            403, "Forbidden", f'forbidden: User "{user}" cannot {verb} path "{path}"', {}
        )
    qualified = f"{resource}.{group}" if group else resource
    subject = f'{qualified} "{name}"' if name else qualified
    message = (
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
        f'in API group "{group}" at the cluster scope'
    )
    # StatusDetails' fields in Go's order, empty ones omitted.
    details = {"name": name, "group": group, "kind": resource}
    return status_body(403, "Forbidden", message, {k: v for k, v in details.items() if v})


def node_not_found(name: str) -> bytes:
    """GET of a node that does not exist."""
    return status_body(
        404, "NotFound", f'nodes "{name}" not found', {"name": name, "kind": "nodes"}
    )


def bad_request(message: str) -> bytes:
    """A malformed request, e.g. an undecodable ``continue`` token."""
    return status_body(400, "BadRequest", message)


def method_not_allowed() -> bytes:
    """The simulator is read-only: anything but GET is refused the way the server refuses it."""
    return status_body(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        {},
    )


_TRANSIENT: dict[int, tuple[str, str, dict[str, Any] | None]] = {
    429: (
        "TooManyRequests",
        "Too many requests, please try again later.",
        {"retryAfterSeconds": 1},
    ),
    500: (
        "InternalError",
        "Internal error occurred: etcdserver: request timed out",
        {"causes": [{"message": "etcdserver: request timed out"}]},
    ),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request", None),
    504: ("Timeout", "the server was unable to return a response in the time allotted", {}),
}


def transient_failure(code: int) -> bytes:
    """The Status a busy or briefly broken apiserver answers with ``code`` (429, 500, 503, 504)."""
    reason, message, details = _TRANSIENT.get(
        code, ("InternalError", f"simulated failure {code}", None)
    )
    return status_body(code, reason, message, details)
