"""The foreground runner writes working kubeconfigs and stops cleanly, in process or as a CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import yaml
from kubernetes_asyncio import client, config

from fleetql.sim import SimCluster, Simulator, run_simulator

REPO = Path(__file__).resolve().parents[1]


async def test_run_simulator_writes_one_private_kubeconfig_per_cluster(tmp_path: Path) -> None:
    stop = asyncio.Event()
    started = asyncio.Event()
    seen: list[str] = []
    versions: list[str] = []

    def ready(sim: Simulator, fleet: list[SimCluster]) -> None:
        seen.extend(cluster.name for cluster in fleet)
        started.set()

    async def check_then_stop() -> None:
        await asyncio.wait_for(started.wait(), timeout=10)
        for name in seen:
            document = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
            configuration = client.Configuration()
            await config.load_kube_config_from_dict(document, client_configuration=configuration)
            api = client.ApiClient(configuration=configuration)
            try:
                versions.append((await client.VersionApi(api).get_code()).git_version)
            finally:
                await api.close()
        stop.set()

    checker = asyncio.create_task(check_then_stop())
    await run_simulator(clusters=2, nodes=3, kubeconfig_dir=tmp_path, on_ready=ready, stop=stop)
    await checker
    assert seen == ["sim-001", "sim-002"]
    assert versions == ["v1.28.7", "v1.28.7"]
    for name in seen:
        assert stat.S_IMODE((tmp_path / f"{name}.yaml").stat().st_mode) == 0o600


def test_module_command_serves_until_interrupted(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "-m",
        "fleetql.sim",
        "--clusters",
        "3",
        "--nodes",
        "2",
        "--port",
        "0",
    ]
    process = subprocess.Popen(
        [*command, "--kubeconfig-dir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        # The announcement comes after every kubeconfig is written (EOF if the command died).
        announcement = process.stdout.readline()
        assert "Simulating 3 clusters of 2 nodes" in announcement, process.communicate(timeout=15)
        server = yaml.safe_load((tmp_path / "sim-003.yaml").read_text())["clusters"][0]["cluster"][
            "server"
        ]
        assert server.startswith("https://127.0.0.1:") and server.endswith("/clusters/sim-003")
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
