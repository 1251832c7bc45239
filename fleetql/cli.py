"""The `fleetql` command: serve, migrate, import a kubeconfig, make and rotate keys."""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from fleetql.config import ConfigError, Settings, load_settings
from fleetql.logs import configure_logging
from fleetql.poller.heap import settle_heap

logger = logging.getLogger("fleetql")

_DEMO_EVERY = timedelta(seconds=10)

IMPORT_MUTATION = """
mutation Import($input: ImportClusterInput!) {
  importCluster(input: $input) {
    cluster { id name status apiServerUrl labels { key value } }
    userErrors { field code message }
  }
}
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # Text at INFO until a command has read its settings (``log`` section) and says otherwise.
    configure_logging()
    try:
        result: int = args.run(args)
    except ConfigError as error:
        print(f"fleetql: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetql", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the GraphQL server")
    _add_config(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument(
        "--no-migrate", action="store_true", help="do not apply database migrations at start"
    )
    serve.add_argument(
        "--demo",
        type=int,
        default=0,
        metavar="N",
        help="also simulate N clusters in-process, import them and check them every 10s",
    )
    serve.add_argument(
        "--demo-nodes", type=int, default=20, metavar="M", help="nodes per demo cluster (20)"
    )
    serve.set_defaults(run=_serve)

    simulate = commands.add_parser(
        "simulate", help="simulate Kubernetes clusters over TLS and write their kubeconfigs"
    )
    simulate.add_argument("--clusters", type=int, default=20, help="how many (default 20)")
    simulate.add_argument("--nodes", type=int, default=50, help="nodes per cluster (default 50)")
    simulate.add_argument("--out", type=Path, required=True, help="folder for <name>.yaml files")
    simulate.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    simulate.add_argument("--port", type=int, default=0, help="HTTPS port (default: any free)")
    simulate.add_argument("--prefix", default="sim", help="cluster name prefix (default sim)")
    simulate.set_defaults(run=_simulate)

    poll = commands.add_parser("poll", help="run only the health poller (no API)")
    _add_config(poll)
    poll.add_argument(
        "--once", action="store_true", help="check every cluster that is due now, then exit"
    )
    poll.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve this process's /metrics on PORT (default: metrics.poller_port, off)",
    )
    poll.add_argument(
        "--metrics-host", metavar="HOST", help="address for /metrics (default 127.0.0.1)"
    )
    poll.set_defaults(run=_poll)

    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    _add_config(migrate)
    migrate.set_defaults(run=_migrate)

    do_import = commands.add_parser("import", help="import a cluster through the GraphQL API")
    do_import.add_argument("kubeconfig", type=Path, metavar="PATH-TO-KUBECONFIG")
    do_import.add_argument("--name", required=True)
    do_import.add_argument("--context", help="kubeconfig context (default: current-context)")
    do_import.add_argument("--description", default="")
    do_import.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    do_import.add_argument("--url", default="http://127.0.0.1:8080/graphql")
    do_import.add_argument(
        "--token",
        default=os.environ.get("FLEETQL_TOKEN"),
        help="bearer token (an API token or a JWT); default: $FLEETQL_TOKEN",
    )
    do_import.set_defaults(run=_import)

    keygen = commands.add_parser("generate-key", help="print a new encryption key (base64)")
    keygen.set_defaults(run=_generate_key)

    rotate = commands.add_parser(
        "rotate-key",
        help="rewrap every stored data key onto the primary key (online, resumable)",
    )
    _add_config(rotate)
    rotate.add_argument(
        "--batch-size", type=int, default=100, metavar="N", help="records per transaction (100)"
    )
    rotate.set_defaults(run=_rotate_key)

    sdl = commands.add_parser("schema", help="print the GraphQL schema (SDL)")
    sdl.set_defaults(run=_print_schema)
    return parser


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("FLEETQL_CONFIG"),
        help="YAML settings file (default: $FLEETQL_CONFIG; environment variables override it)",
    )


def _settings(args: argparse.Namespace, server: dict[str, Any] | None = None) -> Settings:
    """The command's settings; its logging follows their ``log`` section from here on."""
    settings = load_settings(args.config, overrides={"server": server} if server else None)
    configure_logging(settings.log.level, settings.log.format)
    return settings


def _serve(args: argparse.Namespace) -> int:
    from fleetql.app import create_app
    from fleetql.server import FleetServer, uvicorn_config

    if args.demo < 0 or args.demo_nodes < 0:
        print("fleetql: --demo and --demo-nodes must not be negative", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = _settings(args, overrides)
    if args.demo:
        # A demo should move: check its clusters often, whatever the configured interval.
        poller = settings.poller.model_copy(
            update={"enabled": True, "check_interval": _DEMO_EVERY, "retry_delay": _DEMO_EVERY / 2}
        )
        settings = settings.model_copy(update={"poller": poller})
    app = create_app(
        settings,
        migrate=not args.no_migrate,
        demo_clusters=args.demo,
        demo_nodes=args.demo_nodes,
    )
    config = uvicorn_config(app, settings, log_level=settings.server.log_level)
    # SIGTERM: /readyz fails, websockets close with 1012, the poller releases its claims, running
    # requests finish within server.shutdown_grace, the pools close, exit 0 (README, Shutdown).
    server = FleetServer(config, on_shutdown=app.state.drain.begin)
    settle_heap()  # modules, settings and the app are built: out of the collector's sight
    server.run()
    return 0 if server.started else 1


def _simulate(args: argparse.Namespace) -> int:
    """``python -m fleetql.sim`` under the project's command, with ``--out`` for the files."""
    from fleetql.sim.__main__ import main as simulate

    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # one banner is enough
    return simulate(
        [
            *("--clusters", str(args.clusters), "--nodes", str(args.nodes)),
            *("--host", args.host, "--port", str(args.port), "--prefix", args.prefix),
            *("--kubeconfig-dir", str(args.out)),
        ]
    )


def _migrate(args: argparse.Namespace) -> int:
    from fleetql.app import open_services

    async def run() -> None:
        async with open_services(_settings(args), migrate=True, relay_events=False):
            logger.info("database is at the latest migration")

    asyncio.run(run())
    return 0


def _poll(args: argparse.Namespace) -> int:
    from fleetql.app import open_services
    from fleetql.metrics.standalone import serving_metrics
    from fleetql.poller.client import ClientPolicy
    from fleetql.poller.pool import ClientPool
    from fleetql.poller.service import running_poller
    from fleetql.poller.worker import Poller

    settings = _settings(args)
    metrics_port = (
        args.metrics_port if args.metrics_port is not None else settings.metrics.poller_port
    )
    metrics_host = args.metrics_host or settings.metrics.poller_host
    if metrics_port is not None and not 0 <= metrics_port <= 65_535:
        print("fleetql: --metrics-port must be between 0 and 65535", file=sys.stderr)
        return 2

    async def run() -> None:
        # API replicas relay the events this process logs (see README, "Several replicas").
        async with open_services(settings, migrate=False, relay_events=False) as services:
            settle_heap()  # modules, settings and the engine are built
            if args.once:
                async with ClientPool(max_clients=settings.cluster_manager.max_clients) as pool:
                    poller = Poller(
                        sessions=services.sessions,
                        cipher=services.cipher,
                        settings=settings.poller,
                        pool=pool,
                        publish=services.relay.wake_after,
                        client_policy=ClientPolicy.from_settings(settings),
                    )
                    logger.info("checked %d clusters", await poller.sweep())
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            with ExitStack() as exposed:
                if metrics_port is not None:
                    exposed.enter_context(
                        serving_metrics(
                            services.metrics.registry, host=metrics_host, port=metrics_port
                        )
                    )
                async with running_poller(
                    settings,
                    sessions=services.sessions,
                    cipher=services.cipher,
                    publish=services.relay.wake_after,
                    metrics=services.metrics,
                ):
                    await stop.wait()
            logger.info("poller stopped")

    asyncio.run(run())
    return 0


def _import(args: argparse.Namespace) -> int:
    try:
        data = args.kubeconfig.read_bytes()
    except OSError as error:
        print(f"fleetql: cannot read {args.kubeconfig}: {error.strerror}", file=sys.stderr)
        return 2
    labels = []
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"fleetql: --label {item!r} must be KEY=VALUE", file=sys.stderr)
            return 2
        labels.append({"key": key, "value": value})
    variables = {
        "input": {
            "name": args.name,
            "description": args.description,
            "kubeconfig": base64.b64encode(data).decode(),
            "context": args.context,
            "labels": labels,
        }
    }
    try:
        response = httpx.post(
            args.url,
            json={"query": IMPORT_MUTATION, "variables": variables},
            headers={"authorization": f"Bearer {args.token}"} if args.token else {},
            timeout=60,
        )
    except httpx.HTTPError as error:
        print(f"fleetql: cannot reach {args.url}: {error}", file=sys.stderr)
        return 1
    try:
        body = response.json()
    except ValueError:
        print(f"fleetql: {args.url} answered HTTP {response.status_code}", file=sys.stderr)
        return 1
    if body.get("errors"):
        for graphql_error in body["errors"]:
            print(f"fleetql: {graphql_error.get('message')}", file=sys.stderr)
        return 1
    payload = body["data"]["importCluster"]
    for user_error in payload["userErrors"]:
        print(
            f"fleetql: {user_error['field']}: {user_error['code']}: {user_error['message']}",
            file=sys.stderr,
        )
    if payload["cluster"] is None:
        return 1
    cluster = payload["cluster"]
    print(f"imported {cluster['name']} ({cluster['id']}), status {cluster['status']}")
    return 0


def _generate_key(args: argparse.Namespace) -> int:
    from fleetql.crypto import EncryptionKey

    print(EncryptionKey.generate().to_base64())
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    """Exit 0 once no record uses a key other than the primary; 1 while some still do."""
    from fleetql.app import open_services
    from fleetql.rotation import rotate_keys

    if args.batch_size < 1:
        print("fleetql: --batch-size must be at least 1", file=sys.stderr)
        return 2
    settings = _settings(args)

    async def run() -> int:
        async with open_services(settings, migrate=False, relay_events=False) as services:
            cipher = services.cipher
            others = sorted(cipher.key_ids - {cipher.key_id})
            print(f"primary key {cipher.key_id}; other keys: {', '.join(others) or 'none'}")
            report = await rotate_keys(
                services.sessions,
                cipher,
                batch_size=args.batch_size,
                progress=lambda line: print(line, flush=True),
            )
        print(f"rewrapped {report.rewrapped} records onto key {report.primary}")
        for cluster_id, problem in sorted(report.failed.items()):
            print(f"cannot rewrap cluster {cluster_id}: {problem}", file=sys.stderr)
        for key_id in sorted({*others, *report.found, *report.retired, *report.remaining}):
            if key_id in report.remaining:
                print(f"{report.remaining[key_id]} records still use key {key_id}")
            else:
                print(f"no record uses key {key_id} any more; it may be removed from the ring")
        return 0 if report.complete else 1

    return asyncio.run(run())


def _print_schema(args: argparse.Namespace) -> int:
    from fleetql.schema import build_schema

    print(build_schema().as_str())
    return 0


if __name__ == "__main__":
    sys.exit(main())
