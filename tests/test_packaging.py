"""The Dockerfile and compose.yaml: what they promise, checked without Docker where it is absent.

Docker builds and runs them where a daemon answers (``test_image_builds_where_docker_runs``);
everywhere else these tests parse both files and check each promise that can be checked without
one: stages, user, health check, what the final stage installs; the compose services, their
settings (loaded by fleetql's own settings code) and commands (parsed by fleetql's own CLI
parser); that an installed copy of the package, with no source tree beside it, finds its
migrations where the Dockerfile puts them; and that the compose demo's path — the simulator
writing kubeconfigs for a host name, fleetql importing and checking them — works.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetql.cli import _parser
from fleetql.config import PollerSettings, Settings, load_settings
from fleetql.crypto import EncryptionKey, KubeconfigCipher
from fleetql.db import migrations
from fleetql.db.engine import create_engine, create_session_factory
from fleetql.poller.pool import ClientPool
from fleetql.poller.worker import Poller
from tests.conftest import GraphQLClient, free_port

REPO = Path(__file__).resolve().parents[1]

# --- Dockerfile ---------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [arguments for word, arguments in self.instructions if word == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions (continuation lines joined, comments dropped), grouped by ``FROM``."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif keyword == "ARG" and not stages:
            continue  # an ARG before the first FROM parameterises the base images
        else:
            assert stages, f"{keyword} before any FROM"
            stages[-1].instructions.append((keyword, arguments.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


def test_dockerfile_is_multi_stage_on_a_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert all("python" in stage.base and "-slim" in stage.base for stage in stages)
    build, final = stages[0], stages[-1]
    assert build.name is not None
    copies = final.arguments("COPY")
    assert any(f"--from={build.name}" in copy for copy in copies), copies


def test_final_stage_runs_as_an_unprivileged_user(stages: list[Stage]) -> None:
    users = stages[-1].arguments("USER")
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_final_stage_has_no_compiler_and_checks_readyz(stages: list[Stage]) -> None:
    final = stages[-1]
    runs = " ".join(final.arguments("RUN"))
    for compiler in ("gcc", "build-essential", "g++", "clang", "make "):
        assert compiler not in runs
    # The compiler the build stage may use stays there.
    assert all(
        f"--from={stages[0].name}" in c or "--from" not in c for c in final.arguments("COPY")
    )
    healthchecks = final.arguments("HEALTHCHECK")
    assert len(healthchecks) == 1 and "/readyz" in healthchecks[0]
    assert final.arguments("ENTRYPOINT") == ['["fleetql"]']


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    rules = (REPO / ".dockerignore").read_text().split()
    assert "*" in rules  # everything is excluded unless listed
    assert {"!fleetql/", "!alembic/", "!pyproject.toml"} <= set(rules)


def test_an_installed_copy_finds_its_migrations_where_the_dockerfile_puts_them(
    tmp_path: Path,
) -> None:
    # What `pip install .` lays out (the package alone in site-packages, no alembic/ beside
    # it), in a fresh virtualenv whose prefix is the one the Dockerfile copies alembic/ into.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = tmp_path / "site"
    shutil.copytree(
        REPO / "fleetql", site / "fleetql", ignore=shutil.ignore_patterns("__pycache__")
    )
    dependencies = next(p for p in sys.path if p.endswith("site-packages"))
    probe = (
        "import fleetql, fleetql.db.migrations as m; "
        "print(fleetql.__file__); print(m.alembic_dir()); print(m.head_revision())"
    )
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"{site}{os.pathsep}{dependencies}"}
    python = venv / "bin" / "python"

    missing = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert missing.returncode != 0
    assert "cannot find fleetql's migrations" in missing.stderr

    shutil.copytree(REPO / "alembic", venv / "share" / "fleetql" / "alembic")
    found = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    package, folder, head = found.stdout.split()
    assert package.startswith(str(site))
    assert Path(folder) == venv / "share" / "fleetql" / "alembic"
    assert head == migrations.head_revision()


# --- compose.yaml -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
    return document


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", ["serve"])
    return shlex.split(command) if isinstance(command, str) else list(command)


def _replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("fleetql") and _command(service)[:1] == ["serve"]
    }


def test_compose_runs_postgres_and_two_replicas_sharing_it_over_postgres_events(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert "postgres" in services and "healthcheck" in services["postgres"]
    replicas = _replicas(compose)
    assert len(replicas) >= 2, sorted(replicas)
    urls = set()
    for name, service in replicas.items():
        environment = {k: str(v) for k, v in service["environment"].items()}
        # fleetql's own settings code accepts every variable the file sets.
        settings: Settings = load_settings(environ=environment)
        assert settings.events.url == "postgres://", name
        assert settings.database.url is not None and "@postgres:" in settings.database.url
        urls.add(settings.database.url)
        assert settings.server.host == "0.0.0.0"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        # Docker's kill deadline is longer than the drain.
        grace = settings.server.shutdown_grace.total_seconds()
        assert float(str(service["stop_grace_period"]).removesuffix("s")) > grace
    assert len(urls) == 1, "the replicas must share one database"
    assert len({str(s.get("ports")) for s in replicas.values()}) == len(replicas)


def test_compose_commands_are_fleetql_commands(compose: dict[str, Any]) -> None:
    parser = _parser()
    services = compose["services"]
    for service in services.values():
        if service.get("image", "").startswith("fleetql") and "entrypoint" not in service:
            parser.parse_args(_command(service))  # exits (fails the test) on a bad flag
    migrate = [n for n, s in services.items() if _command(s) == ["migrate"]]
    assert migrate, "no service migrates the database"
    for service in _replicas(compose).values():
        assert service["depends_on"][migrate[0]]["condition"] == "service_completed_successfully"


def test_compose_runs_the_simulator_and_imports_its_fleet(compose: dict[str, Any]) -> None:
    services = compose["services"]
    simulator = services["simulator"]
    command = _command(simulator)
    arguments = _parser().parse_args(command)
    assert command[0] == "simulate" and arguments.clusters > 0
    # The kubeconfigs name the simulator by the host name the other containers reach it by.
    assert arguments.host == simulator["hostname"] == "simulator"
    assert "healthcheck" in simulator
    importer = services["demo-import"]
    script = " ".join(_command(importer))
    assert "fleetql import" in script and str(arguments.out) in script
    assert importer["depends_on"]["simulator"]["condition"] == "service_healthy"
    volume = simulator["volumes"][0].split(":")
    assert volume == importer["volumes"][0].split(":")
    assert str(arguments.out).startswith(volume[1])


def _local_hostname() -> str | None:
    """This machine's name when it resolves to a loopback address (as a compose service's own
    name resolves to its container), else None."""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        return None
    return name if address.startswith("127.") and name not in ("localhost",) else None


async def test_the_compose_demo_path_works_here(
    api: GraphQLClient, settings: Settings, database_url: str, tmp_path: Path
) -> None:
    """``fleetql simulate --host NAME --out DIR``, then ``fleetql import`` of each file, as the
    compose file runs them, against a real server; a poller then finds the clusters HEALTHY."""
    host = _local_hostname()
    if host is None:
        pytest.skip("this machine's host name does not resolve to a loopback address")
    out = tmp_path / "kubeconfigs"
    base = [sys.executable, "-m", "fleetql"]
    simulator = await asyncio.create_subprocess_exec(
        *base,
        *("simulate", "--clusters", "2", "--nodes", "3", "--host", host),
        *("--port", str(free_port()), "--prefix", "demo", "--out", str(out)),
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    engine = create_engine(database_url, settings.database)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not (out / "demo-002.yaml").exists():
            assert simulator.returncode is None and loop.time() < deadline, "no kubeconfigs"
            await asyncio.sleep(0.05)
        assert f"https://{host}:" in (out / "demo-001.yaml").read_text()
        for path in sorted(out.glob("*.yaml")):
            imported = await asyncio.to_thread(
                subprocess.run,
                [*base, "import", str(path), "--name", path.stem, "--url", api.url],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            assert imported.returncode == 0, imported.stderr
        assert settings.encryption.key is not None
        poller = Poller(
            sessions=create_session_factory(engine),
            cipher=KubeconfigCipher(EncryptionKey.from_base64(settings.encryption.key)),
            settings=PollerSettings.model_validate({"client_timeout": "5s"}),
            pool=ClientPool(),
        )
        try:
            assert await poller.sweep() == 2
        finally:
            await poller.pool.aclose()
        listing = await api.data("{ clusters { items { name status nodeCount } } }")
        assert listing["clusters"]["items"] == [
            {"name": "demo-001", "status": "HEALTHY", "nodeCount": 3},
            {"name": "demo-002", "status": "HEALTHY", "nodeCount": 3},
        ]
    finally:
        simulator.terminate()
        await asyncio.wait_for(simulator.wait(), 30)
        await engine.dispose()


# --- README ---------------------------------------------------------------------------------------


def test_readme_alert_rules_parse_and_use_the_exported_metric_names() -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("Example Prometheus alert rules", 1)[1].split("```yaml", 1)[1]
    rules = yaml.safe_load(block.split("```", 1)[0])["groups"][0]["rules"]
    used = {name for rule in rules for name in re.findall(r"\bfleetql_[a-z_]+", rule["expr"])}
    # Every metric a rule uses is one fleetql exports (declared in fleetql/metrics/).
    declared = "".join(path.read_text() for path in (REPO / "fleetql" / "metrics").glob("*.py"))
    assert used and all(f'"{name}"' in declared for name in used), used
    unreachable = next(rule for rule in rules if rule["alert"] == "FleetqlClusterUnreachable")
    assert unreachable["for"] == "10m"


def _docker_runs() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        return False
    return info.returncode == 0


@pytest.mark.skipif(not _docker_runs(), reason="no Docker daemon here (README: what was tried)")
def test_image_builds_where_docker_runs() -> None:
    subprocess.run(["docker", "compose", "config", "--quiet"], cwd=REPO, check=True)
    subprocess.run(["docker", "build", "--tag", "fleetql:test", "."], cwd=REPO, check=True)
    user = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "id", "fleetql:test", "-u"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert user.stdout.strip() != "0"
    for compiler in ("gcc", "cc"):
        found = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--entrypoint",
                "sh",
                "fleetql:test",
                "-c",
                f"command -v {compiler}",
            ],
            capture_output=True,
        )
        assert found.returncode != 0, f"{compiler} is in the final image"
