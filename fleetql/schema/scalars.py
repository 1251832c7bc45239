"""Scalars GraphQL lacks: byte counts outgrow GraphQL's 32-bit Int."""

from __future__ import annotations

from typing import NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

Long = NewType("Long", int)

SCALAR_MAP: dict[object, ScalarDefinition] = {
    Long: strawberry.scalar(
        name="Long",
        serialize=int,
        parse_value=int,
        description="A 64-bit integer, sent as a JSON number (exact in JavaScript up to 2^53).",
    ),
}
