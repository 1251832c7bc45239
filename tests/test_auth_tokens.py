"""Bearer token verification: what is accepted, and every way a token is refused."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from fleetql.access import Role
from fleetql.auth import AuthenticationError, Authenticator
from fleetql.auth.api_tokens import hash_secret, new_secret
from fleetql.config import AuthSettings, ConfigError, Settings, load_settings
from fleetql.db import tokens
from fleetql.db.engine import create_engine, create_session_factory
from tests.authkit import AUDIENCE, ISSUER, ROLES, Issuer, jwt_settings
from tests.conftest import GraphQLClient


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
async def unused_sessions(
    database_url: str, settings: Settings
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url, settings.database)
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def authenticator(
    settings: Settings, issuer: Issuer, unused_sessions: async_sessionmaker[AsyncSession]
) -> Authenticator:
    return Authenticator(jwt_settings(settings, issuer).auth, unused_sessions)


async def refusal(authenticator: Authenticator, token: str) -> str:
    with pytest.raises(AuthenticationError) as refused:
        await authenticator.authenticate(f"Bearer {token}")
    assert token not in str(refused.value)
    return str(refused.value)


async def test_a_valid_token_becomes_a_principal_with_its_groups_roles(
    authenticator: Authenticator, issuer: Issuer
) -> None:
    token = issuer.token("alice", ["fleet-viewers", "payments-operators", "unknown-group"])
    principal = await authenticator.authenticate(f"Bearer {token}")
    assert principal.name == "alice"
    assert principal.role is Role.OPERATOR
    assert principal.scope(Role.VIEWER) is None
    assert principal.covers({"team": "payments"}, Role.OPERATOR)
    assert not principal.covers({"team": "search"}, Role.OPERATOR)
    assert principal.expires_at is not None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
        ({"aud": "someone-else"}, "another audience"),
        ({"iss": "https://evil.test"}, "another issuer"),
        ({"exp": None}, "'exp'"),
    ],
)
async def test_claims_that_do_not_hold_are_refused(
    authenticator: Authenticator, issuer: Issuer, overrides: dict[str, object], expected: str
) -> None:
    message = await refusal(authenticator, issuer.token("alice", ["fleet-admins"], **overrides))
    assert expected in message


async def test_a_little_clock_skew_is_tolerated(
    authenticator: Authenticator, issuer: Issuer
) -> None:
    token = issuer.token("alice", ["fleet-admins"], nbf=int(time.time()) + 5)
    assert (await authenticator.authenticate(f"Bearer {token}")).name == "alice"


async def test_an_unsigned_token_is_refused(authenticator: Authenticator, issuer: Issuer) -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    claims = json.dumps(issuer.claims("mallory", ["fleet-admins"])).encode()
    body = base64.urlsafe_b64encode(claims).rstrip(b"=").decode()
    assert "'none'" in await refusal(authenticator, f"{header}.{body}.")


async def test_hs256_signed_with_the_public_key_is_refused(
    authenticator: Authenticator, issuer: Issuer
) -> None:
    # The classic key-confusion forgery: the public key is public, so anyone can do this.
    claims = issuer.claims("mallory", ["fleet-admins"])
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    import hashlib
    import hmac

    signature = hmac.new(
        issuer.public_pem.encode(), f"{header}.{body}".encode(), hashlib.sha256
    ).digest()
    forged = f"{header}.{body}." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    assert "'HS256'" in await refusal(authenticator, forged)


async def test_a_token_signed_by_another_key_is_refused(authenticator: Authenticator) -> None:
    other = Issuer()
    assert "signature" in await refusal(authenticator, other.token("mallory", ["fleet-admins"]))


async def test_garbage_and_wrong_schemes_are_refused(authenticator: Authenticator) -> None:
    assert "well-formed" in await refusal(authenticator, "not.a.jwt")
    with pytest.raises(AuthenticationError, match="Bearer"):
        await authenticator.authenticate("Basic YWxpY2U6c2VjcmV0")
    with pytest.raises(AuthenticationError, match="authentication required"):
        await authenticator.authenticate(None)


async def test_a_token_without_a_bound_group_is_forbidden(
    authenticator: Authenticator, issuer: Issuer
) -> None:
    with pytest.raises(AuthenticationError) as refused:
        await authenticator.authenticate(f"Bearer {issuer.token('bob', ['interns'])}")
    assert refused.value.status == 403


async def test_keys_from_a_jwks_file_are_picked_by_kid(
    settings: Settings,
    issuer: Issuer,
    tmp_path: Path,
    unused_sessions: async_sessionmaker[AsyncSession],
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    auth = jwt_settings(settings, issuer, public_key=None, jwks_file=str(jwks)).auth
    authenticator = Authenticator(auth, unused_sessions)
    principal = await authenticator.authenticate(
        f"Bearer {issuer.token('alice', ['fleet-admins'])}"
    )
    assert principal.role is Role.ADMIN
    stranger = Issuer(kid="rotated-away")
    assert "kid" in await refusal(authenticator, stranger.token("alice", ["fleet-admins"]))


async def test_a_shared_secret_verifies_hs256(
    settings: Settings, unused_sessions: async_sessionmaker[AsyncSession]
) -> None:
    secret = "s" * 40
    auth = AuthSettings.model_validate(
        {
            "mode": "jwt",
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "algorithms": "HS256",
            "secret": secret,
            "roles": ROLES,
        }
    )
    authenticator = Authenticator(auth, unused_sessions)
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "ci",
        "exp": now + 60,
        "groups": "fleet-viewers",
    }
    token = jwt.encode(claims, secret, algorithm="HS256")
    assert (await authenticator.authenticate(f"Bearer {token}")).role is Role.VIEWER


async def test_an_es256_key_is_accepted(
    settings: Settings, unused_sessions: async_sessionmaker[AsyncSession]
) -> None:
    from cryptography.hazmat.primitives import serialization

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    auth = AuthSettings.model_validate(
        {
            "mode": "jwt",
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "algorithms": ["ES256"],
            "public_key": pem.decode(),
            "roles": ROLES,
            "roles_claim": "realm_access.roles",
        }
    )
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": [AUDIENCE, "other"],
        "sub": "eve",
        "exp": now + 60,
        "realm_access": {"roles": ["fleet-operators"]},
    }
    token = jwt.encode(claims, key, algorithm="ES256")
    principal = await Authenticator(auth, unused_sessions).authenticate(f"Bearer {token}")
    assert principal.role is Role.OPERATOR


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"mode": "jwt", "secret": "s" * 40, "algorithms": "HS256"}, "issuer and audience"),
        (
            {
                "mode": "jwt",
                "issuer": "i",
                "audience": "a",
                "public_key": "x",
                "algorithms": "HS256",
            },
            "HMAC algorithms are refused",
        ),
        ({"mode": "jwt", "issuer": "i", "audience": "a", "algorithms": "none"}, "'none'"),
        (
            {
                "mode": "jwt",
                "issuer": "i",
                "audience": "a",
                "secret": "short",
                "algorithms": "HS256",
            },
            "at least 32 bytes",
        ),
        ({"mode": "jwt", "issuer": "i", "audience": "a"}, "exactly one of"),
        ({"roles": {"g": {"role": "root"}}}, "auth.roles.g.role"),
    ],
)
def test_unsafe_auth_settings_stop_the_start(auth: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings(environ={}, overrides={"auth": auth})


def test_no_authentication_is_refused_on_a_public_address() -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        load_settings(environ={}, overrides={"server": {"host": "0.0.0.0"}})
    allowed = load_settings(
        environ={},
        overrides={"server": {"host": "0.0.0.0"}, "auth": {"allow_unauthenticated": True}},
    )
    assert allowed.auth.mode == "none"
    assert load_settings(environ={}, overrides={"server": {"host": "::1"}}).auth.mode == "none"


def test_role_bindings_come_from_the_environment_as_json() -> None:
    settings = load_settings(
        environ={
            "FLEETQL_AUTH__ROLES": '{"ops": {"role": "operator", "scope": "env=prod"}}',
            "FLEETQL_AUTH__ALGORITHMS": "RS256,ES256",
        }
    )
    assert settings.auth.roles["ops"].scope == "env=prod"
    assert settings.auth.algorithms == ("RS256", "ES256")


async def test_an_api_token_costs_one_statement_outside_a_transaction_until_its_use_is_stale(
    settings: Settings,
    issuer: Issuer,
    api: GraphQLClient,  # a migrated database
    unused_sessions: async_sessionmaker[AsyncSession],
) -> None:
    secret = new_secret()
    async with unused_sessions() as session:
        stored = await tokens.insert_token(
            session,
            name=f"robot-{secret[-8:]}",
            role="viewer",
            scope=None,
            secret_hash=hash_secret(secret),
            created_by=None,
            expires_at=None,
        )
        await session.commit()
    engine = unused_sessions.kw["bind"]
    assert isinstance(engine, AsyncEngine)
    # (first word of each statement, whether the connection was outside a transaction)
    statements: list[tuple[str, bool]] = []

    def record(connection: object, cursor: object, statement: str, *args: object) -> None:
        dbapi = connection.connection.dbapi_connection  # type: ignore[attr-defined]
        statements.append((statement.split()[0].upper(), bool(dbapi.autocommit)))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        authenticator = Authenticator(jwt_settings(settings, issuer).auth, unused_sessions)
        principal = await authenticator.authenticate(f"Bearer {secret}")
        assert principal.token_id == stored.id and principal.role is Role.VIEWER
        # The first use is recorded, each statement committing itself.
        assert statements == [("SELECT", True), ("UPDATE", True)]
        statements.clear()
        async with unused_sessions() as session:
            (listed,) = [t for t in await tokens.list_tokens(session) if t.id == stored.id]
        assert listed.last_used_at is not None
        # The pooled connection went back in its default mode: other sessions get transactions.
        assert statements == [("SELECT", False)]
        statements.clear()
        # Used again within the minute: one read, no write, no BEGIN and no ROLLBACK.
        await authenticator.authenticate(f"Bearer {secret}")
        assert statements == [("SELECT", True)]
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
