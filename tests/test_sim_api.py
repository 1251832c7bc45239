"""The simulator answers like the real kube-apiserver captured in shared/k8s-captures.

Every request goes through a real TLS client that trusts only the simulator's CA.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fleetql.quantities import cpu_millicores, memory_bytes
from fleetql.sim import ClusterSpec, NodeShape, SimCluster, Simulator

CAPTURES = Path(__file__).resolve().parent / "k8s_captures"
# Fields whose keys are data (Go maps), not structure: the simulator may carry more keys there.
MAP_FIELDS = {"labels", "annotations", "capacity", "allocatable", "fieldsV1"}
# omitempty fields a real kubelet-registered node has and the captured (curl-made) nodes lack;
# status.images is checked against the kubelet's shape in test_sim_faults.py instead.
OPTIONAL_FIELDS = {"annotations", "images"}


def capture_json(name: str) -> Any:
    return json.loads((CAPTURES / name).read_text())


def assert_same_structure(actual: Any, expected: Any, path: str = "$") -> None:
    """Same keys (in the same order), nesting and JSON types as the capture; values may differ."""
    assert type(actual) is type(expected), (
        f"{path}: {type(actual).__name__} != {type(expected).__name__}"
    )
    if isinstance(expected, dict):
        key = path.rsplit(".", 1)[-1]
        if key in MAP_FIELDS:
            assert all(isinstance(k, str) for k in actual), path
            if key in ("capacity", "allocatable"):
                assert set(expected) <= set(actual), (
                    f"{path}: missing {set(expected) - set(actual)}"
                )
                assert all(isinstance(v, str) for v in actual.values()), path
            return
        extra = set(actual) - set(expected) - OPTIONAL_FIELDS
        missing = set(expected) - set(actual)
        assert not extra and not missing, f"{path}: extra {extra}, missing {missing}"
        common = [k for k in expected if k in actual]
        assert [k for k in actual if k in expected] == common, f"{path}: key order differs"
        for k in common:
            assert_same_structure(actual[k], expected[k], f"{path}.{k}")
    elif isinstance(expected, list):
        assert bool(actual) == bool(expected), f"{path}: one list is empty"
        for index, item in enumerate(actual):
            assert_same_structure(item, expected[min(index, len(expected) - 1)], f"{path}[{index}]")


async def eventually(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    """Poll ``condition`` until it holds, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        if condition():
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as simulator:
        yield simulator


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    context = ssl.create_default_context(cadata=sim.ca_pem.decode())
    async with httpx.AsyncClient(verify=context, timeout=5) as http:
        yield http


async def get(
    client: httpx.AsyncClient, cluster: SimCluster, path: str, *, token: str | None = None
) -> httpx.Response:
    headers = {"authorization": f"Bearer {token or cluster.spec.token}"}
    return await client.get(cluster.server_url + path, headers=headers)


async def test_version_is_the_captured_version_document(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha")
    response = await get(client, cluster, "/version")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert list(response.json().items()) == list(capture_json("version.json").items())


async def test_version_follows_the_spec_version(sim: Simulator, client: httpx.AsyncClient) -> None:
    cluster = sim.add_cluster("alpha", version="v1.30.2", go_version="go1.22.4")
    document = (await get(client, cluster, "/version")).json()
    assert (document["major"], document["minor"], document["gitVersion"]) == ("1", "30", "v1.30.2")
    assert document["goVersion"] == "go1.22.4"


async def test_health_endpoints_answer_plain_text_like_the_apiserver(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha")
    expected = {
        "/readyz": "readyz.txt",
        "/readyz?verbose": "readyz-verbose.txt",
        "/healthz": "healthz.txt",
        "/livez": "livez.txt",
    }
    for path, capture in expected.items():
        response = await get(client, cluster, path)
        assert response.status_code == 200, path
        assert response.content == (CAPTURES / capture).read_bytes(), path
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.headers["x-content-type-options"] == "nosniff"


async def test_node_list_has_the_captured_structure_and_headers(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha", node_count=3, ready_nodes=2)
    response = await get(client, cluster, "/api/v1/nodes")
    assert response.status_code == 200
    assert_same_structure(response.json(), capture_json("nodes.json"))
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-cache, private"
    for header in (
        "audit-id",
        "date",
        "x-kubernetes-pf-flowschema-uid",
        "x-kubernetes-pf-prioritylevel-uid",
    ):
        assert header in response.headers
    assert "server" not in response.headers


async def test_nodes_report_readiness_and_resources_from_the_spec(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    shapes = (
        NodeShape(cpu_capacity="8", cpu_allocatable="7500m", memory_allocatable="30Gi"),
        NodeShape(cpu_capacity="4", cpu_allocatable="3500m", memory_allocatable="14Gi"),
    )
    cluster = sim.add_cluster("alpha", node_count=3, ready_nodes=2, node_shapes=shapes)
    items = (await get(client, cluster, "/api/v1/nodes")).json()["items"]
    ready = [
        next(c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready") for n in items
    ]
    assert ready == ["True", "True", "False"]
    assert [n["status"]["allocatable"]["cpu"] for n in items] == ["7500m", "3500m", "7500m"]
    assert sum(cpu_millicores(n["status"]["allocatable"]["cpu"]) for n in items) == 18500
    assert memory_bytes(items[1]["status"]["allocatable"]["memory"]) == 14 * 2**30
    assert [n["metadata"]["name"] for n in items] == sorted(n["metadata"]["name"] for n in items)
    assert all(isinstance(n["metadata"]["resourceVersion"], str) for n in items)
    assert time.strptime(items[0]["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")


async def test_pagination_with_limit_and_continue_yields_every_node_once(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha", node_count=5, ready_nodes=4)
    pages = []
    path = "/api/v1/nodes?limit=2"
    while True:
        page = (await get(client, cluster, path)).json()
        pages.append(page)
        token = page["metadata"].get("continue")
        if not token:
            break
        path = f"/api/v1/nodes?limit=2&continue={token}"
    names = [item["metadata"]["name"] for page in pages for item in page["items"]]
    everything = (await get(client, cluster, "/api/v1/nodes")).json()
    assert names == [item["metadata"]["name"] for item in everything["items"]]
    assert len(set(names)) == 5
    assert [len(page["items"]) for page in pages] == [2, 2, 1]
    assert [page["metadata"].get("remainingItemCount") for page in pages] == [3, 1, None]
    assert_same_structure(pages[0], capture_json("nodes-limit2-page1.json"))
    assert_same_structure(pages[-1], capture_json("nodes-limit2-page2.json"))
    assert len({page["metadata"]["resourceVersion"] for page in pages}) == 1


async def test_continue_token_is_encoded_like_the_apiservers(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha", node_count=3)
    page = (await get(client, cluster, "/api/v1/nodes?limit=2")).json()

    def decode(token: str) -> Any:
        return orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))

    ours = decode(page["metadata"]["continue"])
    theirs = decode(capture_json("nodes-limit2-page1.json")["metadata"]["continue"])
    assert list(ours) == list(theirs) == ["v", "rv", "start"]
    assert ours["start"] == page["items"][-1]["metadata"]["name"] + "\x00"
    assert str(ours["rv"]) == page["metadata"]["resourceVersion"]


async def test_resource_version_zero_ignores_limit(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha", node_count=3, ready_nodes=2)
    page = (await get(client, cluster, "/api/v1/nodes?limit=2&resourceVersion=0")).json()
    assert len(page["items"]) == 3
    assert_same_structure(page, capture_json("nodes-limit2-rv0.json"))


async def test_garbled_continue_token_is_a_bad_request_status(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha")
    response = await get(client, cluster, "/api/v1/nodes?limit=2&continue=not-a-token")
    assert response.status_code == 400
    assert response.json()["reason"] == "BadRequest"


async def test_single_node_is_served_and_a_missing_one_is_a_not_found_status(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha", node_count=2)
    name = (await get(client, cluster, "/api/v1/nodes")).json()["items"][1]["metadata"]["name"]
    node = (await get(client, cluster, f"/api/v1/nodes/{name}")).json()
    assert (node["kind"], node["apiVersion"], node["metadata"]["name"]) == ("Node", "v1", name)
    missing = await get(client, cluster, "/api/v1/nodes/nope")
    assert missing.status_code == 404
    assert missing.json()["reason"] == "NotFound"


async def test_wrong_token_gets_the_captured_401_status(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha")
    for path in ("/api/v1/nodes", "/version", "/readyz"):
        response = await get(client, cluster, path, token="wrong")
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/json"
        assert list(response.json().items()) == list(capture_json("status-401.json").items())


async def test_another_clusters_token_is_rejected(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    alpha, beta = sim.add_cluster("alpha"), sim.add_cluster("beta")
    assert (await get(client, alpha, "/api/v1/nodes", token=beta.spec.token)).status_code == 401


async def test_no_credentials_gets_the_captured_403_status_but_may_read_public_paths(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha")
    response = await client.get(cluster.server_url + "/api/v1/nodes")
    assert response.status_code == 403
    assert list(response.json().items()) == list(capture_json("status-403-anonymous.json").items())
    for path in ("/version", "/readyz", "/healthz", "/livez"):
        assert (await client.get(cluster.server_url + path)).status_code == 200, path
    apis = await client.get(cluster.server_url + "/apis")
    assert apis.status_code == 403
    assert apis.json()["message"] == 'forbidden: User "system:anonymous" cannot get path "/apis"'


async def test_metrics_not_served_answers_404_in_plain_text(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha", metrics_served=False)
    response = await get(client, cluster, "/apis/metrics.k8s.io/v1beta1/nodes")
    assert response.status_code == 404
    assert response.content == (CAPTURES / "status-404-metrics.json").read_bytes()
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    apis = (await get(client, cluster, "/apis")).json()
    assert apis == capture_json("apis-discovery.json")


async def test_metrics_served_answers_a_node_metrics_list(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    shape = NodeShape(cpu_usage="123456789n", memory_usage="1234Ki")
    cluster = sim.add_cluster("alpha", node_count=3, node_shapes=(shape,))
    response = await get(client, cluster, "/apis/metrics.k8s.io/v1beta1/nodes")
    assert response.status_code == 200
    document = response.json()
    assert list(document) == ["kind", "apiVersion", "metadata", "items"]
    assert (document["kind"], document["apiVersion"]) == (
        "NodeMetricsList",
        "metrics.k8s.io/v1beta1",
    )
    nodes = (await get(client, cluster, "/api/v1/nodes")).json()["items"]
    assert [m["metadata"]["name"] for m in document["items"]] == [
        n["metadata"]["name"] for n in nodes
    ]
    for item in document["items"]:
        assert list(item) == ["metadata", "timestamp", "window", "usage"]
        assert item["usage"] == {"cpu": "123456789n", "memory": "1234Ki"}
        assert item["window"].endswith("s")
        assert time.strptime(item["timestamp"], "%Y-%m-%dT%H:%M:%SZ")
    groups = [group["name"] for group in (await get(client, cluster, "/apis")).json()["groups"]]
    assert groups[-1] == "metrics.k8s.io"


async def test_spec_change_is_reflected_on_the_next_request(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha", node_count=2)
    before = (await get(client, cluster, "/api/v1/nodes")).json()
    cluster.spec.ready_nodes = 1
    cluster.spec.node_count = 3
    cluster.spec.version = "v1.29.1"
    cluster.spec.metrics_served = False
    after = (await get(client, cluster, "/api/v1/nodes")).json()
    assert len(after["items"]) == 3
    ready = [
        next(c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready")
        for n in after["items"]
    ]
    assert ready == ["True", "False", "False"]
    assert {n["status"]["nodeInfo"]["kubeletVersion"] for n in after["items"]} == {"v1.29.1"}
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert (await get(client, cluster, "/version")).json()["gitVersion"] == "v1.29.1"
    assert (await get(client, cluster, "/apis/metrics.k8s.io/v1beta1/nodes")).status_code == 404


async def test_unchanged_spec_serves_the_same_cached_bytes(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha", node_count=50)
    first = await get(client, cluster, "/api/v1/nodes")
    second = await get(client, cluster, "/api/v1/nodes")
    assert first.content == second.content
    assert cluster.node_listing() is cluster.node_listing()


async def test_unknown_cluster_and_path_answer_404_page_not_found(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha")
    assert (await client.get(f"{sim.base_url}/clusters/nobody/version")).status_code == 404
    response = await get(client, cluster, "/apis/example.com/v1/things")
    assert (response.status_code, response.text) == (404, "404 page not found\n")


async def test_readyz_absent_answers_404_so_clients_fall_back_to_healthz(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha", readyz_served=False)
    readyz = await get(client, cluster, "/readyz")
    assert (readyz.status_code, readyz.text) == (404, "404 page not found\n")
    healthz = await get(client, cluster, "/healthz")
    assert (healthz.status_code, healthz.text) == (200, "ok")


async def test_failing_check_answers_500_with_the_verbose_failure_text(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha", failing_checks=("etcd",))
    for path in ("/readyz", "/readyz?verbose", "/healthz"):
        response = await get(client, cluster, path)
        assert response.status_code == 500, path
        lines = response.text.splitlines()
        assert "[-]etcd failed: reason withheld" in lines
        assert "[+]ping ok" in lines
        assert response.text.endswith(f"{path.split('?')[0][1:]} check failed\n")
    cluster.spec.failing_checks = ("shutdown",)
    cluster.spec.unhealthy_status = 503
    assert (await get(client, cluster, "/readyz")).status_code == 503
    assert (await get(client, cluster, "/healthz")).text == "ok"


async def test_slow_cluster_delays_its_responses_only(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    slow = sim.add_cluster("slow", delay=0.3)
    fast = sim.add_cluster("fast")
    started = time.monotonic()
    assert (await get(client, slow, "/version")).status_code == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        # Only the read is short: on a busy machine the TLS handshake alone can take 50 ms.
        await client.get(slow.server_url + "/version", timeout=httpx.Timeout(10.0, read=0.05))
    # Another cluster answers while the slow one is still holding a request back.
    slow.spec.delay = 30
    pending = asyncio.create_task(get(client, slow, "/version"))
    try:
        assert (await get(client, fast, "/version")).status_code == 200
        assert not pending.done()
    finally:
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)


async def test_hung_request_ends_when_the_simulator_stops() -> None:
    async with Simulator() as sim:
        cluster = sim.add_cluster("hung", delay=math.inf)
        context = ssl.create_default_context(cadata=sim.ca_pem.decode())
        async with httpx.AsyncClient(verify=context, timeout=5) as http:
            request = asyncio.create_task(http.get(cluster.server_url + "/version"))
            await eventually(lambda: cluster.requests > 0)
            assert not request.done()
            started = time.monotonic()
            await sim.__aexit__(None, None, None)
            response = await request
            assert response.status_code == 503
            assert time.monotonic() - started < 10  # not the delay: that is infinite


async def test_fail_next_fails_that_many_requests_then_recovers(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha")
    other = sim.add_cluster("beta")
    cluster.fail_next(2)
    first = await get(client, cluster, "/version")
    assert first.status_code == 503
    assert first.json()["reason"] == "ServiceUnavailable"
    assert (await get(client, other, "/version")).status_code == 200
    assert (await get(client, cluster, "/api/v1/nodes")).status_code == 503
    assert (await get(client, cluster, "/version")).status_code == 200
    cluster.fail_next(1, status=429)
    throttled = await get(client, cluster, "/version")
    assert (throttled.status_code, throttled.json()["reason"]) == (429, "TooManyRequests")


async def test_down_cluster_refuses_connections_then_comes_back(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha", own_port=True)
    assert f":{sim.port}/" not in cluster.server_url
    context = ssl.create_default_context(cadata=sim.ca_pem.decode())
    async with httpx.AsyncClient(verify=context) as pooled:
        assert (await get(pooled, cluster, "/version")).status_code == 200
        cluster.down = True
        assert cluster.down
        # The open keep-alive connection is reset, as when an apiserver dies.
        with pytest.raises(httpx.RemoteProtocolError):
            await get(pooled, cluster, "/version")
    async with httpx.AsyncClient(verify=context) as fresh:
        with pytest.raises(httpx.ConnectError):
            await get(fresh, cluster, "/version")
        cluster.down = False
        assert (await get(fresh, cluster, "/version")).status_code == 200
    assert (await get(client, sim.add_cluster("beta"), "/version")).status_code == 200


def test_down_needs_a_cluster_with_its_own_port() -> None:
    async def scenario() -> None:
        async with Simulator() as sim:
            cluster = sim.add_cluster("shared")
            with pytest.raises(ValueError, match="own_port=True"):
                cluster.down = True

    asyncio.run(scenario())


async def test_fleet_adds_numbered_clusters_with_the_node_count(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    fleet = sim.fleet(3, nodes=4)
    assert [c.name for c in fleet] == ["sim-001", "sim-002", "sim-003"]
    assert sim.server_url("sim-002") == f"{sim.base_url}/clusters/sim-002"
    assert len((await get(client, fleet[2], "/api/v1/nodes")).json()["items"]) == 4
    with pytest.raises(ValueError, match="taken"):
        sim.add_cluster("sim-001")


@pytest.mark.parametrize("node_count", [0, 1, 4])
def test_list_pages_and_single_nodes_are_exact_slices_of_the_rendered_list(node_count: int) -> None:
    cluster = SimCluster(ClusterSpec(name="c", token="t", node_count=node_count), server_url="x")
    listing = cluster.node_listing()
    items = orjson.loads(listing.full_body)["items"]
    assert [orjson.loads(listing.item(i)) for i in range(node_count)] == items
    for start in range(node_count + 1):
        for end in range(start, node_count + 1):
            page = orjson.loads(listing.page_body({"resourceVersion": "1"}, start, end))
            assert page["items"] == items[start:end]
