"""An OIDC issuer's signing keys: discovered at start, cached, refreshed when they rotate.

At start the issuer's discovery document (``/.well-known/openid-configuration``) names its JWKS;
both are fetched, and a server that cannot reach its issuer does not start (it could verify
nothing). From then on the keys are fetched again every ``jwks_refresh_interval``, and at once
when a token names a key id we do not have — an issuer that rotated — but never more often than
``jwks_min_refresh_interval``, so tokens with made-up key ids cannot turn fleetql into a
hammer against the issuer. A failed refresh keeps the keys we have.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from fleetql.auth.jwt_verifier import JwtVerifier, parse_jwks
from fleetql.config import AuthSettings, ConfigError

__all__ = ["IssuerUnavailable", "OidcKeys"]

logger = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 1024 * 1024


class IssuerUnavailable(Exception):
    """The issuer's discovery document or keys cannot be fetched or used."""


class OidcKeys:
    def __init__(
        self, settings: AuthSettings, verifier: JwtVerifier, http: httpx.AsyncClient
    ) -> None:
        assert settings.issuer is not None
        self._settings = settings
        self._issuer = settings.issuer.rstrip("/")
        self._verifier = verifier
        self._http = http
        self._jwks_uri: str | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Discover and fetch the keys, or stop the start with a message naming the setting."""
        try:
            await self._discover()
            await self._fetch_keys()
        except IssuerUnavailable as error:
            raise ConfigError(f"auth.issuer: {error}") from None

    async def refresh_for_unknown_key(self) -> bool:
        """Fetch the keys again, unless that was done too recently; whether it was done."""
        async with self._lock:
            since = time.monotonic() - self._fetched_at
            if since < self._settings.jwks_min_refresh_interval.total_seconds():
                return False
            try:
                await self._fetch_keys()
            except IssuerUnavailable as error:
                logger.warning("cannot refresh the issuer's keys: %s", error)
                return False
            return True

    async def refresh_forever(self) -> None:
        interval = self._settings.jwks_refresh_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            async with self._lock:
                try:
                    await self._fetch_keys()
                except IssuerUnavailable as error:
                    logger.warning("cannot refresh the issuer's keys (keeping ours): %s", error)

    async def _discover(self) -> None:
        url = f"{self._issuer}/.well-known/openid-configuration"
        document = await self._get_json(url, "the discovery document")
        # OpenID Connect Discovery 1.0, 4.3: the document must name the issuer it was asked for.
        if str(document.get("issuer", "")).rstrip("/") != self._issuer:
            raise IssuerUnavailable(
                f"the discovery document at {url} names issuer {document.get('issuer')!r}, "
                f"not {self._issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise IssuerUnavailable(f"the discovery document at {url} has no usable jwks_uri")
        if jwks_uri.startswith("http://") and self._issuer.startswith("https://"):
            raise IssuerUnavailable("the issuer's jwks_uri is not https")
        self._jwks_uri = jwks_uri

    async def _fetch_keys(self) -> None:
        assert self._jwks_uri is not None
        document = await self._get_json(self._jwks_uri, "the issuer's keys (JWKS)")
        try:
            keys = parse_jwks(document)
        except ValueError as error:
            raise IssuerUnavailable(f"{self._jwks_uri}: {error}") from None
        if not keys:
            raise IssuerUnavailable(f"{self._jwks_uri} holds no signing keys")
        self._fetched_at = time.monotonic()
        added = sorted(set(keys) - self._verifier.key_ids)
        self._verifier.use_jwks(keys)
        if added:
            logger.info("issuer keys now %s (new: %s)", sorted(keys), added)

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = await self._http.get(
                url, timeout=self._settings.discovery_timeout.total_seconds()
            )
        except httpx.HTTPError as error:
            raise IssuerUnavailable(
                f"cannot fetch {what} from {url}: {type(error).__name__}"
            ) from None
        if response.status_code != 200:
            raise IssuerUnavailable(f"{url} answered HTTP {response.status_code} for {what}")
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise IssuerUnavailable(f"{what} at {url} is larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = response.json()
        except ValueError:
            raise IssuerUnavailable(f"{what} at {url} is not JSON") from None
        if not isinstance(document, dict):
            raise IssuerUnavailable(f"{what} at {url} is not a JSON object")
        return document
