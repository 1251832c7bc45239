"""Availability and flapping, computed from a cluster's history of status transitions.

The event log records each change of a cluster's status; these pure functions turn that history
into the figures a dashboard asks for ("99.2 % healthy over 7 days", "flapping"). They take the
clock as an argument, so callers decide what "now" is and tests need no waiting.

Boundaries: a window covers ``[window_start, now]``, both ends included. A transition exactly at
``window_start`` is inside the window (it is a change seen in it); transitions before it only
decide which status was in force when the window opened, and transitions after ``now`` are
ignored. All times must be timezone-aware.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from fleetql.db.models import ClusterStatus

MAX_WINDOW = timedelta(days=90)
DEFAULT_FLAP_WINDOW = timedelta(hours=1)
DEFAULT_FLAP_THRESHOLD = 6

# Digits are capped so that int() and timedelta() never see a huge number before the range check.
_WINDOW = re.compile(r"([1-9][0-9]{0,6})([mhd])", re.ASCII)
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
_WINDOW_FORMS = (
    'a whole number followed by m, h or d (minutes, hours, days), such as "90m", "24h" or "7d", '
    "at most 90d"
)
# Time in these statuses is "known": a check ran and saw the cluster in that state.
_KNOWN = (
    ClusterStatus.HEALTHY,
    ClusterStatus.DEGRADED,
    ClusterStatus.UNHEALTHY,
    ClusterStatus.UNREACHABLE,
)


@dataclass(frozen=True)
class Transition:
    """A status change: ``status`` is in force from ``at`` until the next transition."""

    at: datetime
    status: str


@dataclass(frozen=True)
class Availability:
    """How a window's time splits across statuses, and the share of it the cluster was healthy.

    ``ratio`` is ``healthy_seconds / known_seconds``, where known time is HEALTHY + DEGRADED +
    UNHEALTHY + UNREACHABLE. UNKNOWN time (before the import, before the first check, or a status
    fleetql does not recognise) is left out of the denominator: not having looked is not an outage.
    DEGRADED counts against the ratio: the API is serving but something (a node, a component) is
    not, and "healthy" should mean what the status says. ``degraded_seconds`` is reported apart, so
    a client wanting "API available" can compute ``(healthy + degraded) / known`` itself.
    ``ratio`` is None when no known time falls in the window.
    """

    ratio: float | None
    healthy_seconds: float
    degraded_seconds: float
    unhealthy_seconds: float
    unreachable_seconds: float
    unknown_seconds: float
    transitions: int  # status changes inside the window


def availability(
    *,
    initial: str | None,
    transitions: Sequence[Transition],
    window_start: datetime,
    now: datetime,
) -> Availability:
    """Split ``[window_start, now]`` by status and count the status changes inside it.

    ``initial`` is the status in force at ``window_start`` (the status of the last transition
    before the window); None means unknown, so that time counts as UNKNOWN. Transitions before
    ``window_start`` override ``initial``, so passing the whole history is also correct.
    Transitions need not be sorted; ones at the same instant apply in the order given. A
    transition to the status already in force is not counted as a change.
    """
    _require_aware(window_start, "window_start")
    _require_aware(now, "now")
    if now < window_start:
        raise ValueError("window_start must not be after now")
    current = _normalise(initial)
    spent = dict.fromkeys(ClusterStatus, timedelta(0))
    changes = 0
    cursor = window_start
    for transition in _sorted(transitions):
        if transition.at > now:
            break
        status = _normalise(transition.status)
        if transition.at >= window_start:
            # timedelta sums are exact to the microsecond; floats appear only in the result.
            spent[current] += transition.at - cursor
            cursor = transition.at
            if status != current:
                changes += 1
        current = status
    spent[current] += now - cursor

    known = sum((spent[status] for status in _KNOWN), timedelta(0))
    healthy = spent[ClusterStatus.HEALTHY]
    return Availability(
        ratio=healthy / known if known else None,
        healthy_seconds=healthy.total_seconds(),
        degraded_seconds=spent[ClusterStatus.DEGRADED].total_seconds(),
        unhealthy_seconds=spent[ClusterStatus.UNHEALTHY].total_seconds(),
        unreachable_seconds=spent[ClusterStatus.UNREACHABLE].total_seconds(),
        unknown_seconds=spent[ClusterStatus.UNKNOWN].total_seconds(),
        transitions=changes,
    )


def is_flapping(
    transitions: Sequence[Transition],
    *,
    now: datetime,
    window: timedelta = DEFAULT_FLAP_WINDOW,
    threshold: int = DEFAULT_FLAP_THRESHOLD,
) -> bool:
    """Whether the status changed at least ``threshold`` times in ``[now - window, now]``.

    A cluster that keeps changing status is reported as flapping so that alerts can be damped
    instead of firing on every change. A transition repeating the status before it is no change;
    the first transition known has nothing before it and counts.
    """
    _require_aware(now, "now")
    if window <= timedelta(0):
        raise ValueError("window must be a positive duration")
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    start = now - window
    changes = 0
    previous: ClusterStatus | None = None
    for transition in _sorted(transitions):
        if transition.at > now:
            break
        status = _normalise(transition.status)
        if transition.at >= start and status != previous:
            changes += 1
        previous = status
    return changes >= threshold


def parse_window(text: str) -> timedelta:
    """Parse the window argument of the API: ``<int>m``, ``<int>h`` or ``<int>d``, up to 90 days.

    The forms are kept few and strict so that a typo is an error, not a silently different window;
    the cap bounds how much history one request can make the server read.
    """
    match = _WINDOW.fullmatch(text)
    if match is None:
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise ValueError(f"window {shown!r} is not valid; use {_WINDOW_FORMS}")
    amount, unit = match.groups()
    window = timedelta(**{_UNITS[unit]: int(amount)})
    if window > MAX_WINDOW:
        raise ValueError(f"window {text!r} is longer than 90d; use {_WINDOW_FORMS}")
    return window


def _sorted(transitions: Sequence[Transition]) -> list[Transition]:
    # Callers' queries order by time, but a wrong order would silently give wrong seconds; the sort
    # is stable, so transitions at the same instant keep the order they were recorded in.
    for transition in transitions:
        _require_aware(transition.at, "transition time")
    return sorted(transitions, key=lambda transition: transition.at)


def _normalise(status: str | None) -> ClusterStatus:
    """A status as an enum member; None and statuses this version does not know are UNKNOWN."""
    if status is None:
        return ClusterStatus.UNKNOWN
    try:
        return ClusterStatus(status)
    except ValueError:
        return ClusterStatus.UNKNOWN


def _require_aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC)")
