"""The ASGI app and its lifespan, which owns every resource the server holds."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from fleetql.auth import AuthenticationError, Authenticator
from fleetql.auth.http import PRINCIPAL_STATE, AuthenticationMiddleware
from fleetql.auth.sockets import SocketGuard
from fleetql.bodylimit import BodyLimitMiddleware
from fleetql.config import Settings, is_loopback
from fleetql.crypto import KubeconfigCipher
from fleetql.db import migrations
from fleetql.db.clusters import ClusterRecord, cluster_labels, get_clusters
from fleetql.db.embedded import embedded_postgres
from fleetql.db.engine import (
    create_engine,
    create_read_engine,
    create_session_factory,
)
from fleetql.db.events import LoggedEvent, events_by_id
from fleetql.db.keys import verify_encryption_key
from fleetql.db.models import EventType
from fleetql.demo import demo_fleet
from fleetql.events.backends import create_backend
from fleetql.events.bus import EventBus
from fleetql.events.relay import EventRelay
from fleetql.health import livez, readyz
from fleetql.housekeeping import housekeeping_forever
from fleetql.keystore import load_key_ring
from fleetql.logs import log_context
from fleetql.metrics.exposition import metrics_endpoint
from fleetql.metrics.instruments import Metrics
from fleetql.poller.pool import ClientPool
from fleetql.poller.service import running_poller
from fleetql.requestid import RequestIdMiddleware, request_id_of
from fleetql.requestshape import JsonOnlyMiddleware
from fleetql.resolvers.context import Context, Services
from fleetql.rotation import record_checker
from fleetql.schema import build_schema
from fleetql.schema.fanout import FanoutTransportWSHandler
from fleetql.server import ABORT_EXTENSION
from fleetql.shutdown import Drain

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class SocketContext(Context):
    """A websocket's context: it is authenticated once connection_init arrives."""

    # The upgrade request's Authorization header, for clients that can set one.
    upgrade_authorization: str | None = field(default=None, repr=False)
    forget: Callable[[], None] = lambda: None


class FleetGraphQL(GraphQL[Context, None]):
    """Strawberry's ASGI app, with our typed context and authentication on websockets."""

    # graphql-transport-ws sends a cohort's encoded results to every member directly.
    graphql_transport_ws_handler_class = FanoutTransportWSHandler

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        services: Services = request.app.state.services
        request_id = request_id_of(request.scope)
        if isinstance(request, WebSocket):
            closer: ConnectionCloser = request.app.state.closer
            return SocketContext(
                services=services,
                request_id=request_id,
                close_connection=closer.for_websocket(request),
                upgrade_authorization=request.headers.get("authorization"),
            )
        return Context(
            services=services,
            request_id=request_id,
            principal=request.scope.get("state", {}).get(PRINCIPAL_STATE),
        )

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """Authenticate with the token of ``connection_init`` (``{"authorization": "Bearer
        …"}``) or of the upgrade request; refused: 4403 (graphql-transport-ws) or
        connection_error (graphql-ws), and no subscription ever starts."""
        assert isinstance(context, SocketContext)
        params = context.connection_params or {}
        authorization = params.get("authorization", params.get("Authorization"))
        if not isinstance(authorization, str):
            authorization = context.upgrade_authorization
        # Read once: the socket does not keep its credential (nor its init payload) after this.
        context.connection_params = context.upgrade_authorization = None
        authenticator: Authenticator = context.services.authenticator
        try:
            principal = await authenticator.authenticate(authorization)
        except AuthenticationError as error:
            logger.info("refused a websocket (%d): %s", error.status, error)
            raise ConnectionRejectionError({"message": str(error)}) from None
        context.principal = principal
        if context.close_connection is not None:
            context.forget = context.services.socket_guard.watch(
                principal, context.close_connection
            )
        return cast(UnsetType, UNSET)  # acknowledge without a payload

    async def run(self, request: Any, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        """HTTP: the request's reads share one pooled connection, given back once the
        response is built (a streamed response's later reads check out their own).
        Websockets: stop watching the connection's credential when it ends."""
        if not isinstance(request, WebSocket):
            http_context = await self.get_context(request, request)
            async with http_context.holding_reads():
                return await super().run(request, context=http_context, root_value=root_value)
        socket_context = await self.get_context(request, request)
        try:
            return await super().run(request, context=socket_context, root_value=root_value)
        finally:
            assert isinstance(socket_context, SocketContext)
            socket_context.forget()

    def decode_json(self, data: str | bytes) -> object:
        """orjson: request bodies and websocket messages parse several times faster. Its
        JSONDecodeError is the standard library's, which strawberry turns into a 400."""
        return orjson.loads(data)

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        """strawberry's response, encoded with orjson straight to bytes (json.dumps was a
        tenth of a list page's CPU). Websocket messages keep strawberry's text encoding."""
        response = Response(
            orjson.dumps(response_data),
            status_code=sub_response.status_code or 200,
            media_type="application/json",
        )
        response.headers.raw.extend(sub_response.headers.raw)
        if sub_response.background:
            response.background = sub_response.background
        return response

    async def execute_single(self, *args: Any, **kwargs: Any) -> ExecutionResult:
        # The operation's name goes into every log line written while it runs.
        data = kwargs.get("request_data")
        name = getattr(data, "operation_name", None) or _operation_of(getattr(data, "query", None))
        with log_context(operation=name):
            return await super().execute_single(*args, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return await super().__call__(scope, receive, send)
        open_websockets = scope["app"].state.services.metrics.api.websockets
        open_websockets.inc()
        try:
            await super().__call__(scope, receive, send)
        finally:
            open_websockets.dec()


_OPERATION = re.compile(r"^\s*(query|mutation|subscription)\b\s*([_A-Za-z][_0-9A-Za-z]*)?")


def _operation_of(query: str | None) -> str | None:
    """``Name`` of ``query Name {…}``, or the operation type of an anonymous one."""
    if not query:
        return None
    match = _OPERATION.match(query)
    if match is None:
        return "query" if query.lstrip().startswith("{") else None
    return match.group(2) or match.group(1)


class ConnectionCloser:
    """Closes websockets on the bus's behalf, aborting those whose peer stopped reading."""

    def __init__(self, *, timeout: float = 2.0) -> None:
        self._timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def for_websocket(self, websocket: WebSocket) -> Callable[[int, str], None]:
        def close(code: int, reason: str) -> None:
            if self._closed:
                return  # shutting down: uvicorn closes every websocket itself
            task = asyncio.create_task(self._close(websocket, code, reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return close

    async def _close(self, websocket: WebSocket, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await websocket.close(code=code, reason=reason)
        except TimeoutError:
            # The close frame cannot even be written: the peer is not reading. Drop it.
            abort = websocket.scope.get("extensions", {}).get(ABORT_EXTENSION)
            if abort is not None:
                abort()
            logger.warning("aborted a websocket that did not take its close frame (%d)", code)
        except (RuntimeError, OSError, WebSocketDisconnect):
            pass  # already closed or gone

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@asynccontextmanager
async def open_services(
    settings: Settings, *, migrate: bool = True, relay_events: bool = True
) -> AsyncIterator[Services]:
    """Database (embedded or external), migrations, the key check and the event bus, closed in
    reverse. ``relay_events`` runs this process's candidate for event relay leader."""
    async with AsyncExitStack() as stack:
        url = settings.database.url
        generate_key_in = None
        if url is None:
            data_dir = settings.database.embedded_data_dir
            url = await stack.enter_async_context(embedded_postgres(data_dir))
            generate_key_in = data_dir.expanduser().resolve().parent
        cipher = KubeconfigCipher(load_key_ring(settings.encryption, generate_in=generate_key_in))
        engine = create_engine(url, settings.database)
        stack.push_async_callback(engine.dispose)
        metrics = Metrics(max_operation_names=settings.metrics.max_operation_names)
        metrics.database.watch(engine)
        if migrate:
            await migrations.upgrade(engine)
        sessions = create_session_factory(engine)
        async with sessions() as session:
            await verify_encryption_key(
                session,
                key_id=cipher.key_id,
                can_decrypt=cipher.can_decrypt_with,
                check=record_checker(cipher),
                needs_check=lambda key_id: not cipher.proves(key_id),
            )
            await session.commit()
        logger.info(
            "encryption key ring %s (primary %s) verified against the stored kubeconfigs",
            ", ".join(sorted(cipher.key_ids)),
            cipher.key_id,
        )

        async def load_clusters(ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, ClusterRecord]:
            async with sessions() as session:
                return await get_clusters(session, ids)

        async def load_events(ids: Sequence[int]) -> Mapping[int, LoggedEvent]:
            async with sessions() as session:
                return await events_by_id(session, ids)

        async def load_labels(ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, Mapping[str, str]]:
            async with sessions() as session:
                return await cluster_labels(session, ids)

        events = await stack.enter_async_context(
            EventBus(
                create_backend(settings.events.url, database_url=url),
                load_events=load_events,
                load_clusters=load_clusters,
                load_labels=load_labels,
                queue_size=settings.events.subscriber_queue_size,
                metrics=metrics.events,
            )
        )
        relay = EventRelay(
            url,
            sessions,
            events,
            shared=not settings.events.url.startswith("memory:"),
            metrics=metrics.events,
        )
        if relay_events:
            relay_task = asyncio.create_task(relay.run(), name="events.relay")
            stack.push_async_callback(_cancel, relay_task)
        authenticator = await stack.enter_async_context(Authenticator(settings.auth, sessions))
        guard = SocketGuard(sessions, interval=settings.auth.token_check_interval.total_seconds())
        guard_task = asyncio.create_task(guard.run(), name="auth.sockets")
        stack.push_async_callback(_cancel, guard_task)
        yield Services(
            settings=settings,
            sessions=sessions,
            reads=create_read_engine(engine),
            cipher=cipher,
            events=events,
            relay=relay,
            authenticator=authenticator,
            socket_guard=guard,
            metrics=metrics,
        )


async def _forget_retired_clients(events: EventBus, pool: ClientPool) -> None:
    """Close a cluster's pooled client as soon as it is removed or given new credentials, on
    whichever replica holds it (every replica sees every event)."""
    retiring = {EventType.REMOVED, EventType.UPDATED}
    while True:  # a resync ends a subscription; take a new one
        subscription = events.subscribe(lambda event, cluster: event.type in retiring)
        async with aclosing(subscription):
            async for delivery in subscription:
                event = delivery.event
                if event.type is EventType.REMOVED or "credential" in event.changes:
                    await pool.forget(event.cluster_id)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def create_app(
    settings: Settings, *, migrate: bool = True, demo_clusters: int = 0, demo_nodes: int = 20
) -> Starlette:
    """The ASGI app; ``demo_clusters`` > 0 also runs a simulated fleet (``serve --demo``)."""
    graphql = FleetGraphQL(
        build_schema(settings.graphql),
        graphql_ide="graphiql" if settings.graphql.graphiql else None,
        # GET runs queries only (strawberry refuses mutations over GET); POST takes JSON only
        # (JsonOnlyMiddleware), never form or multipart bodies: see README "HTTP hardening".
        allow_queries_via_get=True,
        multipart_uploads_enabled=False,
        # Both protocols: graphql-transport-ws, and the legacy graphql-ws older consoles speak.
        subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL),
        connection_init_wait_timeout=settings.events.connection_init_timeout,
        # The legacy protocol's "ka" messages; graphql-transport-ws relies on websocket pings.
        keep_alive=True,
        keep_alive_interval=settings.events.ping_interval.total_seconds(),
        max_subscriptions_per_connection=settings.events.max_subscriptions_per_connection,
        allowed_origins=settings.server.cors_origins,
    )

    drain = Drain(abort_extension=ABORT_EXTENSION)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(settings, migrate=migrate) as services, AsyncExitStack() as stack:
            if settings.poller.enabled:
                poller = await stack.enter_async_context(
                    running_poller(
                        settings,
                        sessions=services.sessions,
                        cipher=services.cipher,
                        publish=services.relay.wake_after,
                        metrics=services.metrics,
                    )
                )
                retired = asyncio.create_task(
                    _forget_retired_clients(services.events, poller.pool), name="pool.retire"
                )
                stack.push_async_callback(_cancel, retired)
                drain.on_drain("poller.release_claims", poller.stop)
                app.state.poller = poller
            if demo_clusters > 0:
                await stack.enter_async_context(
                    demo_fleet(services, count=demo_clusters, nodes=demo_nodes)
                )
            upkeep = asyncio.create_task(
                housekeeping_forever(services.sessions, settings.cluster_manager),
                name="housekeeping",
            )
            stack.push_async_callback(_cancel, upkeep)
            closer = ConnectionCloser()
            stack.push_async_callback(closer.aclose)
            app.state.services = services
            app.state.authenticator = services.authenticator
            app.state.closer = closer
            if settings.auth.mode == "none" and not is_loopback(settings.server.host):
                logger.warning(
                    "authentication is off (auth.mode: none, allow_unauthenticated) and the "
                    "server listens on %s: whatever is in front of it must authenticate",
                    settings.server.host,
                )
            # Runs first on the way out: however the server stops, the drain has happened.
            stack.push_async_callback(drain.finished)
            yield

    app = Starlette(
        routes=[
            Route("/graphql", graphql),
            WebSocketRoute("/graphql", drain.track_websockets(graphql)),
            Route("/livez", livez),
            Route("/readyz", readyz),
            *([Route("/metrics", metrics_endpoint)] if settings.metrics.enabled else []),
        ],
        middleware=[
            Middleware(RequestIdMiddleware),
            # CORS before the checks that refuse: a preflight carries no token, and a listed
            # console must be able to read why a request was refused (413, 415, 401).
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.server.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["content-type", "authorization", "x-request-id"],
                expose_headers=["x-request-id"],
            ),
            Middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes),
            Middleware(JsonOnlyMiddleware),
            Middleware(AuthenticationMiddleware),
        ],
        lifespan=lifespan,
    )
    app.state.drain = drain
    return app
