"""Every call to a cluster is bounded: against a scripted TLS server that misbehaves on purpose.

The server is a raw asyncio listener with a certificate from a throwaway CA (the one the
kubeconfig trusts), so each test controls the bytes on the wire: a handshake that never finishes,
an answer that stalls, a redirect, a gzip bomb, a 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiValueError

from fleetql.config import PollerSettings, Settings
from fleetql.crypto import EncryptionKey, KubeconfigCipher
from fleetql.db.engine import create_engine, create_session_factory
from fleetql.poller.client import ClientPolicy, ClusterApiClient, build_api_client
from fleetql.poller.pool import ClientPool
from fleetql.poller.probe import CheckFailed, Observation, RetryAfter, probe
from fleetql.poller.worker import Poller
from fleetql.sim.tls import CertificateAuthority
from tests.conftest import GraphQLClient

TOKEN = "outbound-test-token-5ecret"
NODE = {
    "metadata": {"name": "node-1"},
    "status": {
        "capacity": {"cpu": "2", "memory": "1Gi"},
        "allocatable": {"cpu": "2", "memory": "1Gi"},
        "conditions": [{"type": "Ready", "status": "True"}],
    },
}
STATUS_429 = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "Too many requests, please try again later.",
    "reason": "TooManyRequests",
    "details": {"retryAfterSeconds": 1},
    "code": 429,
}


def http(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_answer(value: Any, status: int = 200, **headers: str) -> bytes:
    return http(status, orjson.dumps(value), {"Content-Type": "application/json", **headers})


def healthy(path: str) -> bytes:
    if path.startswith(("/readyz", "/healthz")):
        return http(200, b"ok")
    if path.startswith("/version"):
        return json_answer({"gitVersion": "v1.30.1"})
    if path.startswith("/api/v1/nodes"):
        return json_answer({"kind": "NodeList", "metadata": {}, "items": [NODE]})
    return http(404, b"404 page not found")


@dataclass(frozen=True)
class Held:
    """Send these bytes, then keep the connection open and silent."""

    data: bytes


@dataclass(frozen=True)
class Trickle:
    """Send these bytes one at a time, ``every`` seconds apart: never a long enough silence to
    trip a read timeout, and never done either."""

    data: bytes
    every: float


Answer = Callable[[str], Awaitable[bytes | Held | Trickle | None] | bytes | Held | Trickle | None]


@dataclass
class Request:
    path: str
    headers: dict[str, str]


@dataclass
class ScriptedServer:
    """One listener; ``answer(path)`` gives the raw bytes of each response (``Held``: send them
    and stay silent; None: send nothing). Without TLS it never completes a handshake."""

    tls: ssl.SSLContext | None
    answer: Answer = healthy
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _held: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        for writer in self._held:
            writer.transport.abort()
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._held.append(writer)
        if self.tls is None:
            return  # accept TCP, never answer the ClientHello
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        path = request_line.split(" ")[1]
        self.requests.append(Request(path, headers))
        answer = self.answer(path)
        if not isinstance(answer, bytes | Held | Trickle | None):
            answer = await answer
        if answer is None:
            return
        if isinstance(answer, Trickle):
            try:
                for index in range(len(answer.data)):
                    writer.write(answer.data[index : index + 1])
                    await writer.drain()
                    await asyncio.sleep(answer.every)
            except (ConnectionError, ssl.SSLError):
                pass
            return
        if isinstance(answer, Held):
            writer.write(answer.data)
            await writer.drain()
            return
        writer.write(answer)
        try:
            await writer.drain()
            writer.close()
        except (ConnectionError, ssl.SSLError):
            pass


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return CertificateAuthority("fleetql-outbound-test-ca")


@pytest.fixture(scope="module")
def server_tls(authority: CertificateAuthority) -> ssl.SSLContext:
    pair = authority.issue_server()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as folder:
        cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        context.load_cert_chain(cert, key)
    return context


@pytest.fixture
async def scripted(server_tls: ssl.SSLContext) -> AsyncIterator[ScriptedServer]:
    async with ScriptedServer(server_tls) as server:
        yield server


def kubeconfig(server_url: str, authority: CertificateAuthority) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": server_url,
                    "certificate-authority-data": base64.b64encode(authority.ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }


async def check(
    url: str,
    authority: CertificateAuthority,
    policy: ClientPolicy | None = None,
    *,
    request_timeout: float = 60.0,
    retry_after: RetryAfter | None = None,
) -> Observation:
    api = build_api_client(kubeconfig(url, authority), policy)
    try:
        return await probe(api, request_timeout=request_timeout, retry_after=retry_after)
    finally:
        await api.close()


async def failure_of(*args: Any, **kwargs: Any) -> tuple[CheckFailed, float]:
    started = time.monotonic()
    with pytest.raises(CheckFailed) as caught:
        await check(*args, **kwargs)
    return caught.value, time.monotonic() - started


async def test_the_scripted_server_answers_like_a_healthy_cluster(
    scripted: ScriptedServer, authority: CertificateAuthority
) -> None:
    observation = await check(scripted.url, authority)

    assert observation.ready and observation.kubernetes_version == "v1.30.1"
    assert observation.nodes is not None and observation.nodes.ready_node_count == 1
    assert scripted.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


async def test_a_handshake_that_never_finishes_costs_about_the_connect_timeout(
    authority: CertificateAuthority,
) -> None:
    async with ScriptedServer(tls=None) as silent:
        # The whole request may take a minute; the default 3 s connect bound ends it first.
        error, elapsed = await failure_of(silent.url, authority, request_timeout=60.0)

    assert error.error.code == "TIMEOUT"
    assert "connecting (TCP and TLS handshake) timed out" in error.error.message
    assert silent.connections >= 1
    assert elapsed < 20


async def test_a_server_that_stalls_mid_answer_is_cut_off_by_the_read_timeout(
    scripted: ScriptedServer, authority: CertificateAuthority
) -> None:
    def stall(path: str) -> bytes | Held:
        if path.startswith("/version"):
            return Held(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")  # 99 to come
        return healthy(path)

    scripted.answer = stall
    policy = ClientPolicy(read_timeout=1.0)

    error, elapsed = await failure_of(scripted.url, authority, policy, request_timeout=60.0)

    assert error.error.code == "TIMEOUT"
    assert "/version: the server stopped sending mid-answer" in error.error.message
    assert elapsed < 20


async def test_a_body_that_trickles_is_cut_off_by_the_whole_request_bound(
    scripted: ScriptedServer, authority: CertificateAuthority
) -> None:
    body = b"{" + b" " * 200 + b"}"
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()

    def trickle(path: str) -> bytes | Trickle:
        if path.startswith("/version"):
            return Trickle(head + body, every=0.2)  # a minute of bytes, none 1 s apart
        return healthy(path)

    scripted.answer = trickle
    policy = ClientPolicy(read_timeout=1.0)

    error, elapsed = await failure_of(scripted.url, authority, policy, request_timeout=3.0)

    assert error.error.code == "TIMEOUT"
    assert elapsed < 20


async def test_a_server_that_sends_nothing_after_the_headers_hits_the_read_timeout(
    server_tls: ssl.SSLContext, authority: CertificateAuthority
) -> None:
    async def hold(path: str) -> bytes | None:
        return None  # the request is read, no byte of an answer follows

    async with ScriptedServer(server_tls, answer=hold) as server:
        error, elapsed = await failure_of(
            server.url, authority, ClientPolicy(read_timeout=1.0), request_timeout=60.0
        )

    assert error.error.code == "TIMEOUT"
    assert "stopped sending" in error.error.message
    assert elapsed < 20


async def test_a_redirect_is_an_error_and_the_credential_goes_nowhere_else(
    scripted: ScriptedServer, server_tls: ssl.SSLContext, authority: CertificateAuthority
) -> None:
    async with ScriptedServer(server_tls) as elsewhere:
        scripted.answer = lambda path: http(302, headers={"Location": elsewhere.url + path})

        error, _ = await failure_of(scripted.url, authority)

        assert error.error.code == "REDIRECT"
        assert "HTTP 302" in error.error.message
        assert error.reachable
        assert elsewhere.requests == [] and elsewhere.connections == 0


async def test_a_gzip_bomb_is_refused_once_it_passes_the_size_limit(
    scripted: ScriptedServer, authority: CertificateAuthority
) -> None:
    bomb = gzip.compress(b'{"gitVersion": "' + b" " * (64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 1024 * 1024

    def answer(path: str) -> bytes:
        if path.startswith("/version"):
            return http(200, bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
        return healthy(path)

    scripted.answer = answer

    error, _ = await failure_of(scripted.url, authority)

    assert error.error.code == "RESPONSE_TOO_LARGE"
    assert "/version" in error.error.message and "16 MiB" in error.error.message


async def test_an_answer_declared_larger_than_the_limit_is_refused_before_reading(
    scripted: ScriptedServer, authority: CertificateAuthority
) -> None:
    def answer(path: str) -> bytes:
        if path.startswith("/version"):
            # Declares 2 MiB and sends none of it: only the Content-Length check can end this.
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2097152\r\n\r\n"
        return healthy(path)

    scripted.answer = answer
    policy = ClientPolicy(max_response_bytes=1024 * 1024, read_timeout=30.0)

    error, elapsed = await failure_of(scripted.url, authority, policy)

    assert error.error.code == "RESPONSE_TOO_LARGE"
    assert "1 MiB" in error.error.message
    assert elapsed < 20


async def test_429_with_retry_after_is_waited_for_then_retried(
    scripted: ScriptedServer, authority: CertificateAuthority
) -> None:
    throttled = {"/readyz": 1, "/version": 1}

    def answer(path: str) -> bytes:
        for prefix, left in throttled.items():
            if path.startswith(prefix) and left:
                throttled[prefix] -= 1
                return json_answer(STATUS_429, 429, **{"Retry-After": "1"})
        return healthy(path)

    scripted.answer = answer
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    observation = await check(scripted.url, authority, retry_after=RetryAfter(sleep=sleep))

    assert observation.ready and observation.kubernetes_version == "v1.30.1"
    assert len(waits) == 2 and all(1.0 <= wait <= 1.2 for wait in waits)
    paths = [request.path for request in scripted.requests]
    assert paths[:4] == ["/readyz", "/readyz", "/version", "/version"]


async def test_503_with_an_http_date_retry_after_is_honoured_too(
    scripted: ScriptedServer, authority: CertificateAuthority
) -> None:
    answers = iter([http(503, b"shutting down", {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})])
    scripted.answer = lambda path: next(answers, None) or healthy(path)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    observation = await check(scripted.url, authority, retry_after=RetryAfter(sleep=sleep))

    assert observation.ready
    assert waits == [0.0]  # a date in the past: retry at once


async def test_retry_after_beyond_the_budget_fails_as_throttled(
    scripted: ScriptedServer, authority: CertificateAuthority
) -> None:
    scripted.answer = lambda path: json_answer(STATUS_429, 429, **{"Retry-After": "120"})

    error, elapsed = await failure_of(scripted.url, authority, retry_after=RetryAfter(max_wait=10))

    assert error.error.code == "THROTTLED"
    assert error.keeps_status
    assert "Retry-After 120s" in error.error.message and "Too many requests" in error.error.message
    assert elapsed < 20  # not waited for


async def test_proxy_variables_and_netrc_from_the_environment_are_ignored(
    scripted: ScriptedServer,
    authority: CertificateAuthority,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    with socket.socket() as canary:
        canary.bind(("127.0.0.1", 0))
        canary.listen()
        canary.setblocking(False)
        proxy = f"http://127.0.0.1:{canary.getsockname()[1]}"
        for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-5ecret\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))

        observation = await check(scripted.url, authority)

        assert observation.ready
        with pytest.raises(BlockingIOError):
            canary.accept()  # nobody connected to the "proxy"
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in scripted.requests)


async def test_the_client_only_reads(
    scripted: ScriptedServer, authority: CertificateAuthority
) -> None:
    api = build_api_client(kubeconfig(scripted.url, authority))
    try:
        with pytest.raises(ApiValueError):
            await api.call_api("/api/v1/namespaces", "POST", body={"kind": "Namespace"})
    finally:
        await api.close()
    assert scripted.requests == []


async def test_cluster_api_client_sets_what_api_client_sets() -> None:
    # ClusterApiClient does ApiClient.__init__'s work itself (to avoid its session); an upgrade
    # of kubernetes_asyncio that sets more must not go unnoticed.
    reference = ApiClient(Configuration())
    try:
        expected = set(vars(reference))
    finally:
        await reference.close()
    ours = build_api_client(kubeconfig("https://127.0.0.1:6443", CertificateAuthority()))
    try:
        assert isinstance(ours, ClusterApiClient)
        assert set(vars(ours)) == expected
    finally:
        await ours.close()


# Through the poller: a throttled check does not change the status.

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { code message } }
}
"""
STATE = """
query($id: ID!) {
  cluster(id: $id) { status pendingStatus lastError { code message } consecutiveFailures }
}
"""


async def test_a_throttled_check_records_the_error_but_keeps_the_status(
    api: GraphQLClient,
    settings: Settings,
    database_url: str,
    scripted: ScriptedServer,
    authority: CertificateAuthority,
) -> None:
    import yaml

    document = yaml.safe_dump(kubeconfig(scripted.url, authority))
    data = await api.data(IMPORT, {"input": {"name": "throttled", "kubeconfig": document}})
    assert data["importCluster"]["userErrors"] == []
    cluster_id = data["importCluster"]["cluster"]["id"]
    engine = create_engine(database_url, settings.database)
    assert settings.encryption.key is not None
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    poller = Poller(
        sessions=create_session_factory(engine),
        cipher=KubeconfigCipher(EncryptionKey.from_base64(settings.encryption.key)),
        settings=PollerSettings(
            client_timeout="10s",  # type: ignore[arg-type]
            retry_attempts=0,
            retry_delay="10ms",  # type: ignore[arg-type]
        ),
        pool=ClientPool(),
        client_policy=ClientPolicy(max_retry_after=5.0),
        sleep=sleep,
    )
    try:
        await poller.sweep()
        state = (await api.data(STATE, {"id": cluster_id}))["cluster"]
        assert (state["status"], state["lastError"]) == ("HEALTHY", None)

        scripted.answer = lambda path: json_answer(STATUS_429, 429, **{"Retry-After": "2"})
        await _make_due(database_url)
        await poller.sweep()
        state = (await api.data(STATE, {"id": cluster_id}))["cluster"]
        assert state["status"] == "HEALTHY" and state["pendingStatus"] is None
        assert state["lastError"]["code"] == "THROTTLED"
        assert state["consecutiveFailures"] == 1
        # Honoured twice (2 s + jitter each, within the 5 s budget), then given up.
        assert len(waits) == 2
    finally:
        await poller.pool.aclose()
        await engine.dispose()


async def _make_due(database_url: str) -> None:
    import asyncpg

    from tests.conftest import asyncpg_dsn

    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute("UPDATE cluster_states SET next_check_at = now()")
    finally:
        await connection.close()


@pytest.mark.parametrize(("server_name", "works"), [("localhost", True), ("other.example", False)])
async def test_tls_server_name_is_the_name_the_certificate_is_checked_against(
    scripted: ScriptedServer, authority: CertificateAuthority, server_name: str, works: bool
) -> None:
    # The scripted server's certificate names 127.0.0.1 and localhost.
    document = kubeconfig(scripted.url, authority)
    document["clusters"][0]["cluster"]["tls-server-name"] = server_name
    api = build_api_client(document)
    try:
        if works:
            assert (await probe(api, request_timeout=30)).ready
        else:
            with pytest.raises(CheckFailed) as caught:
                await probe(api, request_timeout=30)
            assert caught.value.error.code == "TLS"
    finally:
        await api.close()


def test_the_bounds_come_from_the_cluster_manager_settings() -> None:
    from fleetql.config import load_settings

    settings = load_settings(
        environ={
            "FLEETQL_CLUSTER_MANAGER__CONNECT_TIMEOUT": "1500ms",
            "FLEETQL_CLUSTER_MANAGER__READ_TIMEOUT": "7s",
            "FLEETQL_CLUSTER_MANAGER__MAX_RESPONSE_BYTES": "1048576",
            "FLEETQL_CLUSTER_MANAGER__MAX_RETRY_AFTER": "4s",
            "FLEETQL_CLUSTER_MANAGER__ALLOW_INSECURE_TLS": "true",
        }
    )

    assert ClientPolicy.from_settings(settings) == ClientPolicy(
        allow_insecure_tls=True,
        connect_timeout=1.5,
        read_timeout=7.0,
        max_response_bytes=1024 * 1024,
        max_retry_after=4.0,
    )
    assert ClientPolicy.from_settings(load_settings(environ={})) == ClientPolicy()


async def test_throttled_metrics_only_leave_usage_empty(
    scripted: ScriptedServer, authority: CertificateAuthority
) -> None:
    def answer(path: str) -> bytes:
        if path.startswith("/apis/metrics.k8s.io"):
            return json_answer(STATUS_429, 429, **{"Retry-After": "120"})
        return healthy(path)

    scripted.answer = answer

    observation = await check(scripted.url, authority)

    assert observation.ready and observation.nodes is not None
    assert observation.usage is None
