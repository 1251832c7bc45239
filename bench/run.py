"""``python -m bench.run [--quick] [--only NAME ...]``: run the benchmarks, write the results.

Each benchmark module has ``async def run(quick: bool) -> dict`` (JSON-able figures with their
floors and ratios) and ``def markdown(result: dict) -> str`` (its section of RESULTS.md). Results
of benchmarks not run this time are kept from the previous results.json, marked with their commit.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench._support import machine

BENCHMARKS = (
    "list_queries",
    "history_queries",
    "imports",
    "poller",
    "fanout",
    "validation_cache",
)
HERE = Path(__file__).parent
RESULTS_JSON = HERE / "results.json"
RESULTS_MD = HERE / "RESULTS.md"

INTRO = """# Benchmark results

Measured by `make bench` (`python -m bench.run`; `--quick` for a shorter run) on the machine
below. Every figure stands beside a floor measured in the same run, because this machine is shared
and absolute numbers drift; the ratios are what to compare between runs. Re-run after any change
to a hot path and commit the new results.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 5 minutes")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument(
        "--render", action="store_true", help="only rewrite RESULTS.md from results.json"
    )
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(RESULTS_JSON.read_text())
        _write_markdown(data["machine"], data["benchmarks"])
        return 0
    previous: dict[str, Any] = {}
    if RESULTS_JSON.exists():
        previous = json.loads(RESULTS_JSON.read_text()).get("benchmarks", {})
    about = machine()
    results = dict(previous)
    for name in args.only:
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name}{' (quick)' if args.quick else ''}", flush=True)
        started = time.monotonic()
        result = asyncio.run(module.run(args.quick))
        result["_meta"] = {
            "commit": about["commit"],
            "quick": args.quick,
            "seconds": round(time.monotonic() - started, 1),
        }
        results[name] = result
        print(module.markdown(result), flush=True)
    # Another run may have finished meanwhile: keep its results, replace only ours.
    if RESULTS_JSON.exists():
        latest = json.loads(RESULTS_JSON.read_text()).get("benchmarks", {})
        results = latest | {name: results[name] for name in args.only}
    RESULTS_JSON.write_text(json.dumps({"machine": about, "benchmarks": results}, indent=2) + "\n")
    _write_markdown(about, results)
    return 0


def _write_markdown(about: dict[str, Any], results: dict[str, Any]) -> None:
    sections = [INTRO, _machine_table(about)]
    for name in BENCHMARKS:
        if name in results:
            module = importlib.import_module(f"bench.{name}")
            meta = results[name].get("_meta", {})
            sections.append(module.markdown(results[name]))
            sections.append(
                f"_Measured at commit {meta.get('commit', '?')}"
                f"{' (quick mode)' if meta.get('quick') else ''}"
                f" in {meta.get('seconds', '?')} s._\n"
            )
    RESULTS_MD.write_text("\n".join(sections))
    print(f"wrote {RESULTS_MD}")


def _machine_table(about: dict[str, Any]) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in about.items())
    return f"## Machine\n\n| | |\n|---|---|\n{rows}\n"


if __name__ == "__main__":
    sys.exit(main())
