"""importCluster over HTTP: what is stored, and every refusal as a userError."""

from __future__ import annotations

import base64
from typing import Any

import asyncpg
import pytest
import yaml

from tests.conftest import GraphQLClient, asyncpg_dsn
from tests.kubeconfigs import TOKEN, KubeconfigFactory

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) {
    cluster { id name description status apiServerUrl labels { key value } nodeCount
              lastHeartbeatAt lastError { code message } createdAt updatedAt }
    userErrors { field code message }
  }
}
"""


async def import_cluster(api: GraphQLClient, **input: Any) -> dict[str, Any]:
    payload: dict[str, Any] = (await api.data(IMPORT, {"input": input}))["importCluster"]
    return payload


def codes(payload: dict[str, Any]) -> list[tuple[str, str]]:
    return [(error["field"], error["code"]) for error in payload["userErrors"]]


async def test_import_stores_cluster_with_unknown_status(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    payload = await import_cluster(
        api,
        name="prod-eu",
        description="Production, Frankfurt",
        kubeconfig=kubeconfigs.base64(server="https://k8s.example.com:6443"),
        labels=[{"key": "env", "value": "prod"}, {"key": "example.com/team", "value": "payments"}],
    )
    assert payload["userErrors"] == []
    cluster = payload["cluster"]
    assert cluster["name"] == "prod-eu"
    assert cluster["status"] == "UNKNOWN"
    assert cluster["apiServerUrl"] == "https://k8s.example.com:6443"
    assert cluster["nodeCount"] is None and cluster["lastHeartbeatAt"] is None
    assert {(label["key"], label["value"]) for label in cluster["labels"]} == {
        ("env", "prod"),
        ("example.com/team", "payments"),
    }
    assert cluster["createdAt"].endswith("+00:00")

    read = await api.data(
        "query($id: ID!) { cluster(id: $id) { id name description } }", {"id": cluster["id"]}
    )
    assert read["cluster"] == {
        "id": cluster["id"],
        "name": "prod-eu",
        "description": "Production, Frankfurt",
    }


async def test_raw_yaml_kubeconfig_is_accepted(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    payload = await import_cluster(api, name="raw", kubeconfig=kubeconfigs.yaml())
    assert payload["userErrors"] == [] and payload["cluster"]["name"] == "raw"


async def test_stored_kubeconfig_is_encrypted_minimal_and_never_returned(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, database_url: str, settings: Any
) -> None:
    document = kubeconfigs.document()
    document["users"].append({"name": "other", "user": {"token": "other-token-never-stored"}})
    document["contexts"].append({"name": "other", "context": {"cluster": "prod", "user": "other"}})
    body = base64.b64encode(yaml.safe_dump(document).encode()).decode()
    response = await api.http.post(
        api.url, json={"query": IMPORT, "variables": {"input": {"name": "enc", "kubeconfig": body}}}
    )
    assert TOKEN not in response.text
    cluster_id = response.json()["data"]["importCluster"]["cluster"]["id"]

    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        row = await connection.fetchrow(
            "SELECT kubeconfig_ciphertext, kubeconfig_key_id, kubeconfig_format "
            "FROM cluster_credentials WHERE cluster_id = $1",
            __import__("uuid").UUID(cluster_id),
        )
    finally:
        await connection.close()
    assert TOKEN.encode() not in row["kubeconfig_ciphertext"]
    assert row["kubeconfig_format"] == 2  # envelope encryption: tests/test_envelope.py

    from fleetql.crypto import EncryptedBlob, EncryptionKey, KubeconfigCipher

    cipher = KubeconfigCipher(EncryptionKey.from_base64(settings.encryption.key))
    assert row["kubeconfig_key_id"] == cipher_key_id(settings)
    plain = cipher.decrypt(
        EncryptedBlob(
            row["kubeconfig_format"], row["kubeconfig_key_id"], row["kubeconfig_ciphertext"]
        ),
        cluster_id=__import__("uuid").UUID(cluster_id),
    )
    stored = yaml.safe_load(plain)
    assert [user["name"] for user in stored["users"]] == ["admin"]
    assert len(stored["contexts"]) == 1 and len(stored["clusters"]) == 1
    assert b"other-token-never-stored" not in plain


def cipher_key_id(settings: Any) -> str:
    from fleetql.crypto import EncryptionKey

    return EncryptionKey.from_base64(settings.encryption.key).key_id


@pytest.mark.parametrize(
    "name",
    ["Prod", "prod_eu", "-prod", "prod-", "a" * 64, "", "prod.eu", "prød"],
)
async def test_invalid_name_is_refused(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, name: str
) -> None:
    payload = await import_cluster(api, name=name, kubeconfig=kubeconfigs.base64())
    assert payload["cluster"] is None
    assert codes(payload) == [("name", "INVALID_NAME")]


async def test_name_of_63_characters_is_accepted(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    payload = await import_cluster(api, name="a" * 63, kubeconfig=kubeconfigs.base64())
    assert payload["userErrors"] == []


async def test_taken_name_is_refused(api: GraphQLClient, kubeconfigs: KubeconfigFactory) -> None:
    first = await import_cluster(api, name="dup", kubeconfig=kubeconfigs.base64())
    assert first["userErrors"] == []
    second = await import_cluster(api, name="dup", kubeconfig=kubeconfigs.base64())
    assert codes(second) == [("name", "NAME_TAKEN")]
    listed = await api.data("{ clusters { total } }")
    assert listed["clusters"]["total"] == 1


async def test_name_can_be_reused_after_soft_delete(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, database_url: str
) -> None:
    first = await import_cluster(api, name="reuse", kubeconfig=kubeconfigs.base64())
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute("UPDATE clusters SET deleted_at = now() WHERE name = 'reuse'")
    finally:
        await connection.close()
    gone = await api.data(
        "query($id: ID!) { cluster(id: $id) { id } }", {"id": first["cluster"]["id"]}
    )
    assert gone["cluster"] is None
    second = await import_cluster(api, name="reuse", kubeconfig=kubeconfigs.base64())
    assert second["userErrors"] == []
    assert second["cluster"]["id"] != first["cluster"]["id"]
    listed = await api.data("{ clusters { total items { id } } }")
    assert listed["clusters"]["items"] == [{"id": second["cluster"]["id"]}]


@pytest.mark.parametrize(
    ("labels", "field"),
    [
        ([{"key": "bad key", "value": "x"}], "labels[0].key"),
        ([{"key": "env", "value": "has space"}], "labels[0].value"),
        ([{"key": "env", "value": "v" * 64}], "labels[0].value"),
        ([{"key": "ok", "value": "1"}, {"key": "-bad", "value": "1"}], "labels[1].key"),
        ([{"key": "env", "value": "a"}, {"key": "env", "value": "b"}], "labels[1].key"),
    ],
)
async def test_invalid_label_is_refused(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, labels: list[dict[str, str]], field: str
) -> None:
    payload = await import_cluster(
        api, name="labelled", kubeconfig=kubeconfigs.base64(), labels=labels
    )
    assert payload["cluster"] is None
    assert codes(payload) == [(field, "INVALID_LABEL")]


async def test_all_independent_problems_are_reported_together(api: GraphQLClient) -> None:
    payload = await import_cluster(
        api, name="Bad_Name", kubeconfig="bm90IGJhc2U2NA=", labels=[{"key": "a b", "value": ""}]
    )
    assert {code for _, code in codes(payload)} == {
        "INVALID_NAME",
        "INVALID_LABEL",
        "INVALID_BASE64",
    }


async def test_invalid_base64_is_refused(api: GraphQLClient) -> None:
    payload = await import_cluster(api, name="b64", kubeconfig="YWJj=ZGVm")
    assert codes(payload) == [("kubeconfig", "INVALID_BASE64")]


def user(**credentials: Any) -> dict[str, Any]:
    return credentials


@pytest.mark.parametrize(
    ("user_entry", "cluster_entry", "what"),
    [
        (
            user(exec={"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}),
            None,
            "exec",
        ),
        (user(**{"auth-provider": {"name": "gcp"}}), None, "auth-provider"),
        (user(tokenFile="/var/run/secrets/token"), None, "tokenFile"),
        (
            user(**{"client-certificate": "/etc/cert.pem", "client-key": "/etc/key.pem"}),
            None,
            "client-certificate",
        ),
        (
            None,
            {"server": "https://x:6443", "certificate-authority": "/etc/ca.pem"},
            "certificate-authority",
        ),
    ],
)
async def test_kubeconfig_that_would_touch_the_server_is_refused(
    api: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    user_entry: dict[str, Any] | None,
    cluster_entry: dict[str, Any] | None,
    what: str,
) -> None:
    payload = await import_cluster(
        api, name="unsafe", kubeconfig=kubeconfigs.base64(user=user_entry, cluster=cluster_entry)
    )
    assert payload["cluster"] is None
    [error] = payload["userErrors"]
    assert error["code"] == "UNSUPPORTED_AUTH"
    assert what in error["message"]


@pytest.mark.parametrize(
    ("document_change", "expected_field", "fragment"),
    [
        ({"cluster": {"certificate-authority-data": "x"}}, "kubeconfig", "server"),
        ({"user": {}}, "kubeconfig", "credentials"),
    ],
)
async def test_incomplete_kubeconfig_is_refused_with_what_is_wrong(
    api: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    document_change: dict[str, Any],
    expected_field: str,
    fragment: str,
) -> None:
    payload = await import_cluster(
        api, name="incomplete", kubeconfig=kubeconfigs.base64(**document_change)
    )
    [error] = payload["userErrors"]
    assert (error["field"], error["code"]) == (expected_field, "INVALID_KUBECONFIG")
    assert fragment in error["message"]


async def test_unknown_context_is_refused_on_the_context_field(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    payload = await import_cluster(
        api, name="ctx", kubeconfig=kubeconfigs.base64(), context="staging"
    )
    [error] = payload["userErrors"]
    assert (error["field"], error["code"]) == ("context", "INVALID_KUBECONFIG")
    assert "staging" in error["message"]


async def test_alias_bomb_kubeconfig_is_refused(api: GraphQLClient) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    payload = await import_cluster(api, name="bomb", kubeconfig=bomb)
    [error] = payload["userErrors"]
    assert error["code"] == "INVALID_KUBECONFIG"
    assert "alias" in error["message"] or "anchor" in error["message"]


async def test_kubeconfig_over_the_limit_is_refused_as_too_large(api: GraphQLClient) -> None:
    # 600 KiB: over max_kubeconfig_bytes, under server.max_body_bytes once base64-encoded (a
    # larger body gets 413 before GraphQL sees it: tests/test_http_hardening.py).
    huge = base64.b64encode(b"# " + b"x" * (600 * 1024) + b"\n").decode()
    payload = await import_cluster(api, name="huge", kubeconfig=huge)
    assert codes(payload) == [("kubeconfig", "TOO_LARGE")]


async def test_errors_never_echo_secrets(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    document = kubeconfigs.document(
        user={"token": TOKEN, "exec": {"command": "x"}, "password": "hunter2-password"}
    )
    body = base64.b64encode(yaml.safe_dump(document).encode()).decode()
    response = await api.http.post(
        api.url,
        json={"query": IMPORT, "variables": {"input": {"name": "leak", "kubeconfig": body}}},
    )
    assert TOKEN not in response.text and "hunter2-password" not in response.text
    assert response.json()["data"]["importCluster"]["userErrors"]
