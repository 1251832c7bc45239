"""Hostile kubeconfigs over the real API, and stored ones at poll time, watched by an audit hook.

Every refused form is imported through importCluster (and some through updateCluster): it must
come back as a userError with its specific code and a message naming the field, and nothing may
be stored. A kubeconfig stored under older, looser rules is refused again when the poller builds
its client. While all of this runs, a process-wide audit hook fails the test on any process start
and on any file opened outside an allow-list, so "refused" also means "never acted upon".
"""

from __future__ import annotations

import base64
import os
import socket
import sys
import sysconfig
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from fleetql.app import create_app
from fleetql.config import PollerSettings, Settings
from fleetql.crypto import EncryptionKey, KubeconfigCipher
from fleetql.db import clusters as db
from fleetql.db.engine import create_engine, create_session_factory
from fleetql.poller.client import ClientPolicy
from fleetql.poller.pool import ClientPool
from fleetql.poller.worker import Poller
from fleetql.sim import Simulator
from tests.conftest import GraphQLClient, ThreadedServer, asyncpg_dsn
from tests.kubeconfigs import TOKEN, KubeconfigFactory

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
  cluster(id: $id) { status apiServerUrl consecutiveFailures lastError { code message } }
}
"""
PASSWORD = "hostile-pa55word-5ecret"


# The audit hook: installed once for the process (hooks cannot be removed), recording only while
# a test has switched it on.

_PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.posix_spawn", "os.fork", "os.forkpty")
_PROCESS_PREFIXES = ("os.exec", "os.spawn", "pty.spawn")


@dataclass
class _AuditRecorder:
    active: bool = False
    allowed_prefixes: tuple[str, ...] = ()
    forbidden_ports: frozenset[int] = frozenset()
    violations: list[str] = field(default_factory=list)
    opened: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event in _PROCESS_EVENTS or event.startswith(_PROCESS_PREFIXES):
            self._violation(f"{event} {args!r:.200}")
        elif event == "open":
            self._opened(args[0])
        elif event == "socket.connect" and len(args) > 1:
            address = args[1]
            if (
                isinstance(address, tuple)
                and len(address) > 1
                and address[1] in self.forbidden_ports
            ):
                self._violation(f"socket.connect to {address!r}")

    def _opened(self, target: Any) -> None:
        if isinstance(target, int):  # os.fdopen of a descriptor already opened
            return
        path = os.fsdecode(target)
        resolved = os.path.realpath(path)
        with self.lock:
            self.opened.add(resolved)
        if not resolved.startswith(self.allowed_prefixes):
            self._violation(f"open {resolved}")

    def _violation(self, what: str) -> None:
        with self.lock:
            self.violations.append(what)


AUDIT = _AuditRecorder()
sys.addaudithook(AUDIT)


def _library_prefixes() -> tuple[str, ...]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for scheme_path in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.add(sysconfig.get_path(scheme_path))
    return tuple(os.path.realpath(path) + os.sep for path in paths if path)


@contextmanager
def audited(*extra_allowed: Path, forbidden_ports: frozenset[int] = frozenset()) -> Iterator[None]:
    """Fail on a process start, an open outside the allow-list or a connection to a canary."""
    private_tls = os.path.join(os.path.realpath(tempfile.gettempdir()), "fleetql-tls-")
    AUDIT.allowed_prefixes = (
        *_library_prefixes(),
        "/dev/urandom",
        # The client key and certificate, written 0600 while a TLS context is built.
        private_tls,
        *(os.path.realpath(path) + os.sep for path in extra_allowed),
    )
    AUDIT.forbidden_ports = forbidden_ports
    AUDIT.violations.clear()
    AUDIT.opened.clear()
    AUDIT.active = True
    try:
        yield
    finally:
        AUDIT.active = False
    assert AUDIT.violations == [], AUDIT.violations


# Canaries: files and programs a hostile kubeconfig points at; any use of them is a failure.


@dataclass(frozen=True)
class Canaries:
    folder: Path
    token_file: Path
    cert_file: Path
    key_file: Path
    program: Path
    marker: Path
    proxy_port: int


@pytest.fixture
def canaries(tmp_path: Path, kubeconfigs: KubeconfigFactory) -> Iterator[Canaries]:
    folder = Path(tempfile.mkdtemp(prefix="fleetql-canary-"))
    marker = folder / "ran"
    program = folder / "plugin.sh"
    program.write_text(f"#!/bin/sh\ntouch {marker}\necho '{{}}'\n")
    program.chmod(0o755)
    token_file = folder / "token"
    token_file.write_text("canary-token-from-disk\n")
    cert_file = folder / "client.crt"
    cert_file.write_bytes(base64.b64decode(kubeconfigs.ca_data))
    key_file = folder / "client.key"
    key_file.write_text("not a key\n")
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        try:
            yield Canaries(
                folder,
                token_file,
                cert_file,
                key_file,
                program,
                marker,
                proxy.getsockname()[1],
            )
        finally:
            assert not marker.exists(), "a kubeconfig's program ran"
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()


def _hostile_cases(c: Canaries, factory: KubeconfigFactory) -> list[tuple[str, str, str, str]]:
    """(id, kubeconfig text, expected code, a fragment of the message naming the field)."""
    good_cluster = {
        "server": "https://127.0.0.1:6443",
        "certificate-authority-data": factory.ca_data,
    }

    def with_user(**user: Any) -> str:
        return factory.yaml(user=user)

    def with_cluster(**cluster: Any) -> str:
        return factory.yaml(cluster={**good_cluster, **cluster})

    plugin = {"apiVersion": "client.authentication.k8s.io/v1", "command": str(c.program)}
    text = factory.yaml()
    return [
        ("exec", with_user(exec=plugin), "UNSUPPORTED_AUTH", "uses exec"),
        (
            "auth-provider-gcp",
            with_user(**{"auth-provider": {"name": "gcp", "config": {"cmd-path": str(c.program)}}}),
            "UNSUPPORTED_AUTH",
            "uses auth-provider",
        ),
        (
            "auth-provider-oidc",
            with_user(**{"auth-provider": {"name": "oidc", "config": {"id-token": TOKEN}}}),
            "UNSUPPORTED_AUTH",
            "uses auth-provider",
        ),
        ("as", with_user(token=TOKEN, **{"as": "system:admin"}), "UNSUPPORTED_AUTH", "(as)"),
        ("as-uid", with_user(token=TOKEN, **{"as-uid": "0"}), "UNSUPPORTED_AUTH", "(as-uid)"),
        (
            "as-groups",
            with_user(token=TOKEN, **{"as-groups": ["system:masters"]}),
            "UNSUPPORTED_AUTH",
            "(as-groups)",
        ),
        (
            "as-user-extra",
            with_user(token=TOKEN, **{"as-user-extra": {"scopes": ["x"]}}),
            "UNSUPPORTED_AUTH",
            "(as-user-extra)",
        ),
        (
            "basic-auth",
            with_user(username="admin", password=PASSWORD),
            "UNSUPPORTED_AUTH",
            "basic authentication (username)",
        ),
        ("tokenFile", with_user(tokenFile=str(c.token_file)), "UNSUPPORTED_AUTH", "tokenFile"),
        (
            "client-certificate-file",
            with_user(**{"client-certificate": str(c.cert_file), "client-key": str(c.key_file)}),
            "UNSUPPORTED_AUTH",
            "uses client-certificate",
        ),
        (
            "client-key-file",
            with_user(**{"client-key": str(c.key_file)}),
            "UNSUPPORTED_AUTH",
            "uses client-key",
        ),
        (
            "certificate-authority-file",
            factory.yaml(
                cluster={
                    "server": "https://127.0.0.1:6443",
                    "certificate-authority": str(c.cert_file),
                }
            ),
            "UNSUPPORTED_AUTH",
            "uses certificate-authority",
        ),
        (
            "proxy-url",
            with_cluster(**{"proxy-url": f"http://127.0.0.1:{c.proxy_port}"}),
            "UNSUPPORTED_PROXY",
            "proxy-url",
        ),
        (
            "insecure",
            factory.yaml(
                cluster={"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}
            ),
            "INSECURE_TLS",
            "insecure-skip-tls-verify",
        ),
        (
            "insecure-with-ca",
            with_cluster(**{"insecure-skip-tls-verify": True}),
            "INSECURE_TLS",
            "insecure-skip-tls-verify",
        ),
        ("http-server", factory.yaml(server="http://127.0.0.1:6443"), "INVALID_SERVER", "server"),
        (
            "userinfo",
            factory.yaml(server=f"https://admin:{PASSWORD}@127.0.0.1:6443"),
            "INVALID_SERVER",
            "server URL",
        ),
        ("query", factory.yaml(server="https://127.0.0.1:6443/?x=1"), "INVALID_SERVER", "server"),
        ("fragment", factory.yaml(server="https://127.0.0.1:6443/#x"), "INVALID_SERVER", "server"),
        (
            "tls-server-name",
            with_cluster(**{"tls-server-name": "not a name"}),
            "INVALID_SERVER",
            "tls-server-name",
        ),
        (
            "token-control-characters",
            with_user(token=TOKEN + "\r\nX-Injected: yes"),
            "INVALID_CREDENTIAL",
            "token",
        ),
        ("token-too-long", with_user(token="a" * (16 * 1024 + 1)), "INVALID_CREDENTIAL", "token"),
        (
            "certificate-key-mismatch",
            with_user(
                **{
                    "client-certificate-data": factory.ca_data,
                    "client-key-data": base64.b64encode(_other_key_pem()).decode(),
                }
            ),
            "INVALID_CREDENTIAL",
            "client-key-data does not match",
        ),
        (
            "ca-not-pem",
            with_cluster(**{"certificate-authority-data": base64.b64encode(b"junk").decode()}),
            "INVALID_CA",
            "certificate-authority-data",
        ),
        (
            "ca-too-many",
            with_cluster(
                **{
                    "certificate-authority-data": base64.b64encode(
                        base64.b64decode(factory.ca_data) * 65
                    ).decode()
                }
            ),
            "INVALID_CA",
            "certificate-authority-data",
        ),
        (
            "python-tag",
            text.replace("kind: Config", f"kind: !!python/object/apply:os.system ['{c.program}']"),
            "INVALID_KUBECONFIG",
            "YAML tag",
        ),
        (
            "python-new-popen",
            text.replace(
                "kind: Config", f"kind: !!python/object/new:subprocess.Popen [['{c.program}']]"
            ),
            "INVALID_KUBECONFIG",
            "YAML tag",
        ),
        (
            "binary-tag",
            text.replace("kind: Config", "kind: !!binary aGk="),
            "INVALID_KUBECONFIG",
            "YAML tag",
        ),
        (
            "anchor",
            text.replace("kind: Config", "kind: &k Config"),
            "INVALID_KUBECONFIG",
            "anchors",
        ),
        (
            "merge-key",
            text.replace(f"token: {TOKEN}", f"<<: {{token: x}}\n    token: {TOKEN}"),
            "INVALID_KUBECONFIG",
            "merge keys",
        ),
        (
            "duplicate-key",
            text.replace(f"token: {TOKEN}", f"token: {TOKEN}\n    token: other"),
            "INVALID_KUBECONFIG",
            "appears twice",
        ),
        ("two-documents", text + "---\n" + text, "INVALID_KUBECONFIG", "single YAML document"),
        ("deep", "a: " + "[" * 20 + "]" * 20 + "\n", "INVALID_KUBECONFIG", "nested too deeply"),
    ]


def _other_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


async def _stored_cluster_count(database_url: str) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM clusters")
        return count
    finally:
        await connection.close()


def _assert_no_secret(text: str, canaries: Canaries) -> None:
    for secret in (TOKEN, PASSWORD, "canary-token-from-disk", str(canaries.folder)):
        assert secret not in text


async def test_every_hostile_kubeconfig_is_refused_at_import_with_its_code_and_nothing_runs(
    api: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    canaries: Canaries,
    database_url: str,
    tmp_path: Path,
) -> None:
    cases = _hostile_cases(canaries, kubeconfigs)
    with audited(tmp_path, forbidden_ports=frozenset({canaries.proxy_port})):
        for case_id, text, code, fragment in cases:
            for kubeconfig in (text, base64.b64encode(text.encode()).decode()):
                data = await api.data(
                    IMPORT, {"input": {"name": "hostile", "kubeconfig": kubeconfig}}
                )
                payload = data["importCluster"]
                assert payload["cluster"] is None, case_id
                assert [(e["field"], e["code"]) for e in payload["userErrors"]] == [
                    ("kubeconfig", code)
                ], (case_id, payload["userErrors"])
                message = payload["userErrors"][0]["message"]
                assert fragment in message, (case_id, message)
                _assert_no_secret(message, canaries)
    assert await _stored_cluster_count(database_url) == 0


async def test_hostile_kubeconfigs_are_refused_by_update_and_the_old_one_stays(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, canaries: Canaries, tmp_path: Path
) -> None:
    data = await api.data(IMPORT, {"input": {"name": "target", "kubeconfig": kubeconfigs.yaml()}})
    cluster_id = data["importCluster"]["cluster"]["id"]
    with audited(tmp_path, forbidden_ports=frozenset({canaries.proxy_port})):
        for case_id, text, code, fragment in _hostile_cases(canaries, kubeconfigs)[:16]:
            changed = await api.data(UPDATE, {"id": cluster_id, "input": {"kubeconfig": text}})
            errors = changed["updateCluster"]["userErrors"]
            assert [(e["field"], e["code"]) for e in errors] == [("kubeconfig", code)], case_id
            assert fragment in errors[0]["message"], case_id
    state = await api.data(STATE, {"id": cluster_id})
    assert state["cluster"]["apiServerUrl"] == "https://127.0.0.1:6443"


def _insecure_kubeconfig(server: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}
            ],
            "users": [{"name": "u", "user": {"token": TOKEN}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    )


@pytest.fixture(scope="module")
def lenient_server(settings: Settings) -> Iterator[ThreadedServer]:
    """A second server of the same database with cluster_manager.allow_insecure_tls set."""
    manager = settings.cluster_manager.model_copy(update={"allow_insecure_tls": True})
    lenient = settings.model_copy(update={"cluster_manager": manager})
    with ThreadedServer(create_app(lenient), lenient) as running:
        yield running


async def test_insecure_tls_is_accepted_only_where_the_setting_allows_it(
    api: GraphQLClient, lenient_server: ThreadedServer
) -> None:
    import httpx

    kubeconfig = _insecure_kubeconfig("https://127.0.0.1:6443")
    refused = await api.data(IMPORT, {"input": {"name": "strict", "kubeconfig": kubeconfig}})
    assert refused["importCluster"]["userErrors"][0]["code"] == "INSECURE_TLS"
    async with httpx.AsyncClient(timeout=30) as http:
        lenient = GraphQLClient(http, lenient_server.url)
        accepted = await lenient.data(
            IMPORT, {"input": {"name": "lenient", "kubeconfig": kubeconfig}}
        )
    assert accepted["importCluster"]["userErrors"] == []


# Poll time: a kubeconfig stored under the old rules is not used.


@dataclass
class StoredFleet:
    api: GraphQLClient
    sim: Simulator
    cipher: KubeconfigCipher
    sessions: Any
    database_url: str

    async def import_from_sim(self, name: str) -> str:
        self.sim.add_cluster(name)
        kubeconfig = self.sim.kubeconfig_yaml(name)
        data = await self.api.data(IMPORT, {"input": {"name": name, "kubeconfig": kubeconfig}})
        assert data["importCluster"]["userErrors"] == []
        return str(data["importCluster"]["cluster"]["id"])

    async def store_raw(self, cluster_id: str, document: dict[str, Any]) -> None:
        """What an older fleetql (or a tampered row) left: stored without today's checks."""
        key = uuid.UUID(cluster_id)
        blob = self.cipher.encrypt(yaml.safe_dump(document).encode(), cluster_id=key)
        async with self.sessions() as session:
            await db.replace_kubeconfig(
                session,
                key,
                api_server_url=document["clusters"][0]["cluster"]["server"],
                kubeconfig_ciphertext=blob.payload,
                kubeconfig_key_id=blob.key_id,
                kubeconfig_format=blob.format_version,
            )
            await session.commit()

    def poller(self, policy: ClientPolicy | None = None) -> Poller:
        return Poller(
            sessions=self.sessions,
            cipher=self.cipher,
            settings=PollerSettings(
                client_timeout="5s",  # type: ignore[arg-type]
                retry_attempts=0,
                status_threshold=1,
            ),
            pool=ClientPool(),
            client_policy=policy or ClientPolicy(),
        )

    async def sweep(self, poller: Poller) -> None:
        try:
            await poller.sweep()
        finally:
            await poller.pool.aclose()

    async def state(self, cluster_id: str) -> dict[str, Any]:
        return (await self.api.data(STATE, {"id": cluster_id}))["cluster"]  # type: ignore[no-any-return]


@pytest.fixture
async def stored(
    api: GraphQLClient, settings: Settings, database_url: str
) -> AsyncIterator[StoredFleet]:
    engine = create_engine(database_url, settings.database)
    assert settings.encryption.key is not None
    cipher = KubeconfigCipher(EncryptionKey.from_base64(settings.encryption.key))
    try:
        async with Simulator() as sim:
            yield StoredFleet(api, sim, cipher, create_session_factory(engine), database_url)
    finally:
        await engine.dispose()


def _sim_document(sim: Simulator, name: str, **user: Any) -> dict[str, Any]:
    document = sim.kubeconfig(name)
    if user:
        document["users"][0]["user"] = user
    return document


async def test_a_stored_basic_auth_kubeconfig_is_refused_at_poll_time_until_reimported(
    stored: StoredFleet, tmp_path: Path
) -> None:
    cluster_id = await stored.import_from_sim("legacy")
    await stored.store_raw(
        cluster_id, _sim_document(stored.sim, "legacy", username="admin", password=PASSWORD)
    )
    with audited(tmp_path):
        await stored.sweep(stored.poller())
    state = await stored.state(cluster_id)
    assert state["status"] == "UNREACHABLE"
    assert state["lastError"]["code"] == "KUBECONFIG_REFUSED"
    message = state["lastError"]["message"]
    assert "updateCluster" in message and "UNSUPPORTED_AUTH" in message
    assert "basic authentication" in message and PASSWORD not in message
    history = await stored.api.data(
        "query($id: ID!) { cluster(id: $id) { events(first: 10) { items { type message } } } }",
        {"id": cluster_id},
    )
    assert {"type": "CHECK_FAILED", "message": "check failed: KUBECONFIG_REFUSED"} in (
        history["cluster"]["events"]["items"]
    )

    changed = await stored.api.data(
        UPDATE,
        {"id": cluster_id, "input": {"kubeconfig": stored.sim.kubeconfig_yaml("legacy")}},
    )
    assert changed["updateCluster"]["userErrors"] == []
    with audited(tmp_path):
        await stored.sweep(stored.poller())
    state = await stored.state(cluster_id)
    assert (state["status"], state["lastError"]) == ("HEALTHY", None)


async def test_a_stored_insecure_kubeconfig_needs_the_setting_at_poll_time(
    stored: StoredFleet,
) -> None:
    cluster_id = await stored.import_from_sim("unverified")
    document = yaml.safe_load(_insecure_kubeconfig(stored.sim.server_url("unverified")))
    document["users"][0]["user"]["token"] = stored.sim.cluster("unverified").spec.token
    await stored.store_raw(cluster_id, document)

    await stored.sweep(stored.poller())
    state = await stored.state(cluster_id)
    assert state["lastError"]["code"] == "KUBECONFIG_REFUSED"
    assert "INSECURE_TLS" in state["lastError"]["message"]

    await stored.store_raw(cluster_id, document)  # due again
    await stored.sweep(stored.poller(ClientPolicy(allow_insecure_tls=True)))
    state = await stored.state(cluster_id)
    assert (state["status"], state["lastError"]) == ("HEALTHY", None)


async def test_polling_a_stored_hostile_kubeconfig_runs_and_reads_nothing(
    stored: StoredFleet, canaries: Canaries, tmp_path: Path
) -> None:
    healthy_id = await stored.import_from_sim("healthy")
    certified_id = await stored.import_from_sim("certified")
    certified = stored.sim.kubeconfig_yaml("certified", auth="client-certificate")
    changed = await stored.api.data(
        UPDATE, {"id": certified_id, "input": {"kubeconfig": certified}}
    )
    assert changed["updateCluster"]["userErrors"] == []
    hostile_ids = []
    plugin = {"apiVersion": "client.authentication.k8s.io/v1", "command": str(canaries.program)}
    for index, user in enumerate(
        [
            {"exec": plugin},
            {"tokenFile": str(canaries.token_file)},
            {"client-certificate": str(canaries.cert_file), "client-key": str(canaries.key_file)},
            {"auth-provider": {"name": "gcp", "config": {"cmd-path": str(canaries.program)}}},
        ]
    ):
        cluster_id = await stored.import_from_sim(f"tampered-{index}")
        await stored.store_raw(cluster_id, _sim_document(stored.sim, f"tampered-{index}", **user))
        hostile_ids.append(cluster_id)
    proxied_id = await stored.import_from_sim("proxied")
    proxied = stored.sim.kubeconfig("proxied")
    proxied["clusters"][0]["cluster"]["proxy-url"] = f"http://127.0.0.1:{canaries.proxy_port}"
    await stored.store_raw(proxied_id, proxied)
    hostile_ids.append(proxied_id)

    with audited(tmp_path, forbidden_ports=frozenset({canaries.proxy_port})):
        await stored.sweep(stored.poller())

    for cluster_id in (healthy_id, certified_id):
        assert (await stored.state(cluster_id))["status"] == "HEALTHY"
    for cluster_id in hostile_ids:
        state = await stored.state(cluster_id)
        assert state["lastError"]["code"] == "KUBECONFIG_REFUSED", state
        _assert_no_secret(state["lastError"]["message"], canaries)


def test_the_audit_hook_catches_a_read_and_a_process_start(canaries: Canaries) -> None:
    # The hook must be able to fail: otherwise the tests above prove nothing.
    import subprocess

    with pytest.raises(AssertionError, match=r"open .*token"), audited():
        canaries.token_file.read_text()
    with pytest.raises(AssertionError, match=r"subprocess\.Popen"), audited():
        subprocess.run(["true"], check=True)
