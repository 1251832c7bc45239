"""Expected failures, which clients get as data or as a named argument error."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UserError:
    """One problem with a mutation's input, with a stable code a frontend can switch on."""

    field: str
    code: str
    message: str


class InvalidArgument(Exception):
    """A query argument that cannot be used; shown to the client unmasked, naming the argument."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument = argument
        self.detail = message
        # graphql-core copies these into the error the client sees.
        self.extensions = {"code": "BAD_USER_INPUT", "argument": argument}
