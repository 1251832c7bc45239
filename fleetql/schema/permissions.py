"""Which role each root field needs, enforced by strawberry before the resolver runs.

Every field of Query, Mutation and Subscription carries exactly one of these permissions;
``check_every_root_field`` refuses to build a schema with a root field that has none, so a new
field cannot ship without someone deciding who may use it. Which clusters a caller may see is
the resolvers' business (scopes, in SQL); this only says whether the operation is allowed at all.
"""

from __future__ import annotations

from typing import Any, ClassVar

from strawberry.permission import BasePermission
from strawberry.types import Info

from fleetql.access import Role

__all__ = ["Admin", "Operator", "RolePermission", "Viewer", "check_every_root_field"]


class RolePermission(BasePermission):
    role: ClassVar[Role]
    error_extensions = {"code": "FORBIDDEN"}  # noqa: RUF012 (strawberry reads it per class)

    def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        principal = info.context.principal
        return principal is not None and principal.may(self.role)


class Viewer(RolePermission):
    role = Role.VIEWER
    message = "this needs the viewer role"


class Operator(RolePermission):
    role = Role.OPERATOR
    message = "this needs the operator role"


class Admin(RolePermission):
    role = Role.ADMIN
    message = "this needs the admin role"


def check_every_root_field(*roots: type) -> None:
    for root in roots:
        definition = root.__strawberry_definition__  # type: ignore[attr-defined]
        for field in definition.fields:
            roles = [p for p in field.permission_classes if issubclass(p, RolePermission)]
            if len(roles) != 1:
                raise TypeError(
                    f"{definition.name}.{field.name} must declare exactly one role permission "
                    "(Viewer, Operator or Admin) in fleetql/schema/permissions.py terms"
                )


# Shorthands for the decorators.
VIEWER: list[type[BasePermission]] = [Viewer]
OPERATOR: list[type[BasePermission]] = [Operator]
ADMIN: list[type[BasePermission]] = [Admin]
