"""Which browser origins may call the API and open its websocket."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fleetql.app import create_app
from fleetql.config import ServerSettings, Settings
from tests.conftest import ThreadedServer
from tests.wsclient import GraphQLWebSocket

CONSOLE = "https://console.example.com"


@pytest.fixture(scope="module")
def console_server(settings: Settings, server: ThreadedServer) -> Iterator[ThreadedServer]:
    """A server that lets one console origin in (``server`` has migrated the database)."""
    configured = settings.model_copy(update={"server": ServerSettings(cors_origins=(CONSOLE,))})
    with ThreadedServer(create_app(configured, migrate=False), configured) as running:
        yield running


@pytest.mark.parametrize(("origin", "allowed"), [(CONSOLE, True), ("https://evil.example", False)])
async def test_only_a_configured_origin_may_call_the_api(
    console_server: ThreadedServer, origin: str, allowed: bool
) -> None:
    async with httpx.AsyncClient() as http:
        preflight = await http.options(
            console_server.url,
            headers={"origin": origin, "access-control-request-method": "POST"},
        )
    assert (preflight.headers.get("access-control-allow-origin") == origin) is allowed


async def test_only_a_configured_origin_may_open_the_websocket(
    console_server: ThreadedServer,
) -> None:
    """A page on another site must not ride a user's session into a websocket (CSWSH)."""
    subprotocols: list[str] = ["graphql-transport-ws"]
    async with connect(
        console_server.ws_url,
        subprotocols=subprotocols,
        origin=CONSOLE,  # type: ignore[arg-type]
    ) as accepted:
        assert accepted.subprotocol == "graphql-transport-ws"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            console_server.ws_url,
            subprotocols=subprotocols,  # type: ignore[arg-type]
            origin="https://evil.example",  # type: ignore[arg-type]
        ):
            pass
    assert refused.value.response.status_code == 403


async def test_graphiql_subscribes_over_a_same_origin_websocket(server: ThreadedServer) -> None:
    """What GraphiQL in a browser does: the page derives ws://host/graphql from its own URL and
    opens it with the page's origin, which is accepted without any configured origin."""
    async with httpx.AsyncClient() as http:
        page = await http.get(server.url, headers={"accept": "text/html"})
    assert page.status_code == 200
    assert "subscriptionUrl" in page.text and "httpUrlToWebSockeUrl(fetchURL)" in page.text
    own_origin = server.url.removesuffix("/graphql")
    async with GraphQLWebSocket.open(server.ws_url, origin=own_origin) as ws:
        operation = await ws.subscribe("subscription { clusterStateChanged { kind } }")
        assert (await ws.query("{ clusters(limit: 0) { total } }"))["clusters"]["total"] >= 0
        assert ws.pending(operation) == 0
