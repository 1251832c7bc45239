"""Injected faults, client-certificate users, node images and request counters of the simulator.

Each fault is seen through a real TLS client trusting only the simulator's CA: httpx, a raw
asyncio stream where the bytes on the wire matter (a reset must be a reset), or kubernetes_asyncio
as the poller uses it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import orjson
import pytest
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from fleetql.sim import SimCluster, Simulator

CAPTURES = Path(__file__).resolve().parent / "k8s_captures"
NODES = "/api/v1/nodes"
METRICS = "/apis/metrics.k8s.io/v1beta1/nodes"


def capture_json(name: str) -> Any:
    return json.loads((CAPTURES / name).read_text())


async def eventually(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as simulator:
        yield simulator


def trusting(sim: Simulator) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=sim.ca_pem.decode())


@pytest.fixture
async def http(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=trusting(sim), timeout=5) as session:
        yield session


async def get(http: httpx.AsyncClient, cluster: SimCluster, path: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {cluster.spec.token}"}
    return await http.get(cluster.server_url + path, headers=headers)


@contextlib.asynccontextmanager
async def api_client(kubeconfig: dict[str, Any]) -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration()
    await config.load_kube_config_from_dict(kubeconfig, client_configuration=configuration)
    api = client.ApiClient(configuration=configuration)
    try:
        yield api
    finally:
        await api.close()


async def raw_get(sim: Simulator, cluster: SimCluster, path: str) -> bytes:
    """One HTTP/1.1 GET over a fresh TLS stream; everything the server sent until it closed."""
    url = urlsplit(cluster.server_url)
    assert url.hostname is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port, ssl=trusting(sim))
    try:
        request = (
            f"GET {url.path}{path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {cluster.spec.token}\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# Client certificates


async def test_client_certificate_kubeconfig_authenticates_as_its_common_name(
    sim: Simulator,
) -> None:
    sim.add_cluster("alpha", node_count=2)
    kubeconfig = sim.kubeconfig("alpha", auth="client-certificate")
    [user] = kubeconfig["users"]
    assert set(user["user"]) == {"client-certificate-data", "client-key-data"}
    assert b"BEGIN CERTIFICATE" in base64.b64decode(user["user"]["client-certificate-data"])
    async with api_client(kubeconfig) as api:
        nodes = await client.CoreV1Api(api).list_node()
        assert len(nodes.items) == 2
    assert "token" in sim.kubeconfig("alpha")["users"][0]["user"]
    assert sim.kubeconfig("alpha", token="t")["users"][0]["user"] == {"token": "t"}
    with pytest.raises(ValueError, match="token"):
        sim.kubeconfig("alpha", auth="client-certificate", token="t")


async def test_client_certificate_user_is_the_identity_rbac_refuses(sim: Simulator) -> None:
    sim.add_cluster("alpha", forbid_nodes=True)
    kubeconfig = sim.kubeconfig("alpha", auth="client-certificate", common_name="jane")
    async with api_client(kubeconfig) as api:
        with pytest.raises(ApiException) as raised:
            await client.CoreV1Api(api).list_node()
    assert raised.value.status == 403
    assert 'User "jane" cannot list resource "nodes"' in orjson.loads(raised.value.body)["message"]


async def test_kubeconfig_yaml_is_the_kubeconfig_as_yaml(sim: Simulator) -> None:
    sim.add_cluster("alpha")
    assert yaml.safe_load(sim.kubeconfig_yaml("alpha")) == sim.kubeconfig("alpha")
    document = yaml.safe_load(sim.kubeconfig_yaml("alpha", auth="client-certificate"))
    assert "client-key-data" in document["users"][0]["user"]


# forbid_nodes


async def test_forbidden_nodes_answer_the_rbac_status_for_the_identity(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha", node_count=2, forbid_nodes=True)
    listing = await get(http, cluster, NODES)
    assert listing.status_code == 403
    expected = capture_json("status-403-nodes.json")
    expected["message"] = expected["message"].replace(
        "system:serviceaccount:default:nobody", "kubernetes-admin"
    )
    assert list(listing.json().items()) == list(expected.items())
    single = await get(http, cluster, f"{NODES}/alpha-node-0001")
    assert single.status_code == 403
    assert single.json()["message"].startswith(
        'nodes "alpha-node-0001" is forbidden: User "kubernetes-admin" cannot get resource'
    )
    assert single.json()["details"] == {"name": "alpha-node-0001", "kind": "nodes"}
    for path in ("/version", "/readyz", "/api", "/apis", METRICS):
        assert (await get(http, cluster, path)).status_code == 200, path
    cluster.spec.forbid_nodes = False
    assert (await get(http, cluster, NODES)).status_code == 200


# malformed_json


async def test_malformed_json_cuts_every_200_json_answer_but_not_health_text(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha", malformed_json=True)
    for path in ("/version", NODES, f"{NODES}?limit=2", "/api", "/apis", METRICS):
        response = await get(http, cluster, path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == "application/json"
        assert response.content, path
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)
    assert (await get(http, cluster, "/readyz")).text == "ok"
    missing = await get(http, cluster, f"{NODES}/nope")
    assert (missing.status_code, missing.json()["reason"]) == (404, "NotFound")
    cluster.spec.malformed_json = False
    assert (await get(http, cluster, "/version")).json()["gitVersion"] == "v1.28.7"


# reset_connections


@pytest.mark.parametrize("own_port", [False, True])
async def test_reset_connections_resets_the_tcp_connection_without_an_answer(
    sim: Simulator, own_port: bool
) -> None:
    cluster = sim.add_cluster("alpha", own_port=own_port, reset_connections=True)
    with pytest.raises(ConnectionResetError):
        await raw_get(sim, cluster, "/version")
    assert cluster.requests_by_path["/version"] == 1
    async with api_client(sim.kubeconfig("alpha")) as api:
        with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
            await client.VersionApi(api).get_code()
        cluster.spec.reset_connections = False
        assert (await client.VersionApi(api).get_code()).git_version == "v1.28.7"
    assert (await raw_get(sim, cluster, "/version")).startswith(b"HTTP/1.1 200 OK\r\n")


# wrong_ca


async def test_wrong_ca_fails_verification_of_new_connections_and_resets_open_ones(
    sim: Simulator,
) -> None:
    cluster = sim.add_cluster("alpha", own_port=True)
    async with httpx.AsyncClient(verify=trusting(sim), timeout=5) as http:
        assert (await get(http, cluster, "/version")).status_code == 200
        cluster.spec.wrong_ca = True
        # The open keep-alive connection is reset at its next request ...
        with pytest.raises(httpx.TransportError):
            await get(http, cluster, "/version")
        # ... and a new one is served a certificate the simulator's CA did not sign.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await get(http, cluster, "/version")
    async with api_client(sim.kubeconfig("alpha")) as api:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await client.VersionApi(api).get_code()
        cluster.spec.wrong_ca = False
        assert (await client.VersionApi(api).get_code()).git_version == "v1.28.7"


async def test_wrong_ca_needs_a_cluster_with_its_own_port(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="own_port=True"):
        sim.add_cluster("alpha", wrong_ca=True)
    assert "alpha" not in sim.clusters


# auth_fails


async def test_auth_fails_refuses_even_the_right_token_and_certificate(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    cluster = sim.add_cluster("alpha", auth_fails=True)
    expected = list(capture_json("status-401.json").items())
    for path in (NODES, "/version", "/readyz"):
        response = await get(http, cluster, path)
        assert response.status_code == 401, path
        assert list(response.json().items()) == expected
    assert (await http.get(cluster.server_url + "/version")).status_code == 401
    async with api_client(sim.kubeconfig("alpha", auth="client-certificate")) as api:
        with pytest.raises(ApiException) as raised:
            await client.VersionApi(api).get_code()
        assert raised.value.status == 401
        cluster.spec.auth_fails = False
        assert (await client.VersionApi(api).get_code()).git_version == "v1.28.7"


# Node images


_DIGEST_NAME = re.compile(r"^[a-z0-9.-]+(/[a-z0-9._-]+)+@sha256:[0-9a-f]{64}$")
_TAG_NAME = re.compile(r"^[a-z0-9.-]+(/[a-z0-9._-]+)+:[A-Za-z0-9._-]+$")


async def test_nodes_carry_a_kubelets_image_list(sim: Simulator, http: httpx.AsyncClient) -> None:
    cluster = sim.add_cluster("alpha", node_count=50, version="v1.29.2")
    response = await get(http, cluster, NODES)
    # A real 50-node NodeList is about half a megabyte, most of it images.
    assert 350_000 < len(response.content) < 700_000
    items = response.json()["items"]
    for node in items:
        status = node["status"]
        assert list(status)[-2:] == ["nodeInfo", "images"]
        images = status["images"]
        assert 10 <= len(images) <= 40
        sizes = [image["sizeBytes"] for image in images]
        assert sizes == sorted(sizes, reverse=True), "kubelet lists the largest first"
        for image in images:
            assert list(image) == ["names", "sizeBytes"]
            assert type(image["sizeBytes"]) is int and image["sizeBytes"] > 0
            digest, *tags = image["names"]
            assert _DIGEST_NAME.match(digest), digest
            assert tags and all(_TAG_NAME.match(tag) for tag in tags), tags
        assert "registry.k8s.io/kube-proxy:v1.29.2" in {n for i in images for n in i["names"]}
    assert len({json.dumps(node["status"]["images"]) for node in items}) > 40
    status_fields = items[0]["metadata"]["managedFields"][1]["fieldsV1"]["f:status"]
    assert "f:images" in status_fields


async def test_node_images_are_the_same_for_the_same_node(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    first = sim.add_cluster("alpha", node_count=3)
    before = [n["status"]["images"] for n in (await get(http, first, NODES)).json()["items"]]
    first.spec.ready_nodes = 1  # rendered again
    after = [n["status"]["images"] for n in (await get(http, first, NODES)).json()["items"]]
    assert before == after


# Counters


async def test_requests_are_counted_by_path_and_in_flight(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    slow = sim.add_cluster("slow", delay=0.3)
    other = sim.add_cluster("other", delay=0.3)
    calls = [(slow, "/version"), (slow, "/version"), (slow, NODES), (other, "/readyz")]
    requests = [asyncio.create_task(get(http, cluster, path)) for cluster, path in calls]
    await eventually(lambda: sim.in_flight == 4)
    assert (slow.in_flight, other.in_flight) == (3, 1)
    responses = await asyncio.gather(*requests)
    assert {response.status_code for response in responses} == {200}
    assert (sim.in_flight, slow.in_flight) == (0, 0)
    assert (sim.peak_in_flight, slow.peak_in_flight, other.peak_in_flight) == (4, 3, 1)
    assert slow.requests_by_path == {"/version": 2, NODES: 1}
    assert other.requests_by_path == {"/readyz": 1}
    sim.reset_peaks()
    assert (sim.peak_in_flight, slow.peak_in_flight, other.peak_in_flight) == (0, 0, 0)
    await get(http, other, "/readyz?verbose")
    assert (sim.peak_in_flight, other.peak_in_flight, slow.peak_in_flight) == (1, 1, 0)
    assert other.requests_by_path["/readyz"] == 2


async def test_client_hanging_up_during_a_delay_is_no_server_error(
    sim: Simulator, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    slow = sim.add_cluster("slow", delay=0.2)
    with pytest.raises(httpx.ReadTimeout):
        # Only the read is short: on a busy machine the TLS handshake alone can take 50 ms.
        await http.get(slow.server_url + "/version", timeout=httpx.Timeout(10.0, read=0.05))
    await eventually(lambda: slow.requests == 1 and slow.in_flight == 0)
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
