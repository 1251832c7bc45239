"""Server-side request forgery: a kubeconfig must not turn fleetql against its own network.

The policy is tested in every spelling of the addresses it refuses; the import through the real
API; and the connections against a real TLS server (tests/test_outbound_limits.py's scripted
server), with a process-wide audit hook recording every ``socket.connect``, so "never reaches
it" is observed rather than assumed. Names that must resolve to a given address (a metadata
alias, DNS rebinding) use an injected lookup instead of touching /etc/hosts; ``localhost`` goes
through the system's resolver.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fleetql.app import create_app
from fleetql.config import ConfigError, PollerSettings, Settings, load_settings
from fleetql.crypto import EncryptionKey, KubeconfigCipher
from fleetql.db import clusters as db
from fleetql.db.engine import create_engine, create_session_factory
from fleetql.netpolicy import (
    AddressPolicy,
    AddressRefused,
    NotCanonicalAddress,
    allowed_addresses,
    check_server,
    parse_address,
    parse_network,
)
from fleetql.poller.client import ClientPolicy, build_api_client
from fleetql.poller.pool import ClientPool
from fleetql.poller.probe import ERROR_CODES, CheckFailed, Observation, probe
from fleetql.poller.worker import Poller
from fleetql.sim.tls import CertificateAuthority
from tests.conftest import GraphQLClient, ThreadedServer
from tests.test_outbound_limits import ScriptedServer, http, kubeconfig

METADATA = "169.254.169.254"
# 169.254.169.254 and the metadata services' other addresses and names, as a kubeconfig could
# spell them.
METADATA_SPELLINGS = [
    "169.254.169.254",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[0:0:0:0:0:ffff:a9fe:a9fe]",
    "[64:ff9b::a9fe:a9fe]",  # NAT64
    "[2002:a9fe:a9fe::1]",  # 6to4
    "2852039166",  # decimal
    "0xa9fea9fe",  # hex
    "0xa9.0xfe.0xa9.0xfe",
    "0251.0376.0251.0376",  # octal
    "169.254.43518",
    "169.254.169.254.",
    "[fe80::1]",
    "[fe80::a9fe:a9fe%25eth0]",
    "[fd00:ec2::254]",
    "100.100.100.200",
    "metadata.google.internal",
    "METADATA.GOOGLE.INTERNAL.",
    "metadata",
    "instance-data",
    "0.0.0.0",
    "0",
    "[::]",
    "224.0.0.1",
    "255.255.255.255",
]
LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.0.0.2",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "0x7f.1",
    "0x7f000001",
    "2130706433",
    "017700000001",
    "0177.0.0.1",
    "127.1",
]


# Every socket.connect of the process, recorded while a test watches (audit hooks cannot be
# removed, so it is installed once and switched on and off).


@dataclass
class _ConnectRecorder:
    active: bool = False
    seen: list[str] = field(default_factory=list)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if self.active and event == "socket.connect" and isinstance(args[1], tuple):
            self.seen.append(str(args[1][0]))


_CONNECTS = _ConnectRecorder()
sys.addaudithook(_CONNECTS)


@contextmanager
def connections() -> Iterator[list[str]]:
    """The addresses connected to meanwhile (of every thread: filter for the ones you mean)."""
    _CONNECTS.seen = []
    _CONNECTS.active = True
    try:
        yield _CONNECTS.seen
    finally:
        _CONNECTS.active = False


class FakeDns:
    """A lookup answering from a map; each name's answers are used in turn, the last repeats."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str) -> Sequence[str]:
        self.asked.append(host)
        turns = self.answers.get(host.rstrip("."))
        if not turns:
            raise OSError(f"no such host {host}")
        return turns.pop(0) if len(turns) > 1 else turns[0]


SHARED = AddressPolicy(allow_loopback=False, server_host="0.0.0.0")
# Everything that can be allowed, allowed.
PERMISSIVE = AddressPolicy(
    allowed_networks=(parse_network("0.0.0.0/0"), parse_network("::/0")),
)


# The policy, in every spelling.


@pytest.mark.parametrize("host", METADATA_SPELLINGS)
async def test_metadata_and_link_local_addresses_are_refused_in_every_spelling(host: str) -> None:
    dns = FakeDns({})

    for policy in (PERMISSIVE, AddressPolicy(), SHARED):
        with pytest.raises(AddressRefused) as caught:
            await check_server(f"https://{host}:6443", policy, lookup=dns)
        assert "no setting allows it" in str(caught.value) or "metadata" in str(caught.value)
        with pytest.raises(AddressRefused):
            await allowed_addresses(host.strip("[]").replace("%25", "%"), policy, lookup=dns)
    assert dns.asked == []  # refused before any lookup


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_loopback_in_every_spelling_is_loopback(host: str) -> None:
    address = parse_address(host)

    assert address is not None
    refusal = SHARED.refusal(address)
    assert refusal is not None and "loopback" in refusal
    assert "cluster_manager.allowed_networks" in refusal and "server.host is 0.0.0.0" in refusal
    assert AddressPolicy().refusal(address) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("0x7f.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("0xa.0.0.0x1", "10.0.0.1"),
        ("[::ffff:10.0.0.1]", "::ffff:a00:1"),
        ("k8s.example.com", None),
        ("0xdeadbeef.example", None),
    ],
)
def test_numeric_spellings_are_read_as_the_system_resolver_reads_them(
    host: str, address: str | None
) -> None:
    parsed = parse_address(host)
    assert (str(parsed) if parsed else None) == address


@pytest.mark.parametrize("host", ["1.2.3.4.5", "08.0.0.1", "256.1.1.1", "1.0x", "4294967296"])
def test_a_host_that_looks_numeric_but_is_no_address_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="looks like a numeric address"):
        parse_address(host)


def test_private_ranges_are_allowed_by_default_and_can_be_denied() -> None:
    private = ["10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "fd12::1", "8.8.8.8"]
    for text in private:
        address = parse_address(text)
        assert address is not None
        assert SHARED.refusal(address) is None, text

    denied = AddressPolicy(
        denied_networks=(parse_network("10.0.0.0/8"),),
        allowed_networks=(parse_network("10.1.0.0/16"),),
    )
    refusal = denied.refusal(parse_address("10.2.0.1"))  # type: ignore[arg-type]
    assert refusal is not None and "cluster_manager.denied_networks (10.0.0.0/8)" in refusal
    # The longest match decides: 10.1.0.0/16 is allowed inside the denied 10.0.0.0/8.
    assert denied.refusal(parse_address("10.1.0.1")) is None  # type: ignore[arg-type]
    # The mapped spelling of a denied address is denied too.
    assert denied.refusal(parse_address("::ffff:10.2.0.1")) is not None  # type: ignore[arg-type]


def test_loopback_is_allowed_only_while_fleetql_listens_on_loopback_alone() -> None:
    loopback = parse_address("127.0.0.1")
    assert loopback is not None
    cases = [("127.0.0.1", True), ("localhost", True), ("::1", True)]
    cases += [("0.0.0.0", False), ("::", False), ("10.0.0.5", False)]
    for host, allowed in cases:
        settings = load_settings(
            environ={"FLEETQL_SERVER__HOST": host, "FLEETQL_AUTH__ALLOW_UNAUTHENTICATED": "true"}
        )
        policy = AddressPolicy.from_settings(settings)
        assert (policy.refusal(loopback) is None) == allowed, host
        assert ClientPolicy.from_settings(settings).addresses == policy

    opened = load_settings(
        environ={
            "FLEETQL_SERVER__HOST": "0.0.0.0",
            "FLEETQL_AUTH__ALLOW_UNAUTHENTICATED": "true",
            "FLEETQL_CLUSTER_MANAGER__ALLOWED_NETWORKS": "127.0.0.0/8, ::1",
        }
    )
    assert AddressPolicy.from_settings(opened).refusal(loopback) is None
    closed = load_settings(environ={"FLEETQL_CLUSTER_MANAGER__DENIED_NETWORKS": "127.0.0.0/8"})
    assert AddressPolicy.from_settings(closed).refusal(loopback) is not None


def test_the_network_settings_are_checked_and_name_the_key() -> None:
    settings = load_settings(
        environ={
            "FLEETQL_CLUSTER_MANAGER__ALLOWED_NETWORKS": "10.0.0.5, ::ffff:192.168.0.0/112",
            "FLEETQL_CLUSTER_MANAGER__DENIED_NETWORKS": "[fd00::1]",
        }
    )
    assert settings.cluster_manager.allowed_networks == ("10.0.0.5/32", "192.168.0.0/16")
    assert settings.cluster_manager.denied_networks == ("fd00::1/128",)

    for key, value, message in [
        ("ALLOWED_NETWORKS", "10.0.0.1/8", "host bits set"),
        ("DENIED_NETWORKS", "nonsense", "not a network"),
        ("ALLOWED_NETWORKS", "169.254.169.254", "no setting allows it"),
        ("ALLOWED_NETWORKS", "fe80::/64", "no setting allows it"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_settings(environ={f"FLEETQL_CLUSTER_MANAGER__{key}": value})
        assert f"cluster_manager.{key.lower()}" in str(caught.value)
        assert message in str(caught.value)


def test_the_shipped_config_file_sets_the_network_keys() -> None:
    text = (Path(__file__).parent.parent / "configs" / "config.yaml").read_text()
    settings = load_settings(Path(__file__).parent.parent / "configs" / "config.yaml", environ={})

    assert "allowed_networks" in text and "denied_networks" in text
    assert settings.cluster_manager.allowed_networks == ()
    assert settings.cluster_manager.denied_networks == ()


async def test_a_name_resolving_to_the_metadata_address_is_refused_at_import() -> None:
    dns = FakeDns({"innocent.example": [["10.0.0.7", METADATA]]})

    with pytest.raises(AddressRefused) as caught:
        await check_server("https://innocent.example:6443", PERMISSIVE, lookup=dns)

    assert f"innocent.example resolves to {METADATA}" in str(caught.value)
    assert dns.asked == ["innocent.example"]


async def test_a_name_that_does_not_resolve_now_is_left_to_the_connection_check() -> None:
    dns = FakeDns({})
    await check_server("https://not-yet.example:6443", SHARED, lookup=dns)

    async def hang(host: str) -> Sequence[str]:
        await asyncio.sleep(3600)
        return []

    await check_server("https://slow.example", SHARED, lookup=hang, lookup_timeout=0.05)
    # The real resolver, on a name that can never resolve.
    await check_server("https://no-such-host.invalid:6443", SHARED)


async def test_an_allowed_address_in_a_legacy_spelling_must_be_written_plainly() -> None:
    with pytest.raises(NotCanonicalAddress, match=r"write it as 127\.0\.0\.1"):
        await check_server("https://2130706433:6443", AddressPolicy())
    with pytest.raises(NotCanonicalAddress, match=r"write it as 10\.0\.0\.1"):
        await check_server("https://10.1", AddressPolicy())
    await check_server("https://[::ffff:10.0.0.1]:6443", AddressPolicy())


async def test_localhost_through_the_system_resolver_is_loopback() -> None:
    with pytest.raises(AddressRefused) as caught:
        await check_server("https://localhost:6443", SHARED)
    assert "localhost resolves to" in str(caught.value)
    assert "cluster_manager.allowed_networks" in str(caught.value)
    await check_server("https://localhost:6443", AddressPolicy())


# Connections: the scripted TLS server of test_outbound_limits, with a certificate for a name.

NAME = "cluster.rebind.test"


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return CertificateAuthority("fleetql-ssrf-test-ca")


def _server_tls(authority: CertificateAuthority, *hosts: str) -> ssl.SSLContext:
    pair = authority.issue_server(hosts)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as folder:
        cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        context.load_cert_chain(cert, key)
    return context


@pytest.fixture
async def named(authority: CertificateAuthority) -> AsyncIterator[ScriptedServer]:
    """A healthy cluster on 127.0.0.1 whose certificate names only NAME (not the address)."""
    async with ScriptedServer(_server_tls(authority, NAME)) as server:
        yield server


@dataclass
class Canary:
    """A listener on 127.0.0.2 (the same port as the cluster): where a forbidden address
    would lead. It counts connections and never answers."""

    port: int
    connections: int = 0
    _server: asyncio.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.transport.abort()


@pytest.fixture
async def canary(named: ScriptedServer) -> AsyncIterator[Canary]:
    found = Canary(named.port)
    found._server = await asyncio.start_server(found._accept, "127.0.0.2", named.port)
    try:
        yield found
    finally:
        found._server.close()
        await found._server.wait_closed()


# 127.0.0.2 stands for the forbidden address (a real 169.254.169.254 cannot be listened on).
NO_CANARY = AddressPolicy(denied_networks=(parse_network("127.0.0.2/32"),))


async def _check(
    server: str, authority: CertificateAuthority, policy: ClientPolicy, **cluster: Any
) -> Observation:
    document = kubeconfig(server, authority)
    document["clusters"][0]["cluster"].update(cluster)
    api = build_api_client(document, policy)
    try:
        return await probe(api, request_timeout=30)
    finally:
        await api.close()


async def _failure(
    server: str, authority: CertificateAuthority, policy: ClientPolicy, **cluster: Any
) -> CheckFailed:
    with pytest.raises(CheckFailed) as caught:
        await _check(server, authority, policy, **cluster)
    return caught.value


async def test_ssrf_to_169_254_169_254_is_refused_without_a_connection(
    authority: CertificateAuthority,
) -> None:
    with connections() as seen:
        for host in ("169.254.169.254", "[::ffff:169.254.169.254]", "0xa9fea9fe", "2852039166"):
            failure = await _failure(
                f"https://{host}:6443", authority, ClientPolicy(addresses=PERMISSIVE)
            )
            assert failure.error.code == "FORBIDDEN_ADDRESS", host
            assert "no setting allows it" in failure.error.message
            assert not failure.reachable
    assert not [address for address in seen if "169.254" in address or "a9fe" in address]


async def test_ssrf_to_a_name_resolving_to_169_254_169_254_never_connects_there(
    named: ScriptedServer, authority: CertificateAuthority
) -> None:
    dns = FakeDns({"metadata-alias.example": [[METADATA]]})
    policy = ClientPolicy(addresses=PERMISSIVE, lookup=dns)

    with connections() as seen:
        failure = await _failure(f"https://metadata-alias.example:{named.port}", authority, policy)
        refused_by_name = await _failure(
            f"https://metadata.google.internal:{named.port}", authority, policy
        )

    assert failure.error.code == "FORBIDDEN_ADDRESS"
    assert f"metadata-alias.example resolves to {METADATA}" in failure.error.message
    assert refused_by_name.error.code == "FORBIDDEN_ADDRESS"
    assert "metadata.google.internal" in refused_by_name.error.message
    assert dns.asked == ["metadata-alias.example"]  # the metadata name is never even looked up
    assert METADATA not in seen
    assert named.connections == 0


async def test_ssrf_to_loopback_when_fleetql_does_not_listen_on_loopback_alone(
    named: ScriptedServer, authority: CertificateAuthority
) -> None:
    shared = ClientPolicy(addresses=SHARED)

    literal = await _failure(named.url, authority, shared)
    # A name, through the system's resolver.
    by_name = await _failure(f"https://localhost:{named.port}", authority, shared)
    hex_spelling = await _failure(f"https://0x7f.1:{named.port}", authority, shared)

    for failure in (literal, by_name, hex_spelling):
        assert failure.error.code == "FORBIDDEN_ADDRESS"
        assert "cluster_manager.allowed_networks" in failure.error.message
    assert named.connections == 0

    # The setting the message names lets it through.
    allowed = AddressPolicy(allow_loopback=False, allowed_networks=(parse_network("127.0.0.0/8"),))
    dns = FakeDns({NAME: [["127.0.0.1"]]})
    observation = await _check(
        f"https://{NAME}:{named.port}", authority, ClientPolicy(addresses=allowed, lookup=dns)
    )
    assert observation.ready and named.connections > 0


async def test_the_connection_goes_to_the_checked_address_and_tls_checks_the_name(
    named: ScriptedServer, canary: Canary, authority: CertificateAuthority
) -> None:
    # The forbidden address comes first; the connection must still go to the allowed one.
    dns = FakeDns({NAME: [["127.0.0.2", "127.0.0.1"]]})
    policy = ClientPolicy(addresses=NO_CANARY, lookup=dns)

    observation = await _check(f"https://{NAME}:{named.port}", authority, policy)

    assert observation.ready and observation.kubernetes_version == "v1.30.1"
    assert canary.connections == 0
    # Every answer closes its connection, so every request connected (and resolved) anew.
    assert len(named.requests) >= 3 and len(dns.asked) >= len(named.requests)
    # The certificate names only NAME: the handshake verified the name, not the address.
    assert named.requests[0].headers["host"].startswith(NAME)


async def test_the_canary_does_see_a_connection_the_policy_allows(
    named: ScriptedServer, canary: Canary, authority: CertificateAuthority
) -> None:
    # The control for the test above: without the deny, aiohttp tries 127.0.0.2 first.
    dns = FakeDns({NAME: [["127.0.0.2", "127.0.0.1"]]})

    observation = await _check(
        f"https://{NAME}:{named.port}",
        authority,
        ClientPolicy(addresses=AddressPolicy(), lookup=dns),
    )

    assert observation.ready
    assert canary.connections > 0


async def test_dns_rebinding_to_a_forbidden_address_never_reaches_it(
    named: ScriptedServer, canary: Canary, authority: CertificateAuthority
) -> None:
    # Checked and allowed once; then the name is rebound to the forbidden address.
    dns = FakeDns({NAME: [["127.0.0.1"], ["127.0.0.2"]]})
    policy = ClientPolicy(addresses=NO_CANARY, lookup=dns)

    failure = await _failure(f"https://{NAME}:{named.port}", authority, policy)

    assert failure.error.code == "FORBIDDEN_ADDRESS"
    assert f"{NAME} resolves to 127.0.0.2" in failure.error.message
    assert "cluster_manager.denied_networks (127.0.0.2/32)" in failure.error.message
    assert [request.path for request in named.requests] == ["/readyz"]
    assert dns.asked == [NAME, NAME]  # resolved again for the second connection
    assert canary.connections == 0


async def test_tls_still_fails_for_a_name_the_certificate_does_not_hold(
    named: ScriptedServer, authority: CertificateAuthority
) -> None:
    dns = FakeDns({"other.rebind.test": [["127.0.0.1"]]})

    failure = await _failure(
        f"https://other.rebind.test:{named.port}", authority, ClientPolicy(lookup=dns)
    )

    assert failure.error.code == "TLS"


async def test_ssrf_through_a_redirecting_server_is_not_followed(
    named: ScriptedServer, canary: Canary, authority: CertificateAuthority
) -> None:
    dns = FakeDns({NAME: [["127.0.0.1"]]})
    for location in (
        f"http://{METADATA}/latest/meta-data/iam/security-credentials/",
        "http://metadata.google.internal/computeMetadata/v1/",
        f"https://127.0.0.2:{named.port}/readyz",
    ):
        named.requests.clear()
        named.answer = lambda path, location=location: http(302, headers={"Location": location})

        with connections() as seen:
            failure = await _failure(
                f"https://{NAME}:{named.port}", authority, ClientPolicy(lookup=dns)
            )

        assert failure.error.code == "REDIRECT", location
        assert failure.reachable
        assert [request.path for request in named.requests] == ["/readyz"]
        assert METADATA not in seen and "127.0.0.2" not in seen
    assert dns.asked == [NAME] * 3
    assert canary.connections == 0


def test_forbidden_address_is_a_check_error_code() -> None:
    assert "FORBIDDEN_ADDRESS" in ERROR_CODES


# Through the API: the import is refused with a code and a message naming the setting.

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { field code message } }
}
"""
UPDATE = """
mutation($id: ID!, $input: UpdateClusterInput!) {
  updateCluster(id: $id, input: $input) { cluster { id } userErrors { field code message } }
}
"""
STATE = """
query($id: ID!) {
  cluster(id: $id) { status apiServerUrl lastError { code message } }
}
"""


def _kubeconfig_text(server: str, authority: CertificateAuthority) -> str:
    return yaml.safe_dump(kubeconfig(server, authority))


async def _import_errors(
    client: GraphQLClient, name: str, server: str, authority: CertificateAuthority
) -> list[dict[str, Any]]:
    data = await client.data(
        IMPORT, {"input": {"name": name, "kubeconfig": _kubeconfig_text(server, authority)}}
    )
    errors: list[dict[str, Any]] = data["importCluster"]["userErrors"]
    if not errors:
        assert data["importCluster"]["cluster"]["id"]
    return errors


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "[::ffff:169.254.169.254]",
        "0xa9fea9fe",
        "2852039166",
        "[fd00:ec2::254]",
        "metadata.google.internal",
        "[fe80::1]",
        "0.0.0.0",
    ],
)
async def test_importing_a_metadata_or_link_local_server_is_refused(
    api: GraphQLClient, authority: CertificateAuthority, host: str
) -> None:
    errors = await _import_errors(api, "meta", f"https://{host}:6443", authority)

    assert [(error["field"], error["code"]) for error in errors] == [
        ("kubeconfig", "FORBIDDEN_ADDRESS")
    ]
    assert "server" in errors[0]["message"]
    listing = await api.data("{ clusters { total } }")
    assert listing["clusters"]["total"] == 0


async def test_an_allowed_address_in_a_legacy_spelling_is_refused_as_invalid_server(
    api: GraphQLClient, authority: CertificateAuthority
) -> None:
    errors = await _import_errors(api, "hex", "https://2130706433:6443", authority)

    assert [error["code"] for error in errors] == ["INVALID_SERVER"]
    assert "write it as 127.0.0.1" in errors[0]["message"]


def _shared_settings(settings: Settings, **manager: Any) -> Settings:
    """The test settings, as a server listening on every interface would have them."""
    return settings.model_copy(
        update={
            "server": settings.server.model_copy(update={"host": "0.0.0.0"}),
            "auth": settings.auth.model_copy(update={"allow_unauthenticated": True}),
            "cluster_manager": settings.cluster_manager.model_copy(update=manager),
        }
    )


@pytest.fixture(scope="module")
def shared_server(settings: Settings) -> Iterator[ThreadedServer]:
    shared = _shared_settings(settings)
    with ThreadedServer(create_app(shared), shared) as running:
        yield running


@pytest.fixture(scope="module")
def opened_server(settings: Settings) -> Iterator[ThreadedServer]:
    opened = _shared_settings(settings, allowed_networks=("127.0.0.0/8",))
    with ThreadedServer(create_app(opened), opened) as running:
        yield running


async def test_importing_a_loopback_server_is_refused_when_fleetql_listens_beyond_loopback(
    api: GraphQLClient,
    shared_server: ThreadedServer,
    opened_server: ThreadedServer,
    authority: CertificateAuthority,
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        shared = GraphQLClient(client, shared_server.url)
        for host in ("127.0.0.1", "localhost", "0x7f.1", "[::ffff:127.0.0.1]", "017700000001"):
            errors = await _import_errors(shared, "local", f"https://{host}:6443", authority)
            assert [error["code"] for error in errors] == ["FORBIDDEN_ADDRESS"], host
            message = errors[0]["message"]
            assert "cluster_manager.allowed_networks" in message and "server.host" in message

        opened = GraphQLClient(client, opened_server.url)
        assert await _import_errors(opened, "local", "https://127.0.0.1:6443", authority) == []
        # The metadata address stays refused however the networks are set.
        errors = await _import_errors(opened, "meta", f"https://{METADATA}:6443", authority)
        assert [error["code"] for error in errors] == ["FORBIDDEN_ADDRESS"]

    # The default test server listens on 127.0.0.1 only: a local cluster just works there.
    assert await _import_errors(api, "kind", "https://127.0.0.1:6443", authority) == []


async def test_updating_a_cluster_to_a_forbidden_server_is_refused_and_changes_nothing(
    api: GraphQLClient, authority: CertificateAuthority
) -> None:
    data = await api.data(
        IMPORT,
        {"input": {"name": "c", "kubeconfig": _kubeconfig_text("https://10.0.0.1", authority)}},
    )
    cluster_id = data["importCluster"]["cluster"]["id"]

    changed = await api.data(
        UPDATE,
        {
            "id": cluster_id,
            "input": {"kubeconfig": _kubeconfig_text(f"https://{METADATA}", authority)},
        },
    )

    assert [e["code"] for e in changed["updateCluster"]["userErrors"]] == ["FORBIDDEN_ADDRESS"]
    state = await api.data(STATE, {"id": cluster_id})
    assert state["cluster"]["apiServerUrl"] == "https://10.0.0.1"


# Through the poller: a kubeconfig stored before these rules is refused at every check.


async def test_a_stored_kubeconfig_pointing_at_metadata_fails_its_check_as_unreachable(
    api: GraphQLClient,
    settings: Settings,
    database_url: str,
    authority: CertificateAuthority,
) -> None:
    ids = {}
    for name in ("literal", "alias"):
        data = await api.data(
            IMPORT,
            {
                "input": {
                    "name": name,
                    "kubeconfig": _kubeconfig_text("https://10.0.0.1", authority),
                }
            },
        )
        ids[name] = uuid.UUID(data["importCluster"]["cluster"]["id"])
    engine = create_engine(database_url, settings.database)
    assert settings.encryption.key is not None
    cipher = KubeconfigCipher(EncryptionKey.from_base64(settings.encryption.key))
    sessions = create_session_factory(engine)
    servers = {"literal": f"https://{METADATA}:6443", "alias": "https://metadata-alias.example"}
    try:
        # What an older fleetql stored, before the address was checked.
        async with sessions() as session:
            for name, server in servers.items():
                document = kubeconfig(server, authority)
                blob = cipher.encrypt(yaml.safe_dump(document).encode(), cluster_id=ids[name])
                await db.replace_kubeconfig(
                    session,
                    ids[name],
                    api_server_url=server,
                    kubeconfig_ciphertext=blob.payload,
                    kubeconfig_key_id=blob.key_id,
                    kubeconfig_format=blob.format_version,
                )
            await session.commit()
        dns = FakeDns({"metadata-alias.example": [[METADATA]]})
        poller = Poller(
            sessions=sessions,
            cipher=cipher,
            settings=PollerSettings.model_validate({"client_timeout": "5s", "retry_attempts": 0}),
            pool=ClientPool(),
            client_policy=ClientPolicy(addresses=AddressPolicy.from_settings(settings), lookup=dns),
        )
        with connections() as seen:
            try:
                assert await poller.sweep() == 2
            finally:
                await poller.pool.aclose()
        for name in servers:
            state = (await api.data(STATE, {"id": str(ids[name])}))["cluster"]
            assert state["status"] == "UNREACHABLE", name
            assert state["lastError"]["code"] == "FORBIDDEN_ADDRESS", name
            assert "no setting allows it" in state["lastError"]["message"]
        assert METADATA not in seen
    finally:
        await engine.dispose()
