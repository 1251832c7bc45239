"""Who may do what to which clusters: roles, label-scoped grants and the principal holding them.

A principal holds one or more grants, each a role over the clusters matching a label selector
(or over all of them). It sees every cluster that any grant covers, and may act on a cluster
with the rights of the strongest grant that covers it: a viewer of the whole fleet who operates
``team=payments`` may resync payments' clusters and only watch the rest. Scopes become SQL
conditions (``ClusterFilter.scope``), so lists, totals and summaries are scoped by PostgreSQL,
never by filtering a page afterwards.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from fleetql.labels import Requirement, parse_label_selector, selector_matches

__all__ = ["ANONYMOUS", "SYSTEM", "Grant", "Principal", "Role", "Scope"]

# None: every cluster. Otherwise a cluster is in scope when it matches any of the selectors
# (an empty tuple is in scope of nothing).
Scope = tuple[tuple[Requirement, ...], ...] | None


class Role(enum.IntEnum):
    """Ordered: each role may do everything the ones below it may."""

    VIEWER = 1  # queries and subscriptions
    OPERATOR = 2  # also import, update, resync, labels
    ADMIN = 3  # also remove, API tokens

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value.strip().upper()]
        except KeyError:
            names = ", ".join(role.name.lower() for role in cls)
            raise ValueError(f"{value!r} is not a role; use one of {names}") from None


@dataclass(frozen=True)
class Grant:
    role: Role
    # The label selector as written (None: every cluster) and parsed.
    selector_text: str | None = None
    selector: tuple[Requirement, ...] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, role: Role, selector: str | None = None) -> Grant:
        """A grant, with ``selector`` parsed (a SelectorError says what is wrong with it)."""
        if selector is None or not selector.strip():
            return cls(role=role)
        return cls(role=role, selector_text=selector, selector=parse_label_selector(selector))

    def covers(self, labels: Mapping[str, str]) -> bool:
        return self.selector is None or selector_matches(self.selector, labels)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``name`` is what the event log records as the actor."""

    name: str | None
    grants: tuple[Grant, ...]
    # When the credential stops being valid (a websocket is closed then); None: never.
    expires_at: datetime | None = None
    # The API token this principal authenticated with, so that revoking it ends its sockets.
    token_id: uuid.UUID | None = None

    @property
    def role(self) -> Role | None:
        """The strongest role of any grant (None: no access at all)."""
        return max((grant.role for grant in self.grants), default=None)

    def may(self, role: Role) -> bool:
        """Whether some grant allows ``role``'s operations on at least some clusters."""
        return any(grant.role >= role for grant in self.grants)

    def scope(self, role: Role = Role.VIEWER) -> Scope:
        """The clusters on which this principal holds ``role`` or more."""
        selectors: list[tuple[Requirement, ...]] = []
        for grant in self.grants:
            if grant.role < role:
                continue
            if grant.selector is None:
                return None
            selectors.append(grant.selector)
        return tuple(selectors)

    def covers(self, labels: Mapping[str, str], role: Role = Role.VIEWER) -> bool:
        """Whether a cluster with these labels is within this principal's ``role`` scope."""
        return any(grant.role >= role and grant.covers(labels) for grant in self.grants)

    @property
    def scope_key(self) -> tuple[tuple[int, str | None], ...]:
        """Identifies what this principal may see, for sharing results between principals
        that see the same (subscription cohorts)."""
        return tuple(sorted((int(grant.role), grant.selector_text) for grant in self.grants))


# What the server itself acts as (the demo fleet, internal jobs).
SYSTEM = Principal(name="fleetql", grants=(Grant(role=Role.ADMIN),))
# Who calls when authentication is off (auth.mode: none): an unnamed admin of the whole fleet.
ANONYMOUS = Principal(name=None, grants=(Grant(role=Role.ADMIN),))
