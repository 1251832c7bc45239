"""Building a cluster's ApiClient from a stored kubeconfig, with every outbound call bounded.

fleetql never calls kubernetes_asyncio's kubeconfig loader (it would honour tokenFile, exec,
proxy-url and more); the client is built here from fields that
:func:`fleetql.kubeconfig.resolve_document` validated a moment before. That check runs on every
build, so a kubeconfig stored under older, looser rules (basic auth, insecure TLS) is refused with
``KUBECONFIG_REFUSED`` rather than used.

kubernetes_asyncio's own REST client is not used either: its aiohttp session trusts the
environment (proxy variables and ``~/.netrc``), follows redirects with the Authorization header,
and sets no timeout. :class:`BoundedRestClient` takes its place: no environment, no redirects, a
connect (TCP + TLS) bound, a bound on each gap between reads, the caller's bound on the whole
request, and a cap on the decompressed body. The CA is loaded from memory; Python's ``ssl`` only
loads a client key from a file, so that one file (and its certificate) is written 0600 into a
private 0700 folder and removed as soon as the TLS context holds them.

Where it connects is checked too (:mod:`fleetql.netpolicy`): a server given as an address is
checked when the client is built; a name is resolved by :class:`PolicyResolver` on every new
connection, which hands aiohttp only the addresses the policy allows, so the connection goes to
an address that was checked (a name rebound to a metadata address meanwhile never reaches it),
while TLS still verifies the certificate against the name.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiValueError
from kubernetes_asyncio.client.rest import RESTClientObject, RESTResponse
from yarl import URL

from fleetql.config import Settings
from fleetql.kubeconfig import KubeconfigError, resolve_document
from fleetql.netpolicy import (
    AddressPolicy,
    AddressRefused,
    Lookup,
    allowed_addresses,
    is_canonical,
    parse_address,
    system_lookup,
)
from fleetql.poller.probe import FORBIDDEN_ADDRESS, CheckFailed, ResponseTooLarge

REFUSED_CODE = "KUBECONFIG_REFUSED"
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ClientPolicy:
    """What a stored kubeconfig may ask of a client, and the bounds on every call it makes."""

    allow_insecure_tls: bool = False
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    # Seconds of Retry-After (429, 503) one check honours in all; see probe.RetryAfter.
    max_retry_after: float = 10.0
    # Which addresses a cluster may be at; the default is the default settings' policy.
    addresses: AddressPolicy = field(default_factory=AddressPolicy)
    # How host names are resolved before the policy filters them (tests pass their own).
    lookup: Lookup = field(default=system_lookup, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientPolicy:
        manager = settings.cluster_manager
        return cls(
            allow_insecure_tls=manager.allow_insecure_tls,
            connect_timeout=manager.connect_timeout.total_seconds(),
            read_timeout=manager.read_timeout.total_seconds(),
            max_response_bytes=manager.max_response_bytes,
            max_retry_after=manager.max_retry_after.total_seconds(),
            addresses=AddressPolicy.from_settings(settings),
        )


def build_api_client(document: Any, policy: ClientPolicy | None = None) -> ApiClient:
    """An ApiClient for the one context of a minimal kubeconfig (as fleetql stores them).

    Raises :class:`CheckFailed` (``KUBECONFIG_REFUSED``) when the document breaks the import
    rules as they are now; the operator re-imports it with updateCluster. A server given as an
    address the policy refuses fails with ``FORBIDDEN_ADDRESS`` (aiohttp connects to an address
    without asking the resolver, so it is checked here).
    """
    policy = policy or ClientPolicy()
    try:
        resolved = resolve_document(document, allow_insecure_tls=policy.allow_insecure_tls)
    except KubeconfigError as error:
        raise CheckFailed(
            REFUSED_CODE,
            "re-import this cluster's kubeconfig with updateCluster(id, input: {kubeconfig}): "
            f"the stored one breaks fleetql's current rules ({error.code}: {error.message})",
        ) from None
    cluster = resolved.document["clusters"][0]["cluster"]
    user = resolved.document["users"][0]["user"]
    host = resolved.server.rstrip("/")
    _check_literal_address(host, policy.addresses)

    configuration = Configuration()
    configuration.host = host
    if "token" in user:
        configuration.api_key["BearerToken"] = f"Bearer {user['token']}"
    rest = BoundedRestClient(
        ssl_context=_ssl_context(cluster, user, insecure=resolved.insecure_skip_tls_verify),
        server_hostname=cluster.get("tls-server-name"),
        policy=policy,
    )
    return ClusterApiClient(configuration, rest)


class ClusterApiClient(ApiClient):
    """An ApiClient on a :class:`BoundedRestClient`.

    ``ApiClient.__init__`` would open a REST client (an aiohttp session that trusts the
    environment) of its own first, so the few attributes it sets are set here instead;
    tests/test_outbound_limits.py checks that they are still the same set.
    """

    def __init__(self, configuration: Configuration, rest_client: BoundedRestClient) -> None:
        self.configuration = configuration
        self.pool_threads = 1
        self.rest_client = rest_client
        self.default_headers: dict[str, str] = {}
        self.cookie = ""  # falsy: no Cookie header
        self.user_agent = "fleetql"
        self.client_side_validation = configuration.client_side_validation


class BoundedRestClient(RESTClientObject):
    """GET requests to one API server, each bounded in time and size; see the module docstring."""

    def __init__(
        self, *, ssl_context: ssl.SSLContext, server_hostname: str | None, policy: ClientPolicy
    ) -> None:
        # RESTClientObject.__init__ is not called: it opens a session with trust_env=True.
        self.policy = policy
        self.tls_server_name = server_hostname
        self.pool_manager = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=4,
                ssl=ssl_context,
                resolver=PolicyResolver(policy.addresses, lookup=policy.lookup),
                # No cache: every new connection resolves and checks the name again.
                use_dns_cache=False,
            ),
            trust_env=False,  # no HTTP(S)_PROXY, no ~/.netrc
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        await self.pool_manager.close()

    async def request(
        self,
        method: str,
        url: str,
        query_params: Any = None,  # a list of pairs, as ApiClient passes it
        headers: dict[str, Any] | None = None,
        body: Any | None = None,
        post_params: dict[str, Any] | None = None,
        _preload_content: bool = True,
        _request_timeout: float | tuple[float] | aiohttp.ClientTimeout | None = None,
    ) -> RESTResponse:
        """Always preloads, within ``max_response_bytes``; a 3xx is returned, never followed."""
        if method.upper() != "GET" or body is not None or post_params:
            raise ApiValueError("fleetql's cluster client only reads (GET without a body)")
        if query_params:
            url += "?" + urlencode(query_params)
        policy = self.policy
        total = _request_timeout if isinstance(_request_timeout, int | float) else None
        timeout = aiohttp.ClientTimeout(
            total=total,
            connect=policy.connect_timeout,  # pool wait + TCP connect + TLS handshake
            sock_connect=policy.connect_timeout,
            sock_read=policy.read_timeout,
        )
        async with self.pool_manager.get(
            url,
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
            server_hostname=self.tls_server_name,
        ) as response:
            data = await _read_bounded(response, policy.max_response_bytes)
        return RESTResponse(response, data)


class PolicyResolver(AbstractResolver):
    """Resolves a cluster's host name and returns only the addresses the policy allows, so
    aiohttp connects to exactly those; none allowed raises :class:`AddressRefused` (an
    ``OSError``: aiohttp reports it as ``ClientConnectorDNSError``, the probe as
    ``FORBIDDEN_ADDRESS``)."""

    def __init__(self, policy: AddressPolicy, *, lookup: Lookup = system_lookup) -> None:
        self.policy = policy
        self.lookup = lookup

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await allowed_addresses(host, self.policy, lookup=self.lookup)
        results: list[ResolveResult] = []
        for address in addresses:
            kind = socket.AF_INET if address.version == 4 else socket.AF_INET6
            if family not in (socket.AF_UNSPEC, kind):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(address),
                    port=port,
                    family=kind,
                    proto=0,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not results:
            raise AddressRefused(f"{host} has no allowed address of the family asked for")
        return results

    async def close(self) -> None:
        pass


def _check_literal_address(server: str, policy: AddressPolicy) -> None:
    """Check a server given as an address, in any spelling (a name is left to the resolver)."""
    host = URL(server).raw_host or ""
    try:
        address = parse_address(host)
        if address is not None:
            policy.check(address, via=None if is_canonical(host, address) else f"{host} is")
    except (AddressRefused, ValueError) as error:
        raise CheckFailed(FORBIDDEN_ADDRESS, f"server {host}: {error}") from None


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The decompressed body, refusing it as soon as it passes ``limit`` (a gzip bomb is cut
    off after ``limit`` bytes, not inflated whole)."""
    if response.content_length is not None and response.content_length > limit:
        raise ResponseTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _ssl_context(
    cluster: dict[str, Any], user: dict[str, Any], *, insecure: bool
) -> ssl.SSLContext:
    ca = cluster.get("certificate-authority-data")
    # With a CA, only that CA is trusted (as kubectl does); without, the system's.
    context = ssl.create_default_context(
        cadata=base64.b64decode(ca).decode("ascii") if ca else None
    )
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert := user.get("client-certificate-data"):
        with tempfile.TemporaryDirectory(prefix="fleetql-tls-") as private:
            os.chmod(private, 0o700)
            folder = Path(private)
            cert_file = _write_private(folder / "client.crt", cert)
            key_file = _write_private(folder / "client.key", user["client-key-data"])
            context.load_cert_chain(cert_file, keyfile=key_file)
    return context


def _write_private(path: Path, data_base64: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(base64.b64decode(data_base64))
    return str(path)
