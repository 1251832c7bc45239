"""The collector's settings for polling processes (fleetql.poller.heap).

Each test runs in a Python of its own: a frozen heap stays frozen for the life of the process,
and the test session's own objects must stay collectable.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_settle_heap_raises_the_threshold_and_freezes_what_start_up_built() -> None:
    result = run_python(
        """
        import gc
        import fleetql.poller.worker  # the modules a poller holds
        from fleetql.poller.heap import YOUNG_THRESHOLD, settle_heap

        assert gc.get_freeze_count() == 0
        older = gc.get_threshold()[1:]
        settle_heap()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *older), gc.get_threshold()
        frozen = gc.get_freeze_count()
        # Start-up's objects are out of the collector's sight: a full collection walks few.
        assert frozen > 10_000, frozen
        assert len(gc.get_objects()) < frozen / 10, (len(gc.get_objects()), frozen)
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_garbage_made_after_settle_heap_is_still_collected() -> None:
    result = run_python(
        """
        import gc
        import weakref
        from fleetql.poller.heap import settle_heap

        settle_heap()

        class Node:
            pass

        node = Node()
        node.me = node  # a cycle: only the collector frees it
        alive = weakref.ref(node)
        del node
        gc.collect()
        assert alive() is None
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
