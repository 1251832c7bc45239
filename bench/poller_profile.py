"""Where a profiled sweep's CPU goes: cProfile self time summed by layer, and the costliest frames.

The driver profiles with ``time.process_time`` as the timer, so waiting (for the simulator, for
PostgreSQL, in epoll) costs nothing and the figures are CPU seconds. A C function is charged to
the layer of whoever called it, except the few whose cost is the point of the question: OpenSSL
(``_ssl``) is "TLS" and ``orjson`` is "JSON" wherever they are called from.
"""

from __future__ import annotations

import cProfile
import pstats
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["summarize_profile"]

# Package directory (the first path part under site-packages) → the layer it belongs to.
_PACKAGES = {
    "aiohttp": "aiohttp (HTTP client)",
    "multidict": "aiohttp (HTTP client)",
    "yarl": "aiohttp (HTTP client)",
    "propcache": "aiohttp (HTTP client)",
    "aiohappyeyeballs": "aiohttp (HTTP client)",
    "frozenlist": "aiohttp (HTTP client)",
    "aiosignal": "aiohttp (HTTP client)",
    "kubernetes_asyncio": "kubernetes_asyncio (ApiClient)",
    "dateutil": "kubernetes_asyncio (ApiClient)",
    "six": "kubernetes_asyncio (ApiClient)",
    "certifi": "kubernetes_asyncio (ApiClient)",
    "urllib3": "kubernetes_asyncio (ApiClient)",
    "sqlalchemy": "SQLAlchemy",
    "asyncpg": "asyncpg",
    "greenlet": "SQLAlchemy",
    "yaml": "YAML (kubeconfig parse)",
    "_yaml": "YAML (kubeconfig parse)",
    "cryptography": "decryption",
    "orjson": "JSON (orjson)",
}
# fleetql modules with a layer of their own; the rest of fleetql is "fleetql (poller)".
_FLEETQL = {
    "poller/nodes.py": "node summation",
    "quantities.py": "node summation",
    "crypto.py": "decryption",
}
_TOP = 25
# Synchronous steps of a check whose cumulative time is worth reporting: (file, function, label).
_SELECTED = (
    ("poller/worker.py", "_kubeconfig", "decrypt + yaml.safe_load of the kubeconfig"),
    ("poller/client.py", "build_api_client", "build_api_client (cold only)"),
    ("~", "<orjson.loads>", "orjson.loads (version, nodes, metrics)"),
    ("poller/nodes.py", "summarize_nodes", "summarize_nodes"),
    ("poller/nodes.py", "summarize_usage", "summarize_usage"),
)


def _layer(filename: str) -> str:
    if "site-packages/" in filename:
        package = filename.split("site-packages/", 1)[1].split("/", 1)[0]
        package = package.removesuffix(".py").split(".")[0]
        return _PACKAGES.get(package, "other stdlib")
    if "/fleetql/" in filename:
        inner = filename.split("/fleetql/", 1)[1]
        return _FLEETQL.get(inner, "fleetql (poller)")
    if "/asyncio/" in filename or filename.endswith(("selectors.py", "socket.py")):
        return "event loop (asyncio)"
    if filename.endswith("ssl.py"):
        return "TLS (OpenSSL)"
    return "other stdlib"


def _builtin_layer(name: str, caller_layer: str) -> str:
    if "_ssl." in name or "SSLContext" in name:
        return "TLS (OpenSSL)"
    if "orjson" in name:
        return "JSON (orjson)"
    if "decimal.Decimal" in name:
        return "node summation"
    return caller_layer


def _charge(raw: dict[Any, Any]) -> dict[str, float]:
    """Self time by layer; a C function's time goes to its caller's layer unless named above."""
    layers: dict[str, float] = defaultdict(float)
    for (filename, _line, name), (_cc, _nc, self_time, _cum, callers) in raw.items():
        if filename != "~":
            layers[_layer(filename)] += self_time
            continue
        if not callers:
            layers[_builtin_layer(name, "other stdlib")] += self_time
        for (caller_file, _l, _n), edge in callers.items():
            caller = _layer(caller_file) if caller_file != "~" else "other stdlib"
            layers[_builtin_layer(name, caller)] += edge[2]
    return layers


def _frame(filename: str, line: int, name: str) -> str:
    if filename == "~":
        return name
    parts = Path(filename).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else filename
    return f"{short}:{line}({name})"


def _top(raw: dict[Any, Any]) -> list[dict[str, Any]]:
    """The costliest frames by self time."""
    rows = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:_TOP]
    return [
        {
            "function": _frame(*where),
            "calls": entry[1],
            "self_s": round(entry[2], 4),
            "cumulative_s": round(entry[3], 4),
        }
        for where, entry in rows
    ]


def _selected(raw: dict[Any, Any], checks: int) -> dict[str, float]:
    """Cumulative CPU of the poller's synchronous steps (a coroutine's cumulative time is not
    meaningful under cProfile: it is counted again at every resumption)."""
    found: dict[str, float] = {}
    for (filename, _line, name), entry in raw.items():
        for suffix, function, label in _SELECTED:
            if filename.endswith(suffix) and name == function:
                found[label] = found.get(label, 0.0) + entry[3]
    return {label: round(1000 * seconds / max(checks, 1), 4) for label, seconds in found.items()}


def summarize_profile(profiler: cProfile.Profile, *, checks: int) -> dict[str, Any]:
    """JSON-able: CPU ms per check by layer, the costliest frames by self time, and the
    cumulative time of the check's synchronous steps."""
    raw: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    layers = _charge(raw)
    total = sum(layers.values())
    per_check = {
        name: round(1000 * layers.get(name, 0.0) / max(checks, 1), 4)
        for name in sorted(layers, key=lambda name: layers[name], reverse=True)
    }
    return {
        "profiled_cpu_s": round(total, 3),
        "layers_ms_per_check": per_check,
        "layers_share": {name: round(layers[name] / total, 4) for name in per_check if total},
        "top_self": _top(raw),
        "selected_ms_per_check": _selected(raw, checks),
    }
