"""The ASGI app and its lifespan, which owns every resource the server holds."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from fleetql.config import Settings
from fleetql.crypto import KubeconfigCipher
from fleetql.db import migrations
from fleetql.db.embedded import embedded_postgres
from fleetql.db.engine import create_engine, create_session_factory
from fleetql.db.keys import verify_encryption_key
from fleetql.keystore import load_encryption_key
from fleetql.poller.service import running_poller
from fleetql.requestid import RequestIdMiddleware, request_id_of
from fleetql.resolvers.context import Context, Services
from fleetql.schema import build_schema

logger = logging.getLogger(__name__)


class FleetGraphQL(GraphQL[Context, None]):
    """Strawberry's ASGI app, with our typed context."""

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        services: Services = request.app.state.services
        return Context(services=services, request_id=request_id_of(request.scope))


@asynccontextmanager
async def open_services(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Services]:
    """Database (embedded or external), migrations, and the key check, closed in reverse."""
    async with AsyncExitStack() as stack:
        url = settings.database.url
        generate_key_in = None
        if url is None:
            data_dir = settings.database.embedded_data_dir
            url = await stack.enter_async_context(embedded_postgres(data_dir))
            generate_key_in = data_dir.expanduser().resolve().parent
        key = load_encryption_key(settings.encryption, generate_in=generate_key_in)
        cipher = KubeconfigCipher(key)
        engine = create_engine(url, settings.database)
        stack.push_async_callback(engine.dispose)
        if migrate:
            await migrations.upgrade(engine)
        sessions = create_session_factory(engine)
        async with sessions() as session:
            await verify_encryption_key(
                session, key_id=key.key_id, can_decrypt=cipher.can_decrypt_with
            )
            await session.commit()
        logger.info("encryption key %s verified against the stored kubeconfigs", key.key_id)
        yield Services(settings=settings, sessions=sessions, cipher=cipher)


def create_app(settings: Settings, *, migrate: bool = True) -> Starlette:
    graphql = FleetGraphQL(
        build_schema(settings.server),
        graphql_ide="graphiql" if settings.server.graphiql else None,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(settings, migrate=migrate) as services, AsyncExitStack() as stack:
            if settings.poller.enabled:
                await stack.enter_async_context(
                    running_poller(settings, sessions=services.sessions, cipher=services.cipher)
                )
            app.state.services = services
            yield

    return Starlette(
        routes=[Route("/graphql", graphql), WebSocketRoute("/graphql", graphql)],
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.server.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["content-type", "authorization", "x-request-id"],
                expose_headers=["x-request-id"],
            ),
        ],
        lifespan=lifespan,
    )
