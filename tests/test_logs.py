"""Structured logs: the fields each line carries, request ids, probes kept out of the access log,
and no secret in any line, whatever is imported or fails."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import httpx
import orjson
import pytest
import yaml

from fleetql.config import ConfigError, PollerSettings, Settings, load_settings
from fleetql.crypto import EncryptionKey, KubeconfigCipher
from fleetql.db.engine import create_engine, create_session_factory
from fleetql.logs import build_handler, log_context, redact
from fleetql.poller.pool import ClientPool
from fleetql.poller.worker import Poller
from fleetql.sim import Simulator
from tests.conftest import GraphQLClient, ThreadedServer, asyncpg_dsn, free_port

IMPORT = """
mutation Import($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { field code message } }
}
"""


@dataclass
class Captured:
    """Every record the process logs, formatted by both of fleetql's formatters."""

    json: io.StringIO
    text: io.StringIO

    def json_lines(self) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in self.json.getvalue().splitlines() if line]

    def everything(self) -> str:
        return self.json.getvalue() + self.text.getvalue()


@pytest.fixture
def captured() -> Iterator[Captured]:
    """fleetql's real handlers on the root logger, at DEBUG, for the test's duration."""
    capture = Captured(io.StringIO(), io.StringIO())
    handlers = [build_handler("json", capture.json), build_handler("text", capture.text)]
    root, access = logging.getLogger(), logging.getLogger("uvicorn.access")
    levels = root.level, access.level
    # Another uvicorn started in this process with uvicorn's own log config (the simulator's,
    # say) may have detached its access logger from the root: attach it for the test.
    detached = access.propagate, access.disabled
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    access.setLevel(logging.INFO)
    access.propagate, access.disabled = True, False
    try:
        yield capture
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(levels[0])
        access.setLevel(levels[1])
        access.propagate, access.disabled = detached


def test_json_and_text_lines_carry_the_context_fields() -> None:
    json_out, text_out = io.StringIO(), io.StringIO()
    logger = logging.getLogger("fleetql.test")
    logger.setLevel(logging.INFO)
    for handler in (build_handler("json", json_out), build_handler("text", text_out)):
        logger.addHandler(handler)
    try:
        with log_context(request_id="req-1", operation="Fleet"), log_context(cluster_id="c-9"):
            logger.info("checked %s", "prod-eu")
        logger.warning("outside")
    finally:
        logger.handlers.clear()
    inside, outside = (orjson.loads(line) for line in json_out.getvalue().splitlines())
    assert inside["message"] == "checked prod-eu" and inside["level"] == "INFO"
    assert inside["logger"] == "fleetql.test" and str(inside["time"]).endswith("+00:00")
    assert (inside["request_id"], inside["operation"], inside["cluster_id"]) == (
        "req-1",
        "Fleet",
        "c-9",
    )
    assert "request_id" not in outside and outside["level"] == "WARNING"
    first = text_out.getvalue().splitlines()[0]
    assert "INFO fleetql.test [request_id=req-1 operation=Fleet cluster_id=c-9]: checked" in first


def test_redaction_masks_credential_shaped_values() -> None:
    masked = redact("Authorization: Bearer abcdefghijklmnop and password=hunter22 ok")
    assert "abcdefghijklmnop" not in masked and "hunter22" not in masked
    assert masked.endswith(" ok")


async def test_request_id_round_trip_and_probes_stay_out_of_the_access_log(
    server: ThreadedServer, captured: Captured
) -> None:
    base = server.url.removesuffix("/graphql")
    async with httpx.AsyncClient(timeout=10) as http:
        sent = await http.post(
            server.url,
            json={"query": "query BadPage { clusters(limit: -1) { total } }"},
            headers={"X-Request-ID": "trace-abc.123"},
        )
        made = await http.post(server.url, json={"query": "{ clusters { total } }"})
        forged = await http.get(f"{base}/livez", headers={"X-Request-ID": "bad id; DROP <x>"})
        await http.get(f"{base}/readyz")
    assert sent.headers["x-request-id"] == "trace-abc.123"
    generated = made.headers["x-request-id"]
    assert len(generated) == 32 and generated != "trace-abc.123"
    assert forged.headers["x-request-id"] != "bad id; DROP <x>"

    lines = captured.json_lines()
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert {line.get("request_id") for line in access} >= {"trace-abc.123", generated}
    assert all("/livez" not in str(line["message"]) for line in access)
    assert all("/readyz" not in str(line["message"]) for line in access)
    # The client error is logged (at DEBUG) with the request and the operation it belongs to.
    client_errors = [line for line in lines if line["logger"] == "fleetql.graphql"]
    assert any(
        line.get("request_id") == "trace-abc.123" and line.get("operation") == "BadPage"
        for line in client_errors
    ), client_errors


# Recognisable secrets: none of them, nor its base64, may appear in any log line.
TOKEN = "logtest-token-Zq81x0WvD4yKpL2m"
UNREACHABLE_TOKEN = "logtest-token-unreachable-7Hc3nB"
PASSWORD = "logtest-password-Gt5sQ9vEw"
URL_PASSWORD = "logtest-urlpass-Rk2dLm8"


def _b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


def _b64_inside(secret: str) -> list[str]:
    """What any base64 text holding ``secret`` must contain, at each of the three alignments
    the secret can have in it (the characters that encode only the secret's bytes)."""
    variants = []
    for pad in range(3):
        encoded = _b64(b"\0" * pad + secret.encode())
        skip = 4 if pad else 0
        whole_groups = (pad + len(secret.encode())) // 3
        variants.append(encoded[skip : whole_groups * 4])
    return variants


async def test_no_secret_reaches_any_log_line(
    api: GraphQLClient, settings: Settings, database_url: str, captured: Captured
) -> None:
    assert settings.encryption.key is not None
    cipher = KubeconfigCipher(EncryptionKey.from_base64(settings.encryption.key))
    engine = create_engine(database_url, settings.database)
    sent: list[str] = []

    async def import_(
        name: str, document: dict[str, object], *, as_base64: bool
    ) -> dict[str, object]:
        text = yaml.safe_dump(document)
        kubeconfig = _b64(text) if as_base64 else text
        sent.append(kubeconfig)
        data = await api.data(IMPORT, {"input": {"name": name, "kubeconfig": kubeconfig}})
        payload: dict[str, object] = data["importCluster"]
        return payload

    try:
        async with Simulator() as sim:
            tokened = sim.add_cluster("tokened", token=TOKEN)
            keyed = sim.add_cluster("keyed")
            sim.add_cluster("basic")
            keyed_doc = sim.kubeconfig("keyed", auth="client-certificate")
            key_data = keyed_doc["users"][0]["user"]["client-key-data"]
            key_pem = base64.b64decode(key_data).decode()
            basic_doc = sim.kubeconfig("basic")
            basic_doc["users"][0]["user"] = {"username": "admin", "password": PASSWORD}
            unreachable_doc = sim.kubeconfig("tokened", token=UNREACHABLE_TOKEN)
            closed_port = free_port()
            unreachable_doc["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{closed_port}"
            refused_doc = sim.kubeconfig("basic")
            refused_doc["clusters"][0]["cluster"]["server"] = (
                f"https://admin:{URL_PASSWORD}@127.0.0.1:{closed_port}"
            )

            for name, document, as_base64 in [
                ("tokened", sim.kubeconfig("tokened"), True),
                ("keyed", keyed_doc, False),
                ("unreachable", unreachable_doc, False),
            ]:
                payload = await import_(name, document, as_base64=as_base64)
                assert payload["userErrors"] == [], payload
            # Basic authentication is refused (issue 8); its password must not be logged either.
            basic = await import_("basic", basic_doc, as_base64=True)
            assert basic["cluster"] is None and basic["userErrors"]
            refused = await import_("refused", refused_doc, as_base64=True)
            assert refused["cluster"] is None and refused["userErrors"]
            # A malformed input: GraphQL's own error quotes the variable's value.
            bad = await api.post(
                IMPORT,
                {"input": {"name": "x", "kubeconfig": _b64(yaml.safe_dump(basic_doc)), "y": 1}},
            )
            assert bad.get("errors")

            poller = Poller(
                sessions=create_session_factory(engine),
                cipher=cipher,
                settings=PollerSettings.model_validate(
                    {"client_timeout": "2s", "retry_attempts": 1, "retry_delay": "10ms"}
                ),
                pool=ClientPool(),
            )
            try:
                await poller.sweep()  # tokened and keyed HEALTHY, basic refused, one unreachable
                tokened.spec.auth_fails = True
                keyed.spec.reset_connections = True
                connection = await asyncpg.connect(asyncpg_dsn(database_url))
                try:
                    await connection.execute("UPDATE cluster_states SET next_check_at = now()")
                finally:
                    await connection.close()
                await poller.sweep()
            finally:
                await poller.pool.aclose()
    finally:
        await engine.dispose()

    secrets = [TOKEN, UNREACHABLE_TOKEN, PASSWORD, URL_PASSWORD, key_data, key_pem]
    secrets += [line for line in key_pem.splitlines() if "PRIVATE KEY" not in line and line]
    forbidden = secrets + [v for secret in secrets for v in _b64_inside(secret)] + sent
    logged = captured.everything()
    for secret in forbidden:
        assert secret not in logged, f"a secret reached the log: {secret[:12]}…"

    # The test saw what it meant to: failures logged, each with its cluster.
    failures = [line for line in captured.json_lines() if "failed (" in str(line["message"])]
    codes = {str(line["message"]).split("(")[1].split(")")[0] for line in failures}
    assert {"UNAUTHORIZED", "CONNECTION_REFUSED", "CONNECTION_RESET"} <= codes, codes
    assert all("cluster_id" in line for line in failures)


def test_log_settings_are_validated() -> None:
    settings = load_settings(environ={"FLEETQL_LOG__FORMAT": "JSON"})
    assert settings.log.format == "json" and settings.log.level == "info"
    with pytest.raises(ConfigError, match=r"log\.format"):
        load_settings(environ={"FLEETQL_LOG__FORMAT": "xml"})
