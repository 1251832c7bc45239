"""Turning a client's arguments into values, or into an error that names the argument.

Ids and label filters arrive in several queries, mutations and subscriptions; one parser each
keeps their messages the same everywhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from fleetql.labels import (
    LabelError,
    Requirement,
    SelectorError,
    parse_label_selector,
    validate_label_key,
)
from fleetql.resolvers.errors import InvalidArgument

__all__ = [
    "check_label_keys",
    "parse_cluster_id",
    "parse_cluster_ids",
    "parse_event_id",
    "parse_selector",
    "required_labels",
]


def parse_cluster_id(value: str, argument: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidArgument(
            argument, f"{str(value)[:64]!r} is not a cluster id (a UUID)"
        ) from None


def parse_cluster_ids(values: Sequence[str], argument: str) -> list[uuid.UUID]:
    """Each value as a cluster id; a bad one is named ``argument[index]``."""
    return [parse_cluster_id(value, f"{argument}[{index}]") for index, value in enumerate(values)]


def parse_event_id(value: str, argument: str) -> int:
    try:
        parsed = int(value)
    except ValueError:
        parsed = -1
    if parsed < 0:
        raise InvalidArgument(argument, f"{value[:32]!r} is not an event id")
    return parsed


def parse_selector(text: str | None) -> tuple[Requirement, ...]:
    """A filter's ``labelSelector`` in kubectl syntax."""
    try:
        return parse_label_selector(text or "")
    except SelectorError as error:
        raise InvalidArgument("filter.labelSelector", str(error)) from None


def check_label_keys(labels: Sequence[tuple[str, str]]) -> None:
    """A filter's ``labels``: each key must be a valid label key."""
    for index, (key, _) in enumerate(labels):
        try:
            validate_label_key(key)
        except LabelError as error:
            raise InvalidArgument(f"filter.labels[{index}].key", str(error)) from None


def required_labels(labels: Sequence[tuple[str, str]]) -> dict[str, str]:
    """A filter's ``labels`` as key -> value. One key with two values cannot hold at once: say
    so, rather than quietly match nothing (a repeated identical pair is harmless)."""
    check_label_keys(labels)
    required: dict[str, str] = {}
    for index, (key, value) in enumerate(labels):
        if required.get(key, value) != value:
            raise InvalidArgument(f"filter.labels[{index}]", f"label {key!r} is given twice")
        required[key] = value
    return required
