"""Plain fields read straight from their objects, without graphql-core's per-field work.

Most of what a list page or an events page selects is a "basic" strawberry field (no resolver,
no permission, no extension: a ``getattr``) holding a scalar, an enum, or an object whose own
selection is made of such fields (a cluster's labels, an event's changes). For each field
graphql-core still builds a resolve info, calls strawberry's resolver wrapper, asks whether the
value is awaitable and walks ``complete_value`` (non-null? list? leaf? object?) before it
coerces the value: ~4.5 us a field, most of a page's CPU (bench/graphql_cost.py). Here a leaf is
a getattr and a coercion, an object of plain fields a dict built in one pass, and strawberry's
enums are coerced through a dict instead of a loop over their values.

Only the ordinary case takes this path. Anything else (a null in a non-null field, a value the
scalar refuses, an exception or an awaitable as the value, a directive or @defer on the field,
resolve middleware) hands the whole field to graphql-core's own ``execute_field``, which then
produces exactly what it always did, errors and their paths included. Reading the attributes
again there is harmless: a basic field is a plain attribute, and a plain branch holds nothing
but basic fields.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Final, TypeAlias, cast
from weakref import WeakKeyDictionary

from graphql import (
    GraphQLEnumType,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    Undefined,
)
from graphql.execution.collect_fields import FieldDetails, GroupedFieldSet
from graphql.pyutils import Path, gather_with_cancel
from graphql.type.scalars import serialize_boolean, serialize_id, serialize_string
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

__all__ = ["SLOW", "Branch", "Leaf", "PlainFieldExecutionContext", "basic_field"]

IsAwaitable: TypeAlias = Callable[[Any], bool]

# Exact types whose instances are never awaitable nor exceptions: no need to ask.
_INERT: Final = frozenset({str, int, float, bool, datetime, date, time, Decimal, uuid.UUID})

# graphql-core's coercions that return values of these exact types unchanged.
_PASSTHROUGH: Final[dict[Callable[[Any], Any], frozenset[type]]] = {
    serialize_string: frozenset({str}),
    serialize_id: frozenset({str}),
    serialize_boolean: frozenset({bool}),
}


class _Slow:
    """The fast path declines: graphql-core's own execute_field decides."""

    def __repr__(self) -> str:
        return "SLOW"


SLOW: Final = _Slow()


@dataclass(frozen=True, slots=True)
class Leaf:
    """A basic field holding a scalar or an enum (or a list of them), and its coercion."""

    attribute: str
    coerce: Callable[[Any], Any]
    nullable: bool
    many: bool
    item_nullable: bool
    # Value types that come out unchanged, and types whose coercion cannot fail.
    passthrough: frozenset[type] = frozenset()
    total: Mapping[type, Callable[[Any], Any]] = field(default_factory=dict)

    def value_of(self, source: Any, is_awaitable: IsAwaitable) -> Any:
        """The field's completed value, or SLOW when it is anything but ordinary."""
        try:
            value = getattr(source, self.attribute)
        except Exception:
            return SLOW
        if value is None:
            return None if self.nullable else SLOW
        if not self.many:
            return self._coerced(value, is_awaitable)
        if type(value) is not list:
            return SLOW
        items: list[Any] = []
        for item in value:
            if item is None:
                if not self.item_nullable:
                    return SLOW
                items.append(None)
                continue
            coerced = self._coerced(item, is_awaitable)
            if coerced is SLOW:
                return SLOW
            items.append(coerced)
        return items

    def _coerced(self, value: Any, is_awaitable: IsAwaitable) -> Any:
        kind = type(value)
        if kind in self.passthrough:
            return value
        total = self.total.get(kind)
        if total is not None:
            return total(value)
        if kind not in _INERT and (isinstance(value, Exception) or is_awaitable(value)):
            return SLOW
        try:
            coerced = self.coerce(value)
        except Exception:
            return SLOW
        return SLOW if coerced is None or coerced is Undefined else coerced


# Classes of objects seen in branches whose instances can be neither awaitable nor exceptions.
_INERT_CLASSES: set[type] = set()


def _inert_class(kind: type) -> bool:
    """``await`` finds ``__await__`` on the class, so a class without one (and without dynamic
    attribute lookup) never makes awaitable instances; strawberry types are such classes."""
    return (
        not issubclass(kind, BaseException)
        and not hasattr(kind, "__await__")
        and not hasattr(kind, "__getattr__")
        and kind.__getattribute__ is object.__getattribute__
    )


@dataclass(frozen=True, slots=True)
class Branch:
    """A basic field holding an object (or a list of them) whose selection, in this operation,
    is made of leaves and branches only."""

    attribute: str
    nullable: bool
    many: bool
    item_nullable: bool
    fields: tuple[tuple[str, Leaf | Branch], ...]

    def value_of(self, source: Any, is_awaitable: IsAwaitable) -> Any:
        """The field's completed value, or SLOW when anything in it is out of the ordinary.

        The same steps as ``Leaf.value_of`` with ``_completed`` for ``_coerced``, written out
        twice on purpose: one shared function taking the bound method cost ~10 % of an events
        page's execution (bench/graphql_cost.py), this being the per-field hot path."""
        try:
            value = getattr(source, self.attribute)
        except Exception:
            return SLOW
        if value is None:
            return None if self.nullable else SLOW
        if not self.many:
            return self._completed(value, is_awaitable)
        if type(value) is not list:
            return SLOW
        items: list[Any] = []
        for item in value:
            if item is None:
                if not self.item_nullable:
                    return SLOW
                items.append(None)
                continue
            completed = self._completed(item, is_awaitable)
            if completed is SLOW:
                return SLOW
            items.append(completed)
        return items

    def _completed(self, value: Any, is_awaitable: IsAwaitable) -> Any:
        kind = type(value)
        if kind not in _INERT_CLASSES:
            if isinstance(value, Exception) or is_awaitable(value):
                return SLOW
            if _inert_class(kind):
                _INERT_CLASSES.add(kind)
        completed = {}
        for response_name, plain in self.fields:
            result = plain.value_of(value, is_awaitable)
            if result is SLOW:
                return SLOW
            completed[response_name] = result
        return completed


@dataclass(frozen=True, slots=True)
class _ObjectField:
    """A basic field whose type is an object type: a Branch once its selection is known."""

    attribute: str
    object_type: GraphQLObjectType
    nullable: bool
    many: bool
    item_nullable: bool


def _unwrap(type_: GraphQLOutputType) -> tuple[GraphQLOutputType, bool]:
    if isinstance(type_, GraphQLNonNull):
        return type_.of_type, False
    return type_, True


def _leaf(
    attribute: str, leaf_type: GraphQLLeafType, nullable: bool, many: bool, item_nullable: bool
) -> Leaf:
    coerce = leaf_type.coerce_output_value
    wrapped = getattr(leaf_type, "wrapped_cls", None)
    if isinstance(leaf_type, GraphQLEnumType) and isinstance(wrapped, type):
        # strawberry's enum coercion loops over the values on every call; its answer for each
        # member of the Python enum, computed once by that very coercion, is a dict lookup.
        names = {member: coerce(member) for member in cast(Iterable[Any], wrapped)}
        total = {wrapped: names.__getitem__}
        return Leaf(attribute, coerce, nullable, many, item_nullable, total=total)
    passthrough = _PASSTHROUGH.get(coerce, frozenset())
    return Leaf(attribute, coerce, nullable, many, item_nullable, passthrough=passthrough)


def basic_field(parent_type: GraphQLObjectType, field_name: str) -> Leaf | _ObjectField | None:
    """What a basic strawberry field of ``parent_type`` holds, or None for any other field
    (a resolver, a permission, an extension, an interface or union, ``__typename``)."""
    graphql_field = parent_type.fields.get(field_name)
    if graphql_field is None or not getattr(graphql_field.resolve, "_is_default", False):
        return None
    definition = (graphql_field.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
    if not isinstance(definition, StrawberryField) or not definition.is_basic_field:
        return None
    attribute = definition.python_name
    if not attribute:
        return None
    type_, nullable = _unwrap(graphql_field.type)
    many = isinstance(type_, GraphQLList)
    item_nullable = True
    if isinstance(type_, GraphQLList):
        type_, item_nullable = _unwrap(type_.of_type)
    if isinstance(type_, GraphQLLeafType):
        return _leaf(attribute, type_, nullable, many, item_nullable)
    if isinstance(type_, GraphQLObjectType) and type_.is_type_of is None:
        return _ObjectField(attribute, type_, nullable, many, item_nullable)
    return None


# What each field of each object type is, for as long as the schema lives.
_FIELDS: WeakKeyDictionary[GraphQLObjectType, dict[str, Leaf | _ObjectField | None]] = (
    WeakKeyDictionary()
)


def _cached_basic_field(
    parent_type: GraphQLObjectType, field_name: str
) -> Leaf | _ObjectField | None:
    fields = _FIELDS.get(parent_type)
    if fields is None:
        fields = _FIELDS[parent_type] = {}
    if field_name not in fields:
        fields[field_name] = basic_field(parent_type, field_name)
    return fields[field_name]


def _plain_selection(field_details_list: list[FieldDetails]) -> bool:
    """No directive (@stream, say) and no @defer around it: nothing but the value matters."""
    return bool(field_details_list) and all(
        not details.node.directives and details.defer_usage is None
        for details in field_details_list
    )


# One field of a selection set: response name, field group, and its fast path (None: none).
_Step = tuple[str, list[FieldDetails], Leaf | Branch | None]


class PlainFieldExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """graphql-core's executor, with the plain fields of each selection completed directly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        manager = self.middleware_manager
        # Resolve middleware must see every field: then every field takes the usual path.
        self._plain_fields = manager is None or not manager.middlewares
        # Per grouped field set (of this operation): its steps. Keyed by the set's id, with the
        # set kept alive beside it so that the id cannot be reused meanwhile.
        self._field_plans: dict[int, tuple[GroupedFieldSet, GraphQLObjectType, list[_Step]]] = {}

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: GroupedFieldSet,
        position_context: Any,
    ) -> Any:
        """graphql-core's ``execute_fields``, step for step, but for the plain fields."""
        if not self._plain_fields:
            return super().execute_fields(
                parent_type, source_value, path, grouped_field_set, position_context
            )
        plan = self._field_plans.get(id(grouped_field_set))
        if plan is None or plan[0] is not grouped_field_set or plan[1] is not parent_type:
            plan = (grouped_field_set, parent_type, self._steps(parent_type, grouped_field_set))
            self._field_plans[id(grouped_field_set)] = plan
        results: dict[str, Any] = {}
        is_awaitable = self.is_awaitable
        awaitable_fields: list[str] = []
        try:
            for response_name, field_details_list, plain in plan[2]:
                if plain is not None:
                    value = plain.value_of(source_value, is_awaitable)
                    if value is not SLOW:
                        results[response_name] = value
                        continue
                result = self.execute_field(
                    parent_type,
                    source_value,
                    field_details_list,
                    Path(path, response_name, parent_type.name),
                    position_context,
                )
                if result is not Undefined:
                    results[response_name] = result
                    if is_awaitable(result):
                        awaitable_fields.append(response_name)
        except Exception:
            if awaitable_fields:
                # As graphql-core: settle the other fields' awaitables, they may fail too.
                self.settle_in_background([results[field] for field in awaitable_fields])
            raise
        if not awaitable_fields:
            return results
        return _awaited(results, awaitable_fields)

    def _steps(
        self, parent_type: GraphQLObjectType, grouped_field_set: GroupedFieldSet
    ) -> list[_Step]:
        return [
            (response_name, field_details_list, self._plain(parent_type, field_details_list))
            for response_name, field_details_list in grouped_field_set.items()
        ]

    def _plain(
        self, parent_type: GraphQLObjectType, field_details_list: list[FieldDetails]
    ) -> Leaf | Branch | None:
        """The fast path of one field of this operation, if it has one."""
        if not _plain_selection(field_details_list):
            return None
        basic = _cached_basic_field(parent_type, field_details_list[0].node.name.value)
        if basic is None or isinstance(basic, Leaf):
            return basic
        # graphql-core memoises the sub-selection per field group: the slow path gets the same.
        collected = self.collect_subfields(basic.object_type, field_details_list)
        if collected.new_defer_usages or collected.forbidden_directive_instances:
            return None
        fields: list[tuple[str, Leaf | Branch]] = []
        for response_name, sub_field_details_list in collected.grouped_field_set.items():
            plain = self._plain(basic.object_type, sub_field_details_list)
            if plain is None:
                return None
            fields.append((response_name, plain))
        return Branch(
            basic.attribute, basic.nullable, basic.many, basic.item_nullable, tuple(fields)
        )


async def _awaited(results: dict[str, Any], awaitable_fields: list[str]) -> dict[str, Any]:
    """The results with their awaitables awaited, concurrently (as graphql-core does it)."""
    if len(awaitable_fields) == 1:
        field = awaitable_fields[0]
        results[field] = await results[field]
    else:
        awaited = await gather_with_cancel(*(results[field] for field in awaitable_fields))
        results.update(zip(awaitable_fields, awaited, strict=True))
    return results
