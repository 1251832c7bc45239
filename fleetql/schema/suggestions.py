"""Leaving graphql-core's "Did you mean …?" out of error messages.

With introspection off, suggestions would still spell the schema out a field at a time (a
misspelt field is answered with the real names). graphql-core 3.3 can omit them itself, but
strawberry calls its ``validate`` and ``execute`` without ``hide_suggestions``, so they are cut
from the finished result instead: validation and variable errors alike.
"""

from __future__ import annotations

from collections.abc import Iterator

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.types.execution import StreamExecutionResult

_SUGGESTION = " Did you mean "


def without_suggestion(error: GraphQLError) -> GraphQLError:
    """The error with its trailing suggestion removed (a new error: validation results are
    cached and shared between requests, so they are never changed in place)."""
    head, found, tail = error.message.rpartition(_SUGGESTION)
    if not found or not tail.endswith("?"):
        return error
    return GraphQLError(
        head,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=error.original_error,
        extensions=error.extensions,
    )


def _strip(result: object) -> None:
    errors = getattr(result, "errors", None)
    if errors:
        result.errors = [without_suggestion(error) for error in errors]  # type: ignore[attr-defined]


class HideSuggestions(SchemaExtension):
    """Strips suggestions from every error of an operation's result, and of each result of a
    subscription (a websocket's, say) before it is sent."""

    def on_operation(self) -> Iterator[None]:
        yield
        _strip(self.execution_context.result)

    def on_stream_result(self, result: StreamExecutionResult) -> Iterator[None]:
        _strip(result)
        yield None
