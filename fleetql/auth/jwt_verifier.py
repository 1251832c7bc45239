"""Verifying signed bearer tokens with configured keys, and nothing the token chooses itself.

The accepted algorithms come from the settings (never ``none``; never HMAC with an asymmetric
key: config.py refuses both), the key from the settings too, picked by ``kid`` from a JWKS. The
token's own header only selects among what was configured. Messages say what is wrong with a
token in words a client can act on, and never repeat the token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from fleetql.config import AuthSettings, ConfigError

__all__ = ["InvalidToken", "JwtVerifier", "UnknownKeyId", "parse_jwks"]


class InvalidToken(Exception):
    """The token is refused; the message is safe to return to the client."""


class UnknownKeyId(InvalidToken):
    """The token names a key the verifier does not have (an issuer may have just rotated)."""


class JwtVerifier:
    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._algorithms = list(settings.algorithms)
        self._key: Any = None
        self._keys_by_kid: dict[str, jwt.PyJWK] = {}
        if settings.secret is not None:
            self._key = settings.secret.encode()
        elif settings.public_key is not None or settings.public_key_file is not None:
            pem = (
                settings.public_key.encode()
                if settings.public_key is not None
                else _read(settings.public_key_file, "auth.public_key_file")
            )
            try:
                self._key = serialization.load_pem_public_key(pem)
            except ValueError:
                raise ConfigError("auth.public_key: not a PEM public key") from None
        elif settings.jwks_file is not None:
            try:
                self._keys_by_kid = parse_jwks(_read(settings.jwks_file, "auth.jwks_file"))
            except ValueError as error:
                raise ConfigError(f"auth.jwks_file: {error}") from None

    def use_jwks(self, keys: dict[str, jwt.PyJWK]) -> None:
        """Verify with these keys from now on (an OIDC issuer's, refreshed)."""
        self._keys_by_kid = keys

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys_by_kid)

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, once signature, algorithm, issuer, audience, expiry and
        not-before all hold."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise InvalidToken("the bearer token is not a well-formed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise InvalidToken(f"tokens signed with {algorithm!r} are not accepted")
        key = self._key if self._key is not None else self._key_for(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token is from another issuer") from None
        except jwt.MissingRequiredClaimError as error:
            raise InvalidToken(f"the token has no {error.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature does not verify") from None
        except (jwt.InvalidTokenError, jwt.InvalidKeyError):
            raise InvalidToken("the token cannot be verified") from None
        return claims

    def _key_for(self, kid: Any) -> jwt.PyJWK:
        if not isinstance(kid, str) or kid not in self._keys_by_kid:
            raise UnknownKeyId("the token's key id (kid) is not one of the configured keys")
        return self._keys_by_kid[kid]


def _read(path: Any, setting: str) -> bytes:
    try:
        return bytes(path.read_bytes())
    except OSError as error:
        raise ConfigError(f"{setting}: cannot read {path}: {error.strerror}") from None


def parse_jwks(data: bytes | Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document by kid; ValueError says what is wrong with it."""
    try:
        document = json.loads(data) if isinstance(data, bytes) else data
        keys = document["keys"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("not a JWKS document (an object with 'keys')") from None
    by_kid: dict[str, jwt.PyJWK] = {}
    for entry in keys:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("kid"), str):
            raise ValueError("every key needs a 'kid'")
        if entry.get("use", "sig") != "sig":
            continue  # an encryption key: not for verifying signatures
        if entry.get("kty") == "oct":
            raise ValueError("symmetric keys do not belong in a JWKS; use auth.secret")
        try:
            by_kid[entry["kid"]] = jwt.PyJWK.from_dict(dict(entry))
        except jwt.PyJWKError as error:
            raise ValueError(f"key {entry['kid']!r}: {error}") from None
    return by_kid
