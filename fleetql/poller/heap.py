"""The garbage collector's settings for a process that polls: set once, after start-up.

A check parses thousands of short-lived dicts (orjson, page by page). At the default first
threshold (700) the collector took 40-55 % of the poller's CPU (bench/RESULTS.md, "Poller"), and
every full collection walked the whole long-lived heap: modules, SQLAlchemy's caches, settings,
the engine. Raising the threshold makes young collections rare; freezing what start-up built
moves it out of the collector's sight for good.
"""

from __future__ import annotations

import gc

# Young collections every 20,000 net allocations instead of 700: a third less CPU per check.
YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Raise the young generation's threshold, collect what start-up left behind, and freeze
    the rest (``gc.freeze``): full collections then skip modules, the engine and settings.

    Call it once start-up is done (``fleetql serve``, ``fleetql poll``, the poller benchmark);
    objects built later are collected as usual. Calling it again freezes what exists then.
    """
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    gc.collect()
    gc.freeze()
