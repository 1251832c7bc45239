"""Refusing oversized queries before they cost anything.

One validation rule counts aliases, depth and directives, expanding fragments (so a fragment
spread a hundred times counts a hundred times) with memoisation, so the count itself stays
linear. It is a class built once per schema, which keeps strawberry's ValidationCache hitting
(QueryDepthLimiter and MaxAliasesLimiter make it miss on every request; see STACK-NOTES): the
cache is keyed by the document and the tuple of rule classes, and both stay the same objects
from one request to the next.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from graphql import (
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)
from strawberry.extensions import AddValidationRules

INTROSPECTION_ROOTS = {"__schema", "__type"}


@dataclass(frozen=True)
class Size:
    """What one selection set costs: aliases and directives used, and levels of fields."""

    aliases: int = 0
    depth: int = 0
    directives: int = 0

    def beside(self, other: Size) -> Size:
        """Two selections of one set: counts add up, the deeper one sets the depth."""
        return Size(
            self.aliases + other.aliases,
            max(self.depth, other.depth),
            self.directives + other.directives,
        )


_NOTHING = Size()


class _Measure:
    """Sizes of selection sets, with each fragment measured once however often it is spread."""

    def __init__(self, document: DocumentNode) -> None:
        self.fragments = {
            definition.name.value: definition
            for definition in document.definitions
            if isinstance(definition, FragmentDefinitionNode)
        }
        self.memo: dict[str, Size] = {}
        self.in_progress: set[str] = set()

    def selection_set(self, selection_set: SelectionSetNode | None) -> Size:
        size = _NOTHING
        for selection in selection_set.selections if selection_set else ():
            directives = Size(directives=len(selection.directives or ()))
            if isinstance(selection, FieldNode):
                if selection.name.value in INTROSPECTION_ROOTS:
                    continue  # GraphiQL's introspection is deep by nature and always allowed.
                inner = self.selection_set(selection.selection_set)
                field = Size(
                    aliases=inner.aliases + (1 if selection.alias else 0),
                    depth=1 + inner.depth,
                    directives=inner.directives,
                )
                size = size.beside(field).beside(directives)
            elif isinstance(selection, InlineFragmentNode):
                inner = self.selection_set(selection.selection_set)
                size = size.beside(inner).beside(directives)
            elif isinstance(selection, FragmentSpreadNode):
                size = size.beside(self.fragment(selection.name.value)).beside(directives)
        return size

    def operation(self, operation: OperationDefinitionNode) -> Size:
        own = Size(directives=len(operation.directives or ()))
        return self.selection_set(operation.selection_set).beside(own)

    def fragment(self, name: str) -> Size:
        if name in self.memo:
            return self.memo[name]
        definition = self.fragments.get(name)
        if definition is None or name in self.in_progress:
            return _NOTHING  # unknown fragments and cycles are reported by graphql's own rules
        self.in_progress.add(name)
        own = Size(directives=len(definition.directives or ()))
        self.memo[name] = self.selection_set(definition.selection_set).beside(own)
        self.in_progress.discard(name)
        return self.memo[name]


def measure_operation(document: DocumentNode, operation: OperationDefinitionNode) -> Size:
    """The size of one operation as the limits count it (tests and benchmarks use this too)."""
    return _Measure(document).operation(operation)


def query_limits_rule(
    *, max_aliases: int, max_depth: int, max_directives: int
) -> type[ValidationRule]:
    """A validation rule class with the limits baked in; build it once per schema."""

    class QueryLimits(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self.measure = _Measure(context.document)

        def enter_operation_definition(self, node: OperationDefinitionNode, *_args: Any) -> None:
            size = self.measure.operation(node)
            for count, limit, what in (
                (size.aliases, max_aliases, "aliases"),
                (size.directives, max_directives, "directives"),
            ):
                if count > limit:
                    message = f"query uses {count} {what}; at most {limit} are allowed"
                    self.report_error(GraphQLError(message, node))
            if size.depth > max_depth:
                self.report_error(
                    GraphQLError(
                        f"query is {size.depth} levels deep; at most {max_depth} are allowed", node
                    )
                )

    return QueryLimits


class RequestLimits(AddValidationRules):
    """strawberry's AddValidationRules and MaxTokensLimiter in one extension: each extension
    costs every request a hook of its own (~10 us in strawberry's extension machinery)."""

    def __init__(
        self, validation_rules: Sequence[type[ASTValidationRule]], *, max_tokens: int
    ) -> None:
        super().__init__(list(validation_rules))
        self.max_tokens = max_tokens

    def on_operation(self) -> Iterator[None]:
        self.execution_context.parse_options["max_tokens"] = self.max_tokens
        yield from super().on_operation()
