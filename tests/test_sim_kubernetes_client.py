"""kubernetes_asyncio, configured from a simulator kubeconfig, talks to the path-prefixed clusters.

This is the client the poller uses, so these tests pin what it really sends: a server URL with a
path (``https://127.0.0.1:PORT/clusters/<name>``) is kept, and API paths are appended to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from fleetql.sim import Simulator


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as simulator:
        yield simulator


async def api_client_for(kubeconfig: dict[str, Any]) -> client.ApiClient:
    configuration = client.Configuration()
    await config.load_kube_config_from_dict(kubeconfig, client_configuration=configuration)
    return client.ApiClient(configuration=configuration)


async def raw_get(api: client.ApiClient, path: str, **query: Any) -> tuple[int, bytes]:
    """GET ``path`` the way the poller will: no model deserialisation, raw bytes back."""
    response = await api.call_api(
        path,
        "GET",
        query_params=list(query.items()),
        auth_settings=["BearerToken"],
        _preload_content=False,
    )
    async with response:
        return response.status, await response.read()


async def test_kubeconfig_server_url_keeps_the_cluster_path_prefix(sim: Simulator) -> None:
    cluster = sim.add_cluster("alpha", node_count=3, version="v1.29.4")
    sim.add_cluster("beta", node_count=1, version="v1.27.9")
    api = await api_client_for(sim.kubeconfig("alpha"))
    try:
        assert api.configuration.host == cluster.server_url
        assert api.configuration.host.endswith("/clusters/alpha")
        version = await client.VersionApi(api).get_code()
        assert version.git_version == "v1.29.4"
        nodes = await client.CoreV1Api(api).list_node()
        assert len(nodes.items) == 3
        assert all(node.metadata.name.startswith("alpha-node-") for node in nodes.items)
        assert cluster.requests == 2
    finally:
        await api.close()


async def test_raw_requests_reach_health_nodes_pages_and_metrics(sim: Simulator) -> None:
    sim.add_cluster("alpha", node_count=5)
    api = await api_client_for(sim.kubeconfig("alpha"))
    try:
        assert await raw_get(api, "/readyz") == (200, b"ok")
        names: list[str] = []
        token = ""
        while True:
            query = {"limit": 2, **({"continue": token} if token else {})}
            status, body = await raw_get(api, "/api/v1/nodes", **query)
            assert status == 200
            page = orjson.loads(body)
            names += [item["metadata"]["name"] for item in page["items"]]
            token = page["metadata"].get("continue", "")
            if not token:
                break
        assert len(names) == len(set(names)) == 5
        status, body = await raw_get(api, "/apis/metrics.k8s.io/v1beta1/nodes")
        assert status == 200
        assert orjson.loads(body)["kind"] == "NodeMetricsList"
    finally:
        await api.close()


async def test_metrics_are_readable_as_custom_objects(sim: Simulator) -> None:
    sim.add_cluster("alpha", node_count=2)
    api = await api_client_for(sim.kubeconfig("alpha"))
    try:
        metrics = await client.CustomObjectsApi(api).list_cluster_custom_object(
            "metrics.k8s.io", "v1beta1", "nodes"
        )
        assert [item["usage"]["cpu"] for item in metrics["items"]] == ["1253741829n"] * 2
    finally:
        await api.close()


async def test_absent_readyz_and_metrics_raise_404_api_exceptions(sim: Simulator) -> None:
    sim.add_cluster("alpha", readyz_served=False, metrics_served=False)
    api = await api_client_for(sim.kubeconfig("alpha"))
    try:
        assert await raw_get(api, "/readyz") == (404, b"404 page not found\n")
        assert await raw_get(api, "/healthz") == (200, b"ok")
        with pytest.raises(ApiException) as raised:
            await client.CustomObjectsApi(api).list_cluster_custom_object(
                "metrics.k8s.io", "v1beta1", "nodes"
            )
        assert raised.value.status == 404
    finally:
        await api.close()


async def test_wrong_token_raises_a_401_api_exception(sim: Simulator) -> None:
    sim.add_cluster("alpha")
    api = await api_client_for(sim.kubeconfig("alpha", token="not-the-token"))
    try:
        with pytest.raises(ApiException) as raised:
            await client.CoreV1Api(api).list_node()
        assert raised.value.status == 401
        assert orjson.loads(raised.value.body)["reason"] == "Unauthorized"
    finally:
        await api.close()


async def test_down_cluster_is_a_connection_error_for_the_client(sim: Simulator) -> None:
    cluster = sim.add_cluster("alpha", own_port=True)
    cluster.down = True
    api = await api_client_for(sim.kubeconfig("alpha"))
    try:
        with pytest.raises(aiohttp.ClientConnectorError):
            await client.VersionApi(api).get_code()
    finally:
        await api.close()
