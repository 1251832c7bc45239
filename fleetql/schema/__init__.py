"""The GraphQL schema: types, inputs, enums and the roots that call the resolvers."""

from __future__ import annotations

import logging
from typing import Any

import strawberry
from graphql import ASTValidationRule, GraphQLError, NoSchemaIntrospectionCustomRule
from strawberry.extensions import MaskErrors, ParserCache, ValidationCache
from strawberry.schema.config import BatchingConfig, StrawberryConfig
from strawberry.types import ExecutionContext

from fleetql.config import GraphQLSettings
from fleetql.resolvers.errors import InvalidArgument
from fleetql.schema.execution import PerEventExecutionContext
from fleetql.schema.instrumentation import OperationMetrics
from fleetql.schema.limits import RequestLimits, query_limits_rule
from fleetql.schema.mutation import Mutation
from fleetql.schema.permissions import check_every_root_field
from fleetql.schema.query import Query
from fleetql.schema.scalars import SCALAR_MAP
from fleetql.schema.subscription import Subscription
from fleetql.schema.suggestions import HideSuggestions

__all__ = [
    "VALIDATION_CACHE_SIZE",
    "FleetSchema",
    "PerEventExecutionContext",
    "build_schema",
    "is_unexpected",
]

logger = logging.getLogger("fleetql.graphql")

# Distinct documents whose validation result is kept (strawberry's LRU, shared per size).
VALIDATION_CACHE_SIZE = 256


def is_unexpected(error: GraphQLError) -> bool:
    """An exception raised while resolving a field, other than a named argument error.

    Syntax, validation and variable errors carry no path and are the client's to see.
    """
    original = error.original_error
    return (
        error.path is not None
        and original is not None
        and not isinstance(original, InvalidArgument | GraphQLError)
    )


def _loggable(error: GraphQLError) -> str:
    """A client error's message without the variable values it may quote (graphql-core puts a
    whole rejected value, a kubeconfig say, into "Variable '$x' got invalid value …")."""
    message = error.message
    head, found, _ = message.partition(" got invalid value")
    return f"{head} got an invalid value (not logged)" if found else message[:300]


class FleetSchema(strawberry.Schema):
    """Logs unexpected errors with the request id that the client also gets in the response."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        context: Any = execution_context.context if execution_context else None
        request_id = getattr(context, "request_id", "-")
        for error in errors:
            if is_unexpected(error):
                logger.error(
                    "unexpected error at %s (request %s)",
                    ".".join(str(part) for part in error.path or ()),
                    request_id,
                    exc_info=error.original_error,
                )
            else:
                logger.debug("client error (request %s): %s", request_id, _loggable(error))


def build_schema(settings: GraphQLSettings | None = None) -> strawberry.Schema:
    """The schema with the limits and switches of the ``graphql`` settings.

    Every validation rule is a class built here, once: strawberry's ValidationCache keys on the
    rule classes, so a rule built per request would make every request miss it.
    """
    settings = settings or GraphQLSettings()
    check_every_root_field(Query, Mutation, Subscription)
    rules: list[type[ASTValidationRule]] = [
        query_limits_rule(
            max_aliases=settings.max_aliases,
            max_depth=settings.max_depth,
            max_directives=settings.max_directives,
        )
    ]
    if not settings.introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    batching = (
        BatchingConfig(max_operations=settings.max_batch_operations) if settings.batching else None
    )
    return FleetSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map=SCALAR_MAP, batching_config=batching),
        execution_context_class=PerEventExecutionContext,
        extensions=[
            lambda: RequestLimits(rules, max_tokens=settings.max_tokens),
            lambda: ParserCache(maxsize=256),
            lambda: ValidationCache(maxsize=VALIDATION_CACHE_SIZE),
            # Before MaskErrors, so that it sees (and sorts) errors before they are masked.
            lambda: OperationMetrics(unexpected=is_unexpected),
            *([] if settings.introspection else [HideSuggestions]),
            lambda: MaskErrors(
                should_mask_error=is_unexpected,
                error_message="Internal error; the server log has it under this request's id.",
            ),
        ],
    )
