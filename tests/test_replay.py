"""Resuming a subscription with ``after``: the clusters of replayed events are loaded only when
the payload selects ``cluster``, and a replay that does not still filters exactly."""

from __future__ import annotations

from typing import Any

from tests.conftest import GraphQLClient, ThreadedServer
from tests.kubeconfigs import KubeconfigFactory
from tests.wsclient import GraphQLWebSocket

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { code message } }
}
"""
REMOVE = "mutation($id: ID!) { removeCluster(id: $id) { userErrors { code } } }"
WITH_CLUSTER = """
subscription($after: ID) { clusterEvents(after: $after) { id type clusterId ...Shown } }
fragment Shown on ClusterEvent { cluster { name labels { key value } } }
"""
WITHOUT_CLUSTER = """
subscription($after: ID, $f: ClusterEventFilter) {
  clusterEvents(after: $after, filter: $f) { id type clusterId changes { field old new } }
}
"""


async def _import(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, name: str, **labels: str
) -> str:
    data = await api.data(
        IMPORT,
        {
            "input": {
                "name": name,
                "kubeconfig": kubeconfigs.yaml(),
                "labels": [{"key": k, "value": v} for k, v in labels.items()],
            }
        },
    )
    assert data["importCluster"]["userErrors"] == [], data
    return str(data["importCluster"]["cluster"]["id"])


async def _replay(
    api: GraphQLClient, server: ThreadedServer, query: str, count: int, **variables: Any
) -> list[dict[str, Any]]:
    """Resume from just before this test's first event (the log of the shared test database
    may have been pruned past 0 by earlier tests) and take ``count`` events; nothing more may
    follow."""
    logged = await api.data("{ events(first: 200) { items { id } } }")
    after = min(int(item["id"]) for item in logged["events"]["items"]) - 1
    async with GraphQLWebSocket.open(server.ws_url) as ws:
        operation = await ws.subscribe(query, {"after": str(after), **variables})
        events = [(await ws.next_data(operation))["clusterEvents"] for _ in range(count)]
        await ws.query("{ clusters { total } }")  # a round trip: the replay is all sent by now
        assert ws.pending(operation) == 0
    return events


async def test_a_replay_shows_the_cluster_when_a_fragment_selects_it(
    api: GraphQLClient, server: ThreadedServer, kubeconfigs: KubeconfigFactory
) -> None:
    kept = await _import(api, kubeconfigs, "replay-kept", env="prod")
    gone = await _import(api, kubeconfigs, "replay-gone", env="prod")
    await api.data(REMOVE, {"id": gone})
    events = await _replay(api, server, WITH_CLUSTER, 3)
    assert [(e["clusterId"], e["type"]) for e in events] == [
        (kept, "IMPORTED"),
        (gone, "IMPORTED"),
        (gone, "REMOVED"),
    ]
    assert events[0]["cluster"] == {
        "name": "replay-kept",
        "labels": [{"key": "env", "value": "prod"}],
    }
    # A removed cluster is null in every event of it, as live deliveries show it.
    assert events[1]["cluster"] is None and events[2]["cluster"] is None


async def test_a_replay_without_cluster_sends_every_event_with_its_changes(
    api: GraphQLClient, server: ThreadedServer, kubeconfigs: KubeconfigFactory
) -> None:
    cluster_id = await _import(api, kubeconfigs, "replay-plain")
    changed = await api.data(
        'mutation($id: ID!) { updateCluster(id: $id, input: {description: "new"}) '
        "{ userErrors { code } } }",
        {"id": cluster_id},
    )
    assert changed["updateCluster"]["userErrors"] == []
    events = await _replay(api, server, WITHOUT_CLUSTER, 2)
    assert [e["type"] for e in events] == ["IMPORTED", "UPDATED"]
    assert {"field": "description", "old": "", "new": "new"} in events[1]["changes"]
    assert int(events[0]["id"]) < int(events[1]["id"])


async def test_a_replayed_label_filter_without_cluster_still_drops_removed_clusters(
    api: GraphQLClient, server: ThreadedServer, kubeconfigs: KubeconfigFactory
) -> None:
    prod = await _import(api, kubeconfigs, "replay-prod", env="prod")
    await _import(api, kubeconfigs, "replay-dev", env="dev")
    removed = await _import(api, kubeconfigs, "replay-old", env="prod")
    await api.data(REMOVE, {"id": removed})
    by_labels = await _replay(
        api, server, WITHOUT_CLUSTER, 1, f={"labels": [{"key": "env", "value": "prod"}]}
    )
    assert [(e["clusterId"], e["type"]) for e in by_labels] == [(prod, "IMPORTED")]
    by_selector = await _replay(
        api, server, WITHOUT_CLUSTER, 1, f={"labelSelector": "env in (prod)"}
    )
    assert [e["clusterId"] for e in by_selector] == [prod]
