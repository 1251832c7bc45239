"""Refusing oversized queries before they cost anything.

One validation rule counts aliases and depth, expanding fragments (so a fragment spread a hundred
times counts a hundred times) with memoisation, so the count itself stays linear. It is a class
built once per schema, which keeps strawberry's ValidationCache hitting (QueryDepthLimiter and
MaxAliasesLimiter make it miss on every request; see STACK-NOTES).
"""

from __future__ import annotations

from typing import Any

from graphql import (
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

INTROSPECTION_ROOTS = {"__schema", "__type"}


class _Measure:
    """Aliases and depth of selection sets, with fragments measured once each."""

    def __init__(self, document: DocumentNode) -> None:
        self.fragments = {
            definition.name.value: definition
            for definition in document.definitions
            if isinstance(definition, FragmentDefinitionNode)
        }
        self.memo: dict[str, tuple[int, int]] = {}
        self.in_progress: set[str] = set()

    def selection_set(self, selection_set: SelectionSetNode | None) -> tuple[int, int]:
        aliases, depth = 0, 0
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                if selection.name.value in INTROSPECTION_ROOTS:
                    continue  # GraphiQL's introspection is deep by nature and always allowed.
                inner_aliases, inner_depth = self.selection_set(selection.selection_set)
                aliases += inner_aliases + (1 if selection.alias else 0)
                depth = max(depth, 1 + inner_depth)
            elif isinstance(selection, InlineFragmentNode):
                inner_aliases, inner_depth = self.selection_set(selection.selection_set)
                aliases += inner_aliases
                depth = max(depth, inner_depth)
            elif isinstance(selection, FragmentSpreadNode):
                inner_aliases, inner_depth = self.fragment(selection.name.value)
                aliases += inner_aliases
                depth = max(depth, inner_depth)
        return aliases, depth

    def fragment(self, name: str) -> tuple[int, int]:
        if name in self.memo:
            return self.memo[name]
        definition = self.fragments.get(name)
        if definition is None or name in self.in_progress:
            return 0, 0  # unknown fragments and cycles are reported by graphql's own rules
        self.in_progress.add(name)
        self.memo[name] = self.selection_set(definition.selection_set)
        self.in_progress.discard(name)
        return self.memo[name]


def query_limits_rule(*, max_aliases: int, max_depth: int) -> type[ValidationRule]:
    """A validation rule class with the limits baked in."""

    class QueryLimits(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self.measure = _Measure(context.document)

        def enter_operation_definition(self, node: OperationDefinitionNode, *_args: Any) -> None:
            aliases, depth = self.measure.selection_set(node.selection_set)
            if aliases > max_aliases:
                self.report_error(
                    GraphQLError(
                        f"query uses {aliases} aliases; at most {max_aliases} are allowed", node
                    )
                )
            if depth > max_depth:
                self.report_error(
                    GraphQLError(
                        f"query is {depth} levels deep; at most {max_depth} are allowed", node
                    )
                )

    return QueryLimits
