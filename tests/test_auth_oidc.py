"""auth.mode oidc against a local issuer: discovered keys, rotation, and a start that fails
clearly when the issuer cannot be used."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.app import create_app
from fleetql.auth import Authenticator
from fleetql.config import ConfigError, Settings
from fleetql.db.engine import create_engine, create_session_factory
from tests.authkit import Issuer, LocalIssuer, oidc_settings
from tests.conftest import ThreadedServer, free_port

QUERY = {"query": "{ clusters { total } }"}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_tokens_signed_with_the_issuers_keys_are_accepted_and_rotation_is_followed(
    settings: Settings,
) -> None:
    first, second = Issuer(kid="k1"), Issuer(kid="k2")
    with LocalIssuer(first) as issuer:
        secured = oidc_settings(settings, issuer.url, jwks_min_refresh_interval="0.5s")
        with ThreadedServer(create_app(secured), secured) as server:
            async with httpx.AsyncClient(timeout=10) as http:
                token = first.token("alice", ["fleet-viewers"], iss=issuer.url)
                accepted = await http.post(server.url, json=QUERY, headers=bearer(token))
                assert accepted.status_code == 200, accepted.text
                assert issuer.fetches["/keys"] == 1
                # The issuer rotates: a token signed with its new key makes us look again.
                issuer.keys = [second]
                await asyncio.sleep(0.6)  # past jwks_min_refresh_interval since the start
                rotated = second.token("alice", ["fleet-viewers"], iss=issuer.url)
                response = await http.post(server.url, json=QUERY, headers=bearer(rotated))
                assert response.status_code == 200, response.text
                assert issuer.fetches["/keys"] == 2
                # The retired key is gone with the refresh.
                old = await http.post(server.url, json=QUERY, headers=bearer(token))
                assert old.status_code == 401
                assert issuer.fetches["/.well-known/openid-configuration"] == 1


async def test_unknown_key_ids_do_not_hammer_the_issuer(settings: Settings) -> None:
    with LocalIssuer(Issuer(kid="k1")) as issuer:
        secured = oidc_settings(settings, issuer.url, jwks_min_refresh_interval="10m")
        with ThreadedServer(create_app(secured), secured) as server:
            async with httpx.AsyncClient(timeout=10) as http:
                for number in range(5):
                    forged = Issuer(kid=f"made-up-{number}").token("eve", ["fleet-admins"])
                    response = await http.post(server.url, json=QUERY, headers=bearer(forged))
                    assert response.status_code == 401
                    assert "kid" in response.json()["errors"][0]["message"]
            assert issuer.fetches["/keys"] == 1


@pytest.fixture
async def sessions_for_start(
    database_url: str, settings: Settings
) -> async_sessionmaker[AsyncSession]:
    return create_session_factory(create_engine(database_url, settings.database))


async def test_a_start_without_a_reachable_issuer_fails_naming_it(
    settings: Settings, sessions_for_start: async_sessionmaker[AsyncSession]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    auth = oidc_settings(settings, nowhere, discovery_timeout="2s").auth
    with pytest.raises(ConfigError, match=r"auth\.issuer: cannot fetch the discovery document"):
        async with Authenticator(auth, sessions_for_start):
            pass


async def test_a_discovery_document_for_another_issuer_is_refused(
    settings: Settings, sessions_for_start: async_sessionmaker[AsyncSession]
) -> None:
    with LocalIssuer(Issuer()) as issuer:
        claimed = issuer.url + "/realms/other"
        auth = oidc_settings(settings, claimed).auth
        with pytest.raises(ConfigError, match="names issuer"):
            async with Authenticator(auth, sessions_for_start):
                pass


def test_oidc_settings_refuse_local_keys_and_plain_http_elsewhere(settings: Settings) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="takes its keys from the issuer"):
        oidc_settings(settings, "https://login.example.com", secret="s" * 40)
    with pytest.raises(ValidationError, match="https"):
        oidc_settings(settings, "http://login.example.com")
