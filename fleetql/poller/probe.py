"""One health check of one cluster: readiness, version, nodes and (when served) node usage.

Requests go through kubernetes_asyncio's ApiClient (its configuration and auth) on fleetql's
bounded REST client (see :mod:`fleetql.poller.client`) with ``_preload_content=False``; bodies
are parsed with orjson, never into model objects. A redirect is an error, never followed.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio.client import ApiClient

from fleetql.netpolicy import AddressRefused
from fleetql.poller.nodes import (
    EMPTY_SUMMARY,
    NodeListError,
    NodeSummary,
    UsageSummary,
    add_summaries,
    summarize_nodes,
    summarize_usage,
)

# Nodes per list request. orjson parses 100-node pages (~1 MB) for half the CPU per node of
# 500-node ones, and a smaller page leaves young collections fewer live objects to walk: a
# 1,000-node check went from ~88 to ~70 µs/node and peak RSS from ~400 to ~190 MiB
# (bench/poller.py; a few more requests per large cluster, each well under a millisecond).
PAGE_SIZE = 100
MAX_PAGES = 10_000
MAX_MESSAGE = 300
# Every code a failed check can carry (README "Health checks"); metrics pre-declare them.
ERROR_CODES = (
    "TIMEOUT",
    "CONNECTION_REFUSED",
    "CONNECTION_RESET",
    "DNS",
    "TLS",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "API_ERROR",
    "INVALID_RESPONSE",
    "INVALID_KUBECONFIG",
    "KUBECONFIG_REFUSED",
    "REDIRECT",
    "RESPONSE_TOO_LARGE",
    "THROTTLED",
    "FORBIDDEN_ADDRESS",
)
# The server is, or resolves only to, an address fleetql does not connect to (README "Outbound
# addresses (SSRF)").
FORBIDDEN_ADDRESS = "FORBIDDEN_ADDRESS"
_THROTTLED = frozenset({429, 503})


@dataclass(frozen=True)
class CheckError:
    """Why (part of) a check failed: a stable code and a short message with no secret in it."""

    code: str
    message: str


class ResponseTooLarge(Exception):
    """A cluster's answer was larger (decompressed) than the client's ``max_response_bytes``."""

    def __init__(self, limit: int) -> None:
        size = f"{limit / (1024 * 1024):g} MiB" if limit >= 1024 * 1024 else f"{limit} bytes"
        super().__init__(f"the answer is larger than {size}")
        self.limit = limit


class CheckFailed(Exception):
    """The check could not be completed; ``reachable`` says whether the API answered at all."""

    def __init__(
        self, code: str, message: str, *, reachable: bool = False, keeps_status: bool = False
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.error = CheckError(code, message[:MAX_MESSAGE])
        self.reachable = reachable
        # The failure says nothing about the cluster's health (it asked us to slow down): the
        # status stays as it was; only lastError shows it.
        self.keeps_status = keeps_status


@dataclass(frozen=True)
class Observation:
    ready: bool
    not_ready_reason: str | None
    kubernetes_version: str | None
    nodes: NodeSummary | None
    nodes_error: CheckError | None
    usage: UsageSummary | None


@dataclass(frozen=True)
class RetryAfter:
    """How a 429 or 503 that carries ``Retry-After`` is honoured: waited for (plus up to
    ``jitter`` of it, so throttled pollers do not return in step) and retried, as long as one
    check's waits stay within ``max_wait`` seconds in all; past that the check fails with
    ``THROTTLED``, which leaves the cluster's status as it was."""

    max_wait: float = 10.0
    jitter: float = 0.2
    max_attempts: int = 3
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    retry_after: float | None = None


@dataclass
class _Requests:
    """One check's requests to one cluster, sharing its budget of Retry-After waits."""

    api: ApiClient
    request_timeout: float
    retry_after: RetryAfter
    waited: float = 0.0

    async def get(self, path: str, query: list[tuple[str, str]] | None = None) -> _Response:
        policy = self.retry_after
        for attempt in range(1, policy.max_attempts + 1):
            response = await _get(self.api, path, self.request_timeout, query)
            if response.status not in _THROTTLED or response.retry_after is None:
                return response
            wait = response.retry_after * (1 + random.uniform(0, policy.jitter))
            if attempt == policy.max_attempts or self.waited + wait > policy.max_wait:
                break
            self.waited += wait
            await policy.sleep(wait)
        raise CheckFailed(
            "THROTTLED",
            f"{path} answered HTTP {response.status} with Retry-After "
            f"{response.retry_after:g}s{_status_message(response.body)}; fleetql waits at most "
            f"{policy.max_wait:g}s per check",
            reachable=True,
            keeps_status=True,
        )


async def probe(
    api: ApiClient,
    *,
    request_timeout: float,
    page_size: int = PAGE_SIZE,
    retry_after: RetryAfter | None = None,
) -> Observation:
    """Check a cluster; raises CheckFailed when it cannot be reached or does not answer sanely.

    ``request_timeout`` bounds each request, so a hung cluster holds its slot for a bounded time.
    """
    requests = _Requests(api, request_timeout, retry_after or RetryAfter())
    ready, reason = await _readiness(requests)
    version = await _version(requests)
    nodes: NodeSummary | None = None
    nodes_error: CheckError | None = None
    try:
        nodes = await _summarize_node_pages(requests, page_size)
    except CheckFailed as failure:
        if not failure.reachable or failure.keeps_status:
            raise
        nodes_error = failure.error
    usage = await _usage(requests)
    return Observation(
        ready=ready,
        not_ready_reason=reason,
        kubernetes_version=version,
        nodes=nodes,
        nodes_error=nodes_error,
        usage=usage,
    )


async def _readiness(requests: _Requests) -> tuple[bool, str | None]:
    response = await requests.get("/readyz")
    if response.status == 404:  # API servers before 1.16 serve only /healthz
        response = await requests.get("/healthz")
    _refuse_auth_failures(response, "/readyz")
    if response.status == 200:
        return True, None
    detail = _failed_checks(response.body)
    return False, f"API server is not ready (HTTP {response.status}){detail}"


async def _version(requests: _Requests) -> str | None:
    response = await requests.get("/version")
    _refuse_auth_failures(response, "/version")
    body = _json(_expect_ok(response, "/version"), "/version")
    version = body.get("gitVersion") if isinstance(body, dict) else None
    if not isinstance(version, str):
        raise CheckFailed("INVALID_RESPONSE", "/version has no gitVersion", reachable=True)
    return version


async def _summarize_node_pages(requests: _Requests, page_size: int) -> NodeSummary:
    """List nodes page by page, summing each page as it arrives: no node outlives its page, so
    memory stays one page per check and the collector has little to scan."""
    path = "/api/v1/nodes"
    summary = EMPTY_SUMMARY
    token: str | None = None
    restarted = False
    for _ in range(MAX_PAGES):
        query = [("limit", str(page_size))] + ([("continue", token)] if token else [])
        response = await requests.get(path, query)
        if response.status == 410 and token and not restarted:
            # The continue token expired mid-list; a fresh list is consistent again.
            summary, token, restarted = EMPTY_SUMMARY, None, True
            continue
        _refuse_auth_failures(response, path, fatal=False)
        page = _json(_expect_ok(response, path), path)
        if not isinstance(page, dict) or not isinstance(page.get("items"), list):
            raise CheckFailed("INVALID_RESPONSE", f"{path} is not a list", reachable=True)
        try:
            summary = add_summaries(summary, summarize_nodes(page["items"]))
        except NodeListError as error:
            raise CheckFailed("INVALID_RESPONSE", f"{path}: {error}", reachable=True) from None
        token = (page.get("metadata") or {}).get("continue") or None
        if token is None:
            return summary
    raise CheckFailed(
        "INVALID_RESPONSE", f"{path} did not end after {MAX_PAGES} pages", reachable=True
    )


async def _usage(requests: _Requests) -> UsageSummary | None:
    """Node usage when metrics.k8s.io is served; None when it is absent, refuses us or asks us
    to come back later."""
    try:
        response = await requests.get("/apis/metrics.k8s.io/v1beta1/nodes")
    except CheckFailed as failure:
        if failure.keeps_status:
            return None
        raise
    if response.status != 200:
        return None
    body = _json(response, "metrics.k8s.io")
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        return None
    try:
        return summarize_usage(body["items"])
    except NodeListError:
        return None


def _expect_ok(response: _Response, path: str) -> _Response:
    if response.status != 200:
        raise CheckFailed(
            "API_ERROR",
            f"{path} answered HTTP {response.status}{_status_message(response.body)}",
            reachable=True,
        )
    return response


def _refuse_auth_failures(response: _Response, path: str, *, fatal: bool = True) -> None:
    """401 and 403 mean our credentials are refused: unreachable, as far as we are concerned —
    except for one resource (``fatal=False``), which only makes the check partial."""
    codes = {401: "UNAUTHORIZED", 403: "FORBIDDEN"}
    if response.status in codes:
        raise CheckFailed(
            codes[response.status],
            f"{path}: HTTP {response.status}{_status_message(response.body)}",
            reachable=not fatal,
        )


def _json(response: _Response, what: str) -> Any:
    try:
        return orjson.loads(response.body)
    except orjson.JSONDecodeError:
        raise CheckFailed("INVALID_RESPONSE", f"{what} is not valid JSON", reachable=True) from None


def _status_message(body: bytes) -> str:
    try:
        status = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    message = status.get("message") if isinstance(status, dict) else None
    return f": {message}" if isinstance(message, str) and message else ""


def _failed_checks(body: bytes) -> str:
    """The ``[-]`` lines of a verbose readyz answer name what is not ready."""
    failed = [
        line[3:].split(" ", 1)[0]
        for line in body.decode(errors="replace").splitlines()
        if line.startswith("[-]")
    ]
    return f": {', '.join(failed)} failed" if failed else ""


async def _get(
    api: ApiClient, path: str, request_timeout: float, query: list[tuple[str, str]] | None = None
) -> _Response:
    try:
        async with asyncio.timeout(request_timeout):
            response = await api.call_api(
                path,
                "GET",
                query_params=query or [],
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=request_timeout,
            )
    except aiohttp.ConnectionTimeoutError:
        raise CheckFailed(
            "TIMEOUT", f"{path}: connecting (TCP and TLS handshake) timed out"
        ) from None
    except aiohttp.SocketTimeoutError:
        raise CheckFailed("TIMEOUT", f"{path}: the server stopped sending mid-answer") from None
    except TimeoutError:
        raise CheckFailed("TIMEOUT", f"{path} did not answer within {request_timeout:g}s") from None
    except ResponseTooLarge as error:
        raise CheckFailed("RESPONSE_TOO_LARGE", f"{path}: {error}", reachable=True) from None
    except aiohttp.ClientConnectorCertificateError as error:
        raise CheckFailed("TLS", f"certificate not trusted: {error.certificate_error}") from None
    except (aiohttp.ClientSSLError, ssl.SSLError) as error:
        raise CheckFailed("TLS", f"TLS handshake failed: {error}") from None
    except aiohttp.ClientConnectorDNSError as error:
        if isinstance(error.os_error, AddressRefused):
            raise CheckFailed(FORBIDDEN_ADDRESS, str(error.os_error)) from None
        raise CheckFailed("DNS", f"cannot resolve {error.host}") from None
    except aiohttp.ClientConnectorError as error:
        raise CheckFailed(
            "CONNECTION_REFUSED", f"cannot connect to {error.host}:{error.port}: {error.strerror}"
        ) from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError):
        raise CheckFailed(
            "CONNECTION_RESET", f"{path}: the connection was closed mid-answer"
        ) from None
    except aiohttp.ClientError as error:
        raise CheckFailed("API_ERROR", f"{path}: {type(error).__name__}") from None
    if 300 <= response.status < 400:
        # Following it could send the credential to another host; an API server never redirects.
        raise CheckFailed(
            "REDIRECT",
            f"{path} answered HTTP {response.status} (a redirect); fleetql does not follow "
            "redirects: check the kubeconfig's server URL",
            reachable=True,
        )
    return _Response(
        response.status, response.data, _retry_after(response.getheader("Retry-After"))
    )


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None when absent or
    unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
