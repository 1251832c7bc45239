"""A schema extension that counts GraphQL operations, times them and sorts their errors.

The instruments come from the request's context (``Services.metrics``), so one schema serves
apps with registries of their own. Execution errors are counted when execution ends (for a
subscription, with each result it streams); parse and validation errors when the operation
ends without having executed (hooks of their own would cost every request two more of
strawberry's hook contexts). All are counted before MaskErrors replaces the unexpected ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.types import StreamExecutionResult
from strawberry.types.graphql import OperationType

from fleetql.metrics.instruments import ApiMetrics
from fleetql.resolvers.context import Context
from fleetql.resolvers.errors import InvalidArgument

__all__ = ["OperationMetrics"]


class OperationMetrics(SchemaExtension):
    """One instance per operation. ``unexpected`` says which errors are masked (internal)."""

    def __init__(self, *, unexpected: Callable[[GraphQLError], bool]) -> None:
        self._unexpected = unexpected
        self._started = 0.0
        self._observed = False
        self._subscribed = False
        self._executed = False

    def on_operation(self) -> Iterator[None]:
        self._started = time.perf_counter()
        metrics = self._metrics()
        try:
            yield
        except GraphQLError:
            # ParserCache parses before the parse step runs, so a document that does not
            # parse (or has too many tokens) arrives here as an exception, not as errors.
            if self.execution_context.graphql_document is None:
                self._count("parse", [None])
            raise
        else:
            if not self._executed:
                # Refused before execution: the document did not parse, or did not validate.
                kind = "parse" if self.execution_context.graphql_document is None else "validation"
                self._count(kind, self.execution_context.pre_execution_errors)
        finally:
            # A subscription was observed once it was set up; this is the end of its life.
            if metrics is not None and not self._observed:
                self._observe(metrics)
            if metrics is not None and self._subscribed:
                metrics.subscriptions.dec()

    def on_execute(self) -> Iterator[None]:
        self._executed = True
        yield
        metrics = self._metrics()
        if metrics is None:
            return
        if self._type() == OperationType.SUBSCRIPTION.value:
            # Its results (and their errors) stream from here on: see on_stream_result.
            self._observe(metrics)
            self._subscribed = True
            metrics.subscriptions.inc()
            return
        result = self.execution_context.result
        self._count_execution_errors(getattr(result, "errors", None))

    def on_stream_result(self, result: StreamExecutionResult) -> Iterator[None]:
        if self._subscribed:
            self._count_execution_errors(getattr(result, "errors", None))
        yield

    def _metrics(self) -> ApiMetrics | None:
        context = self.execution_context.context
        return context.services.metrics.api if isinstance(context, Context) else None

    def _type(self) -> str:
        if self.execution_context.graphql_document is None:
            return "unknown"  # the document did not parse
        try:
            return self.execution_context.operation_type.value
        except Exception:  # e.g. the operationName names no operation of the document
            return "unknown"

    def _observe(self, metrics: ApiMetrics) -> None:
        self._observed = True
        metrics.observe_operation(
            self._type(),
            self.execution_context.operation_name,
            time.perf_counter() - self._started,
        )

    def _count(self, kind: str, errors: Sequence[GraphQLError | None] | None) -> None:
        metrics = self._metrics()
        if metrics is not None and errors:
            metrics.errors.labels(kind=kind).inc(len(errors))

    def _count_execution_errors(self, errors: list[GraphQLError] | None) -> None:
        for error in errors or ():
            self._count(self._kind(error), [error])

    def _kind(self, error: GraphQLError) -> str:
        if self._unexpected(error):
            return "internal"
        if error.path is None or isinstance(error.original_error, InvalidArgument):
            return "bad_user_input"  # an argument, or a variable that does not coerce
        return "execution"
