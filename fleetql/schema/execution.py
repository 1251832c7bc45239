"""Executing subscription events once per cohort instead of once per subscriber.

Every subscriber of an event gets the same payload object (see ``subscription.py``), and
subscribers that sent the same document with the same variables would compute the same result:
executing the selection is ~150 us per subscriber, 90 % of the server's CPU with 5,000 consoles
open (bench/fanout.py). So the first subscriber of a cohort executes the event and the others
share its result, kept on the payload itself (it goes when the event does). Results depend on
nothing else but what the principal may see, so its grants are part of the cohort's key.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from fleetql.schema.plainfields import PlainFieldExecutionContext

__all__ = ["PerEventExecutionContext"]

_RESULTS = "_fleetql_cohort_results"


class PerEventExecutionContext(PlainFieldExecutionContext):
    """Per-event executors with a sub-field cache of their own, sharing results by cohort.

    graphql-core 3.3 copies the executor for every event but shares its sub-field cache, which
    is keyed by the id of lists built afresh per event: it never hits, and keeps every list of
    every event alive for as long as the subscription lasts (~3.7 KB per event and subscriber,
    measured in bench/fanout.py). Each event's executor gets a fresh one here, and a fresh plan
    of its plain fields (plainfields.py: queries and mutations run on this class too).
    """

    _cohort_key: tuple[int, bytes, Any] | None = None

    def build_per_event_executor(self, payload: Any) -> Any:
        executor = cast(PerEventExecutionContext, super().build_per_event_executor(payload))
        executor._relevant_sub_fields = {}
        executor._field_plans = {}  # keyed by the field sets of those sub-fields
        # The parser cache hands identical documents the same operation node.
        principal = getattr(self.context_value, "principal", None)
        executor._cohort_key = (
            id(self.operation),
            _variables_key(self),
            None if principal is None else principal.scope_key,
        )
        return executor

    def execute_operation(self, serially: bool | None = None) -> Any:
        key = self._cohort_key
        results = getattr(self.root_value, "__dict__", None)
        if key is None or results is None:
            return super().execute_operation(serially)
        cohorts: dict[tuple[int, bytes, Any], Any] = results.setdefault(_RESULTS, {})
        if key not in cohorts:
            result = super().execute_operation(serially)
            cohorts[key] = asyncio.ensure_future(result) if self.is_awaitable(result) else result
        result = cohorts[key]
        # Each subscriber awaits the shared execution without being able to cancel it.
        return asyncio.shield(result) if isinstance(result, asyncio.Future) else result


def _variables_key(executor: StrawberryGraphQLCoreExecutionContext) -> bytes:
    return orjson.dumps(executor.variable_values.coerced, option=orjson.OPT_SORT_KEYS, default=repr)
