"""Signing test tokens with generated keys, and servers that require them."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fleetql.config import AuthSettings, Settings
from tests.conftest import GraphQLClient

ISSUER = "https://issuer.test"
AUDIENCE = "fleetql"

# Groups of the test issuer, and what fleetql makes of them.
ROLES = {
    "fleet-admins": {"role": "admin"},
    "fleet-operators": {"role": "operator"},
    "fleet-viewers": {"role": "viewer"},
    "payments-operators": {"role": "operator", "scope": "team=payments"},
    "payments-viewers": {"role": "viewer", "scope": "team=payments"},
    "payments-admins": {"role": "admin", "scope": "team=payments"},
}


class Issuer:
    """An RSA key pair that signs tokens the way an identity provider would."""

    def __init__(self, kid: str = "test-key") -> None:
        self.kid = kid
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = (
            self.private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def claims(self, subject: str, groups: list[str], **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "groups": groups,
            "iat": now,
            "exp": now + 600,
        }
        claims.update(overrides)
        return {key: value for key, value in claims.items() if value is not None}

    def token(self, subject: str, groups: list[str], **overrides: Any) -> str:
        return jwt.encode(
            self.claims(subject, groups, **overrides),
            self.private_key,
            algorithm="RS256",
            headers={"kid": self.kid},
        )

    def jwks(self) -> dict[str, Any]:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}


def jwt_settings(settings: Settings, issuer: Issuer, **auth: Any) -> Settings:
    """``settings`` with bearer tokens of ``issuer`` required."""
    values: dict[str, Any] = {
        "mode": "jwt",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "algorithms": ["RS256"],
        "public_key": issuer.public_pem,
        "roles": ROLES,
        "token_check_interval": "0.2s",
    }
    values.update(auth)
    return settings.model_copy(update={"auth": AuthSettings.model_validate(values)})


class AuthClient(GraphQLClient):
    """Posts GraphQL as one principal."""

    def __init__(self, http: httpx.AsyncClient, url: str, token: str | None) -> None:
        super().__init__(http, url)
        self.token = token

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.token is None else {"authorization": f"Bearer {self.token}"}


def forbidden(body: Mapping[str, Any]) -> bool:
    return any(
        error.get("extensions", {}).get("code") == "FORBIDDEN" for error in body.get("errors", ())
    )


class LocalIssuer:
    """A small OIDC issuer on 127.0.0.1: a discovery document and a JWKS of its current keys,
    counting how often each is fetched."""

    def __init__(self, *issuers: Issuer) -> None:
        import http.server
        import threading
        from collections import Counter

        self.keys = list(issuers)
        self.fetches: Counter[str] = Counter()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches[self.path] += 1
                if self.path.endswith("/.well-known/openid-configuration"):
                    body = {"issuer": owner.url, "jwks_uri": f"{owner.url}/keys"}
                elif self.path == "/keys":
                    body = {"keys": [key for issuer in owner.keys for key in issuer.jwks()["keys"]]}
                else:
                    self.send_error(404)
                    return
                data = orjson.dumps(body)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LocalIssuer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def oidc_settings(settings: Settings, issuer_url: str, **auth: Any) -> Settings:
    values: dict[str, Any] = {
        "mode": "oidc",
        "issuer": issuer_url,
        "audience": AUDIENCE,
        "algorithms": ["RS256"],
        "roles": ROLES,
        "token_check_interval": "0.2s",
    }
    values.update(auth)
    return settings.model_copy(update={"auth": AuthSettings.model_validate(values)})
