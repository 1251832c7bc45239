"""The ASGI app answering for every simulated cluster under ``/clusters/<name>/...``.

Plain ASGI rather than a framework router: every benchmark request passes through here, and the
work per request is a dictionary lookup, a token compare and sending cached bytes. Requests go
through the same stages as in kube-apiserver: (delay, injected reset or failure,) authentication,
authorization, then the handler. What ASGI does not carry (the client certificate, a way to reset
the connection) comes from the connection registry that uvicorn's protocol fills in.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import hmac
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import orjson

from fleetql.sim import statuses
from fleetql.sim.cluster import RequestGauge, SimCluster
from fleetql.sim.connections import Connection, ConnectionRegistry
from fleetql.sim.discovery import api_groups_body, api_versions_body, metrics_resources_body
from fleetql.sim.health import health_body

__all__ = ["CLUSTER_PREFIX", "SimulatorApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CLUSTER_PREFIX = "/clusters/"

_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"
_NOT_FOUND_TEXT = b"404 page not found\n"
# What system:anonymous may GET on a default cluster (the system:public-info-viewer role).
_PUBLIC_PATHS = frozenset({"/version", "/healthz", "/readyz", "/livez"})
_HEALTH = {"/readyz": "readyz", "/livez": "livez", "/healthz": "healthz"}
_NODES = "/api/v1/nodes"
# The user a kubeadm admin kubeconfig's token or client certificate authenticates as.
ADMIN_USER = "kubernetes-admin"
_FLOW_SCHEMA_UID = str(uuid.uuid5(uuid.NAMESPACE_URL, "fleetql-sim/flowschema")).encode()
_PRIORITY_LEVEL_UID = str(uuid.uuid5(uuid.NAMESPACE_URL, "fleetql-sim/prioritylevel")).encode()


class SimulatorApp:
    """Routes ``/clusters/<name><path>`` to the named ``SimCluster``.

    ``stopping`` is set when the simulator shuts down: delayed ("slow", "hung") requests end then,
    so shutdown never waits for a delay to run out. ``connections`` is filled in by the tracking
    protocol (connections.py); ``load`` gauges the requests in flight across all clusters.
    """

    def __init__(
        self,
        clusters: Mapping[str, SimCluster],
        *,
        stopping: asyncio.Event,
        connections: ConnectionRegistry,
        load: RequestGauge,
    ) -> None:
        self._clusters = clusters
        self._stopping = stopping
        self._connections = connections
        self._load = load

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        cluster = None
        if path.startswith(CLUSTER_PREFIX):
            name, _, rest = path[len(CLUSTER_PREFIX) :].partition("/")
            cluster = self._clusters.get(name)
            path = "/" + rest
        if cluster is None:
            await _respond(send, 404, _NOT_FOUND_TEXT, _TEXT, nosniff=True)
            return
        cluster.requests += 1
        cluster.requests_by_path[path] += 1
        with self._load.track(), cluster.load.track():
            await self._serve(cluster, scope, path, receive, send)

    async def _serve(
        self, cluster: SimCluster, scope: Scope, path: str, receive: Receive, send: Send
    ) -> None:
        spec = cluster.spec
        if spec.delay > 0 and await self._stopped_during(spec.delay):
            await _respond(send, 503, statuses.transient_failure(503), _JSON)
            return
        connection = self._connections.get(tuple(scope["client"] or ()))
        if connection is None:
            return  # the client hung up while the request was held back: nobody to answer
        if spec.wrong_ca and not cluster.has_own_port:
            raise ValueError(
                f"cluster {cluster.name!r} shares the simulator's port, whose certificate cannot "
                "change; create it with own_port=True to set wrong_ca"
            )
        # wrong_ca: this connection was opened before the CA "changed"; the next one fails TLS.
        if spec.reset_connections or spec.wrong_ca:
            await _reset(connection, receive)
            return
        failure = cluster.take_failure()
        if failure is not None:
            await _respond(send, failure, statuses.transient_failure(failure), _JSON)
            return
        await _Request(cluster, scope, path, send, client_user=connection.client_user).handle()

    async def _stopped_during(self, delay: float) -> bool:
        """Wait ``delay`` seconds (math.inf: forever); True if the simulator stopped meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), None if math.isinf(delay) else delay)
        except TimeoutError:
            return False
        return True


class _Request:
    """One request to one cluster, past the injected delays and failures."""

    def __init__(
        self,
        cluster: SimCluster,
        scope: Scope,
        path: str,
        send: Send,
        *,
        client_user: str | None,
    ) -> None:
        self.cluster = cluster
        self.scope = scope
        self.path = path.rstrip("/") or "/"
        self.send = send
        self.client_user = client_user
        self.query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)

    async def handle(self) -> None:
        user = self._authenticate()
        if user is None:
            await _respond(self.send, 401, statuses.unauthorized(), _JSON)
            return
        if self.scope["method"] not in ("GET", "HEAD"):
            await self._json(405, statuses.method_not_allowed())
            return
        forbidden_nodes = self.cluster.spec.forbid_nodes and _within(self.path, _NODES)
        if forbidden_nodes or (user == statuses.ANONYMOUS and self.path not in _PUBLIC_PATHS):
            await _respond(self.send, 403, self._forbidden_body(user), _JSON)
            return
        await self._route()

    def _authenticate(self) -> str | None:
        """The user name, ``system:anonymous`` without credentials, None when refused.

        kube-apiserver tries the x509 authenticator before tokens, so a verified client
        certificate decides who the user is whatever token comes with it.
        """
        if self.cluster.spec.auth_fails:
            return None
        if self.client_user is not None:
            return self.client_user
        header = dict(self.scope["headers"]).get(b"authorization")
        if header is None:
            return statuses.ANONYMOUS
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.cluster.spec.token.encode()
        ):
            return None
        return ADMIN_USER

    def _forbidden_body(self, user: str) -> bytes:
        if _within(self.path, _NODES):
            verb, name = _verb_and_name(self.path, _NODES)
            return statuses.forbidden(user, verb, "nodes", name=name)
        metrics_nodes = "/apis/metrics.k8s.io/v1beta1/nodes"
        if _within(self.path, metrics_nodes) and self.cluster.spec.metrics_served:
            verb, name = _verb_and_name(self.path, metrics_nodes)
            return statuses.forbidden(user, verb, "nodes", "metrics.k8s.io", name=name)
        return statuses.forbidden(user, "get", "", path=self.path)

    async def _route(self) -> None:
        spec = self.cluster.spec
        path = self.path
        if path == "/version":
            await self._json(200, self.cluster.version_body())
        elif path in _HEALTH:
            await self._health(_HEALTH[path])
        elif path == _NODES:
            await self._list_nodes()
        elif path.startswith(_NODES + "/"):
            await self._get_node(path.removeprefix(_NODES + "/"))
        elif path == "/api":
            await self._json(200, api_versions_body(_server_address(self.scope)))
        elif path == "/apis":
            await self._json(200, api_groups_body(metrics_served=spec.metrics_served))
        elif spec.metrics_served and path == "/apis/metrics.k8s.io/v1beta1":
            await self._json(200, metrics_resources_body())
        elif spec.metrics_served and path == "/apis/metrics.k8s.io/v1beta1/nodes":
            await self._json(200, self.cluster.metrics_body())
        else:
            await _respond(self.send, 404, _NOT_FOUND_TEXT, _TEXT, nosniff=True)

    async def _health(self, endpoint: str) -> None:
        spec = self.cluster.spec
        if endpoint != "healthz" and not spec.readyz_served:
            await _respond(self.send, 404, _NOT_FOUND_TEXT, _TEXT, nosniff=True)
            return
        status, body = health_body(
            endpoint,
            failing=spec.failing_checks,
            verbose="verbose" in self.query,
            unhealthy_status=spec.unhealthy_status,
        )
        await _respond(self.send, status, body, _TEXT, nosniff=True)

    async def _list_nodes(self) -> None:
        listing = self.cluster.node_listing()
        token = self._param("continue")
        resource_version = self._param("resourceVersion")
        if token and resource_version:
            body = statuses.bad_request(
                "specifying resource version is not allowed when using continue"
            )
            await self._json(400, body)
            return
        try:
            limit = int(self._param("limit") or 0)
        except ValueError:
            limit = 0
        # resourceVersion=0 is served from the watch cache, which ignores limit.
        if resource_version == "0" or (limit <= 0 and not token):
            await self._json(200, listing.full_body)
            return
        start, list_version = 0, listing.resource_version
        if token:
            try:
                start_name, list_version = _decode_continue(token)
            except ValueError as error:
                await self._json(400, statuses.bad_request(f"continue key is not valid: {error}"))
                return
            start = bisect.bisect_left(listing.names, start_name)
        end = len(listing.names) if limit <= 0 else min(start + limit, len(listing.names))
        metadata: dict[str, Any] = {"resourceVersion": str(list_version)}
        if end < len(listing.names):
            metadata["continue"] = _encode_continue(listing.names[end - 1], list_version)
            metadata["remainingItemCount"] = len(listing.names) - end
        await self._json(200, listing.page_body(metadata, start, end))

    async def _get_node(self, name: str) -> None:
        listing = self.cluster.node_listing()
        index = bisect.bisect_left(listing.names, name)
        if index < len(listing.names) and listing.names[index] == name:
            item = listing.item(index)
            # A single object carries its own kind and apiVersion, which list items leave out.
            await self._json(200, b'{"kind":"Node","apiVersion":"v1",' + item[1:])
        else:
            await self._json(404, statuses.node_not_found(name))

    def _param(self, name: str) -> str:
        values = self.query.get(name)
        return values[0] if values else ""

    async def _json(self, status: int, body: bytes) -> None:
        if status == 200 and self.cluster.spec.malformed_json:
            body = body[: len(body) // 2]
        await _respond(self.send, status, body, _JSON, flow_control=True)


def _within(path: str, collection: str) -> bool:
    return path == collection or path.startswith(collection + "/")


def _verb_and_name(path: str, collection: str) -> tuple[str, str]:
    """``list`` for the collection, ``get`` and the object's name below it."""
    if path == collection:
        return "list", ""
    return "get", path.removeprefix(collection + "/")


async def _reset(connection: Connection, receive: Receive) -> None:
    """Reset the request's connection without an answer, then wait until uvicorn has seen it
    go: an app that returns without answering on a live connection gets a 500 sent for it."""
    connection.reset()
    while (await receive())["type"] != "http.disconnect":
        pass


def _server_address(scope: Scope) -> str:
    server = scope.get("server") or ("127.0.0.1", 443)
    return f"{server[0]}:{server[1]}"


def _encode_continue(last_name: str, resource_version: int) -> str:
    """The apiserver's continue token: unpadded URL-safe base64 of its JSON (see the captures)."""
    raw = orjson.dumps({"v": "meta.k8s.io/v1", "rv": resource_version, "start": last_name + "\x00"})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_continue(token: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = orjson.loads(raw)
    except (binascii.Error, orjson.JSONDecodeError) as error:
        raise ValueError(str(error)) from None
    if (
        not isinstance(decoded, dict)
        or decoded.get("v") != "meta.k8s.io/v1"
        or not isinstance(decoded.get("rv"), int)
        or not isinstance(decoded.get("start"), str)
    ):
        raise ValueError("not a meta.k8s.io/v1 continue token")
    return decoded["start"], decoded["rv"]


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    *,
    nosniff: bool = False,
    flow_control: bool = False,
) -> None:
    """Send a whole response with the headers kube-apiserver puts on it (nodes.headers)."""
    headers = [
        (b"audit-id", str(uuid.uuid4()).encode()),
        (b"cache-control", b"no-cache, private"),
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
    ]
    if nosniff:
        headers.append((b"x-content-type-options", b"nosniff"))
    if flow_control:
        headers.append((b"x-kubernetes-pf-flowschema-uid", _FLOW_SCHEMA_UID))
        headers.append((b"x-kubernetes-pf-prioritylevel-uid", _PRIORITY_LEVEL_UID))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
