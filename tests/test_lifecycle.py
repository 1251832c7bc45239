"""updateCluster, removeCluster and setClusterLabels over the API, with the event log."""

from __future__ import annotations

import base64
import datetime
import uuid
from typing import Any

import asyncpg
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetql.config import PollerSettings, Settings
from fleetql.crypto import EncryptionKey, KubeconfigCipher
from fleetql.db.engine import create_engine, create_session_factory
from fleetql.poller.pool import ClientPool
from fleetql.poller.worker import Poller
from fleetql.sim import Simulator
from tests.conftest import GraphQLClient, asyncpg_dsn
from tests.kubeconfigs import KubeconfigFactory

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id version } userErrors { field code message } }
}
"""
FIELDS = """
  id name description version apiServerUrl labels { key value } status
  credential { kind expiresAt subject }
"""
UPDATE = f"""
mutation($id: ID!, $input: UpdateClusterInput!) {{
  updateCluster(id: $id, input: $input) {{
    cluster {{ {FIELDS} }} userErrors {{ field code message }}
  }}
}}
"""
REMOVE = f"""
mutation($id: ID!) {{
  removeCluster(id: $id) {{ cluster {{ {FIELDS} }} userErrors {{ field code message }} }}
}}
"""
SET_LABELS = """
mutation($ids: [ID!]!, $add: [LabelInput!], $remove: [String!]) {
  setClusterLabels(ids: $ids, add: $add, remove: $remove) {
    clusters { id labels { key value } version } userErrors { field code message }
  }
}
"""
CLUSTER = f"query($id: ID!) {{ cluster(id: $id) {{ {FIELDS} }} }}"
HISTORY = """
query($id: ID!) {
  cluster(id: $id) {
    events(first: 10) {
      items { type message actor changedFields changes { field old new } }
      pageInfo { hasNextPage }
    }
  }
}
"""
EVENTS = """
query($filter: EventFilter, $first: Int!, $after: ID) {
  events(filter: $filter, first: $first, after: $after) {
    items { id type clusterId } pageInfo { endCursor hasNextPage }
  }
}
"""


async def add(api: GraphQLClient, name: str, kubeconfig: str, **extra: Any) -> str:
    data = await api.data(IMPORT, {"input": {"name": name, "kubeconfig": kubeconfig, **extra}})
    payload = data["importCluster"]
    assert payload["userErrors"] == [], payload
    return str(payload["cluster"]["id"])


async def update(api: GraphQLClient, cluster_id: str, **fields: Any) -> dict[str, Any]:
    data = await api.data(UPDATE, {"id": cluster_id, "input": fields})
    return data["updateCluster"]  # type: ignore[no-any-return]


async def history(api: GraphQLClient, cluster_id: str) -> list[dict[str, Any]]:
    data = await api.data(HISTORY, {"id": cluster_id})
    return data["cluster"]["events"]["items"]  # type: ignore[no-any-return]


async def test_update_changes_fields_bumps_the_version_and_logs_what_changed(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    cluster_id = await add(
        api, "before", kubeconfigs.yaml(), labels=[{"key": "env", "value": "dev"}]
    )
    payload = await update(
        api,
        cluster_id,
        name="after",
        description="moved to the new region",
        addLabels=[{"key": "tier", "value": "web"}],
        removeLabels=["env"],
        expectedVersion=1,
    )
    assert payload["userErrors"] == []
    cluster = payload["cluster"]
    assert cluster["name"] == "after" and cluster["version"] == 2
    assert cluster["labels"] == [{"key": "tier", "value": "web"}]
    newest = (await history(api, cluster_id))[0]
    assert newest["type"] == "UPDATED"
    assert set(newest["changedFields"]) == {"name", "description", "labels"}
    assert {"field": "name", "old": "before", "new": "after"} in newest["changes"]


async def test_a_stale_expected_version_is_a_conflict_and_changes_nothing(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    cluster_id = await add(api, "contested", kubeconfigs.yaml())
    assert (await update(api, cluster_id, description="first", expectedVersion=1))[
        "userErrors"
    ] == []
    stale = await update(api, cluster_id, description="second", expectedVersion=1)
    assert stale["cluster"] is None
    assert [(e["field"], e["code"]) for e in stale["userErrors"]] == [
        ("expectedVersion", "CONFLICT")
    ]
    cluster = (await api.data(CLUSTER, {"id": cluster_id}))["cluster"]
    assert cluster["description"] == "first" and cluster["version"] == 2


async def test_every_bad_field_is_named_and_nothing_changes(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    cluster_id = await add(api, "guarded", kubeconfigs.yaml())
    await add(api, "taken", kubeconfigs.yaml())
    bad = await update(
        api,
        cluster_id,
        name="Not A Name",
        addLabels=[{"key": "bad key", "value": "x"}],
        removeLabels=["also bad!"],
        kubeconfig="not: [a kubeconfig",
    )
    fields = {error["field"] for error in bad["userErrors"]}
    assert {"name", "addLabels[0].key", "removeLabels[0]", "kubeconfig"} <= fields
    taken = await update(api, cluster_id, name="taken")
    assert [e["code"] for e in taken["userErrors"]] == ["NAME_TAKEN"]
    cluster = (await api.data(CLUSTER, {"id": cluster_id}))["cluster"]
    assert cluster["name"] == "guarded" and cluster["version"] == 1
    assert [e["type"] for e in await history(api, cluster_id)] == ["IMPORTED"]


async def test_unknown_and_removed_ids_are_not_found(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    unknown = "00000000-0000-0000-0000-000000000001"
    for document in (UPDATE, REMOVE):
        variables: dict[str, Any] = {"id": unknown}
        if document is UPDATE:
            variables["input"] = {"description": "x"}
        data = await api.data(document, variables)
        payload = next(iter(data.values()))
        assert [e["code"] for e in payload["userErrors"]] == ["NOT_FOUND"]
    cluster_id = await add(api, "gone", kubeconfigs.yaml())
    assert (await api.data(REMOVE, {"id": cluster_id}))["removeCluster"]["userErrors"] == []
    again = await api.data(REMOVE, {"id": cluster_id})
    assert [e["code"] for e in again["removeCluster"]["userErrors"]] == ["NOT_FOUND"]


async def test_removal_erases_the_kubeconfig_frees_the_name_and_keeps_history(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, database_url: str
) -> None:
    cluster_id = await add(api, "retired", kubeconfigs.yaml())
    removed = (await api.data(REMOVE, {"id": cluster_id}))["removeCluster"]
    assert removed["cluster"]["name"] == "retired"
    assert (await api.data(CLUSTER, {"id": cluster_id}))["cluster"] is None
    listed = await api.data("{ clusters { total } }")
    assert listed["clusters"]["total"] == 0
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        row = await connection.fetchrow(
            "SELECT deleted_at, (SELECT count(*) FROM cluster_credentials WHERE cluster_id = id) "
            "AS credentials FROM clusters WHERE id = $1",
            uuid.UUID(cluster_id),
        )
    finally:
        await connection.close()
    assert row["credentials"] == 0 and row["deleted_at"] is not None
    await add(api, "retired", kubeconfigs.yaml())  # the name is free again
    page = await api.data(
        EVENTS, {"filter": {"clusterIds": [cluster_id]}, "first": 10, "after": None}
    )
    assert [e["type"] for e in page["events"]["items"]] == ["REMOVED", "IMPORTED"]


async def test_set_cluster_labels_is_all_or_nothing(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    ids = [await add(api, f"bulk-{n}", kubeconfigs.yaml()) for n in range(3)]
    unknown = "00000000-0000-0000-0000-000000000002"
    refused = await api.data(
        SET_LABELS, {"ids": [*ids, unknown], "add": [{"key": "team", "value": "payments"}]}
    )
    errors = refused["setClusterLabels"]["userErrors"]
    assert [(e["field"], e["code"]) for e in errors] == [("ids[3]", "NOT_FOUND")]
    listed = await api.data('{ clusters(filter: {labelSelector: "team"}) { total } }')
    assert listed["clusters"]["total"] == 0
    done = await api.data(
        SET_LABELS, {"ids": ids, "add": [{"key": "team", "value": "payments"}], "remove": []}
    )
    assert done["setClusterLabels"]["userErrors"] == []
    assert all(c["version"] == 2 for c in done["setClusterLabels"]["clusters"])
    listed = await api.data('{ clusters(filter: {labelSelector: "team=payments"}) { total } }')
    assert listed["clusters"]["total"] == 3


async def test_events_query_pages_newest_first_with_a_cursor(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    ids = [await add(api, f"paged-{n}", kubeconfigs.yaml()) for n in range(5)]
    seen: list[str] = []
    after = None
    while True:
        page = (await api.data(EVENTS, {"filter": None, "first": 2, "after": after}))["events"]
        seen += [item["clusterId"] for item in page["items"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == list(reversed(ids))
    bad = await api.post(EVENTS, {"filter": None, "first": 0, "after": None})
    assert bad["errors"][0]["message"].startswith("first: ")


def _certificate_kubeconfig(server: str, ca_pem: bytes, days: int) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "rotated-admin"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [
            {
                "name": "u",
                "user": {
                    "client-certificate-data": base64.b64encode(pem).decode(),
                    "client-key-data": base64.b64encode(key_pem).decode(),
                },
            }
        ],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    return yaml.safe_dump(document)


@pytest.fixture
async def sim() -> Any:
    async with Simulator() as simulator:
        yield simulator


async def test_a_refused_kubeconfig_leaves_the_old_one_working_and_a_new_one_is_checked(
    api: GraphQLClient, sim: Simulator, settings: Settings, database_url: str
) -> None:
    sim.add_cluster("rotating")
    cluster_id = await add(api, "rotating", yaml.safe_dump(sim.kubeconfig("rotating")))
    refused = await update(api, cluster_id, kubeconfig="apiVersion: v1\nkind: Config\n")
    assert [e["code"] for e in refused["userErrors"]] == ["INVALID_KUBECONFIG"]

    engine = create_engine(database_url, settings.database)
    assert settings.encryption.key is not None
    cipher = KubeconfigCipher(EncryptionKey.from_base64(settings.encryption.key))
    poller = Poller(
        sessions=create_session_factory(engine),
        cipher=cipher,
        settings=PollerSettings(
            client_timeout="2s",  # type: ignore[arg-type]
            retry_attempts=0,
            status_threshold=1,
        ),
        pool=ClientPool(),
    )
    try:
        await poller.sweep()
        state = (await api.data(CLUSTER, {"id": cluster_id}))["cluster"]
        assert state["status"] == "HEALTHY"  # the old credentials still work
        assert state["credential"]["kind"] == "TOKEN"

        rotated = await update(
            api,
            cluster_id,
            kubeconfig=_certificate_kubeconfig(sim.server_url("rotating"), sim.ca_pem, 10),
        )
        assert rotated["userErrors"] == []
        credential = rotated["cluster"]["credential"]
        assert credential["kind"] == "CLIENT_CERTIFICATE"
        assert credential["subject"] == "CN=rotated-admin,O=system:masters"
        assert credential["expiresAt"] is not None
        # Due at once: the next sweep uses the new credentials, which the simulator's CA did
        # not sign, so they fail where the old ones worked.
        assert await poller.sweep() == 1
        state = (await api.data(CLUSTER, {"id": cluster_id}))["cluster"]
        assert state["status"] != "HEALTHY"
        newest = await history(api, cluster_id)
        updated = next(e for e in newest if e["type"] == "UPDATED")
        assert "credential" in updated["changedFields"]
        assert "BEGIN" not in str(updated["changes"])  # no key material in the log
    finally:
        await poller.pool.aclose()
        await engine.dispose()


async def test_a_removed_cluster_is_not_polled(
    api: GraphQLClient, sim: Simulator, settings: Settings, database_url: str
) -> None:
    sim.add_cluster("leaving")
    cluster_id = await add(api, "leaving", yaml.safe_dump(sim.kubeconfig("leaving")))
    await api.data(REMOVE, {"id": cluster_id})
    engine = create_engine(database_url, settings.database)
    assert settings.encryption.key is not None
    poller = Poller(
        sessions=create_session_factory(engine),
        cipher=KubeconfigCipher(EncryptionKey.from_base64(settings.encryption.key)),
        settings=PollerSettings(),
        pool=ClientPool(),
    )
    try:
        assert await poller.sweep() == 0
    finally:
        await poller.pool.aclose()
        await engine.dispose()
    assert sim.cluster("leaving").requests == 0
