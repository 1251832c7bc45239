"""The `fleetql` command, run as users run it: in a subprocess, against real servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fleetql.config import Settings
from tests.conftest import GraphQLClient, free_port
from tests.kubeconfigs import TOKEN, KubeconfigFactory

FLEETQL = str(Path(sys.executable).parent / "fleetql")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLEETQL, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


async def test_import_command_imports_through_the_api(
    api: GraphQLClient, tmp_kubeconfig: Path
) -> None:
    result = run(
        "import",
        str(tmp_kubeconfig),
        "--name",
        "from-cli",
        "--label",
        "env=prod",
        "--label",
        "team=infra",
        "--url",
        api.url,
    )
    assert result.returncode == 0, result.stderr
    assert "imported from-cli" in result.stdout
    data = await api.data(
        '{ clusters(filter: {labelSelector: "env=prod,team=infra"}) { items { name } } }'
    )
    assert data["clusters"]["items"] == [{"name": "from-cli"}]
    assert TOKEN not in result.stdout + result.stderr


async def test_import_command_reports_user_errors_and_fails(
    api: GraphQLClient, tmp_path: Path, kubeconfigs: KubeconfigFactory
) -> None:
    path = tmp_path / "exec.yaml"
    path.write_text(kubeconfigs.yaml(user={"exec": {"command": "aws"}}))
    result = run("import", str(path), "--name", "Bad Name", "--url", api.url)
    assert result.returncode == 1
    assert "name: INVALID_NAME" in result.stderr
    assert "kubeconfig: UNSUPPORTED_AUTH" in result.stderr


def test_import_command_explains_a_bad_label_and_an_unreachable_server(
    tmp_kubeconfig: Path,
) -> None:
    bad = run("import", str(tmp_kubeconfig), "--name", "x", "--label", "novalue")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    port = free_port()
    down = run(
        "import", str(tmp_kubeconfig), "--name", "x", "--url", f"http://127.0.0.1:{port}/graphql"
    )
    assert down.returncode == 1 and "cannot reach" in down.stderr


def test_bad_setting_stops_serve_naming_the_key() -> None:
    env = {**os.environ, "FLEETQL_POLLER__CHECK_INTERVAL": "often"}
    result = run("serve", env=env)
    assert result.returncode == 2
    assert "poller.check_interval" in result.stderr


def test_schema_command_prints_the_sdl() -> None:
    result = run("schema")
    assert result.returncode == 0
    assert (Path(__file__).resolve().parents[1] / "schema.graphql").read_text() == result.stdout


def test_generate_key_prints_a_usable_key() -> None:
    from fleetql.crypto import EncryptionKey

    result = run("generate-key")
    assert EncryptionKey.from_base64(result.stdout.strip()).key_id


def test_serve_with_embedded_database_walkthrough(scratch_dir: Path, tmp_kubeconfig: Path) -> None:
    """The README's quick start: serve with nothing configured, import, list, stop cleanly."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEETQL_")}
    env.pop("DATABASE_URL", None)
    server = subprocess.Popen(
        [FLEETQL, "serve", "--port", str(port)],
        cwd=scratch_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                httpx.post(url, json={"query": "{ clusters { total } }"}, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        imported = run("import", str(tmp_kubeconfig), "--name", "laptop", "--url", url)
        assert imported.returncode == 0, imported.stderr
        listed = httpx.post(
            url, json={"query": "{ clusters { total items { name status } } }"}
        ).json()
        # The made-up cluster cannot be reached: its first check, if done yet, says so.
        [item] = listed["data"]["clusters"]["items"]
        assert item["name"] == "laptop" and item["status"] in ("UNKNOWN", "UNREACHABLE")
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
    # uvicorn re-raises SIGTERM after a graceful shutdown, as a well-behaved process does.
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert (scratch_dir / ".fleetql" / "encryption.key").exists()
    assert "generated a new encryption key" in output
    assert TOKEN not in output
    # The embedded PostgreSQL was stopped with the server.
    assert not (scratch_dir / ".fleetql" / "pgdata" / "postmaster.pid").exists()


async def test_poll_once_checks_due_clusters_and_exits(
    api: GraphQLClient, settings: Settings, database_url: str
) -> None:
    import asyncio

    import yaml

    from fleetql.sim import Simulator

    async with Simulator() as sim:
        sim.add_cluster("polled", node_count=2)
        imported = await api.data(
            "mutation($i: ImportClusterInput!) { importCluster(input: $i) { cluster { id } } }",
            {"i": {"name": "polled", "kubeconfig": yaml.safe_dump(sim.kubeconfig("polled"))}},
        )
        env = {key: value for key, value in os.environ.items() if not key.startswith("FLEETQL_")}
        env |= {
            "DATABASE_URL": database_url,
            "FLEETQL_ENCRYPTION_KEY": settings.encryption.key or "",
        }
        process = await asyncio.create_subprocess_exec(
            FLEETQL,
            "poll",
            "--once",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
    assert process.returncode == 0, output
    assert "checked 1 clusters" in output
    cluster_id = imported["importCluster"]["cluster"]["id"]
    state = await api.data(
        "query($id: ID!) { cluster(id: $id) { status nodeCount } }", {"id": cluster_id}
    )
    assert state["cluster"] == {"status": "HEALTHY", "nodeCount": 2}


async def test_poll_serves_its_own_metrics_until_stopped(
    api: GraphQLClient, settings: Settings, database_url: str
) -> None:
    """A poller-only process is scraped on its own port: its checks count there, and the port
    is given back when it stops."""
    import asyncio

    import yaml
    from prometheus_client.parser import text_string_to_metric_families

    from fleetql.sim import Simulator

    port = free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"

    def checks_ok() -> float:
        text = httpx.get(metrics_url, timeout=5).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "fleetql_cluster_checks_total" and sample.labels["result"] == "ok"
        )

    async with Simulator() as sim:
        sim.add_cluster("scraped", node_count=1)
        await api.data(
            "mutation($i: ImportClusterInput!) { importCluster(input: $i) { cluster { id } } }",
            {"i": {"name": "scraped", "kubeconfig": yaml.safe_dump(sim.kubeconfig("scraped"))}},
        )
        env = {key: value for key, value in os.environ.items() if not key.startswith("FLEETQL_")}
        env |= {
            "DATABASE_URL": database_url,
            "FLEETQL_ENCRYPTION_KEY": settings.encryption.key or "",
        }
        process = await asyncio.create_subprocess_exec(
            *(FLEETQL, "poll", "--metrics-port", str(port)),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.returncode is None, "fleetql poll exited early"
                try:
                    if await asyncio.to_thread(checks_ok) >= 1:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "no check counted on the poller's /metrics"
                await asyncio.sleep(0.2)
            text = (await asyncio.to_thread(httpx.get, metrics_url)).text
            assert "process_cpu_seconds_total" in text
            assert "fleetql_cluster_check_duration_seconds_bucket" in text
        finally:
            process.send_signal(signal.SIGTERM)
            output = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
    assert process.returncode == 0, output
    assert f"serving /metrics on http://127.0.0.1:{port}/metrics" in output
    assert TOKEN not in output
    with pytest.raises(httpx.TransportError):
        await asyncio.to_thread(httpx.get, metrics_url, timeout=2)


def test_poll_refuses_a_metrics_port_out_of_range() -> None:
    result = run("poll", "--metrics-port", "70000")
    assert result.returncode == 2
    assert "--metrics-port must be between 0 and 65535" in result.stderr


async def test_simulate_writes_importable_kubeconfigs(
    api: GraphQLClient, scratch_dir: Path
) -> None:
    import asyncio

    out = scratch_dir / "kubeconfigs"
    process = await asyncio.create_subprocess_exec(
        *(FLEETQL, "simulate", "--clusters", "3", "--nodes", "2", "--out", str(out)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        banner = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert banner.startswith("Simulating 3 clusters of 2 nodes at https://127.0.0.1:"), banner
        files = sorted(out.glob("*.yaml"))
        assert [f.name for f in files] == ["sim-001.yaml", "sim-002.yaml", "sim-003.yaml"]
        assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
        imported = await asyncio.to_thread(
            run, "import", str(files[0]), "--name", "sim-001", "--url", api.url
        )
        assert imported.returncode == 0, imported.stderr
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.communicate(), 30)


async def test_serve_demo_imports_a_live_fleet(
    api: GraphQLClient, settings: Settings, database_url: str
) -> None:
    import asyncio

    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEETQL_")}
    env |= {
        "DATABASE_URL": database_url,
        "FLEETQL_ENCRYPTION_KEY": settings.encryption.key or "",
    }
    process = await asyncio.create_subprocess_exec(
        *(FLEETQL, "serve", "--port", str(port), "--demo", "4", "--demo-nodes", "3"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/graphql"
    query = "{ clusters { total items { name status nodeCount labels { key value } } } }"
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                assert process.returncode is None
                try:
                    body = (await http.post(url, json={"query": query})).json()
                    items = body["data"]["clusters"]["items"]
                    if len(items) == 4 and all(i["status"] == "HEALTHY" for i in items):
                        break
                except httpx.TransportError:
                    pass
                assert loop.time() < deadline, "the demo fleet did not come up healthy"
                await asyncio.sleep(0.3)
    finally:
        process.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
    assert [i["name"] for i in items] == ["demo-001", "demo-002", "demo-003", "demo-004"]
    assert all(i["nodeCount"] == 3 for i in items)
    assert {"key": "fleetql.io/demo", "value": "true"} in items[0]["labels"]
    assert "demo: 4 simulated clusters" in output
