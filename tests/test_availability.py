"""Tests for fleetql.availability: exact seconds per status, flapping, and window arguments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleetql.availability import (
    MAX_WINDOW,
    Availability,
    Transition,
    availability,
    is_flapping,
    parse_window,
)
from fleetql.db.models import ClusterStatus

HEALTHY = ClusterStatus.HEALTHY
DEGRADED = ClusterStatus.DEGRADED
UNHEALTHY = ClusterStatus.UNHEALTHY
UNREACHABLE = ClusterStatus.UNREACHABLE
UNKNOWN = ClusterStatus.UNKNOWN

START = datetime(2030, 3, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
H = 3600.0


def at(hours: float) -> datetime:
    return START + timedelta(hours=hours)


# HEALTHY 10 h, UNREACHABLE 1 h, DEGRADED 2 h, HEALTHY for the rest of the day.
SCRIPT = [
    Transition(at(0), HEALTHY),
    Transition(at(10), UNREACHABLE),
    Transition(at(11), DEGRADED),
    Transition(at(13), HEALTHY),
]


def test_scripted_day_splits_exactly() -> None:
    result = availability(initial=None, transitions=SCRIPT, window_start=at(0), now=at(24))

    assert result == Availability(
        ratio=21 / 24,
        healthy_seconds=21 * H,
        degraded_seconds=2 * H,
        unhealthy_seconds=0.0,
        unreachable_seconds=1 * H,
        unknown_seconds=0.0,
        transitions=4,  # unknown -> HEALTHY counts: the first check is a change seen in the window
    )


def test_transitions_are_sorted_defensively() -> None:
    shuffled = [SCRIPT[2], SCRIPT[0], SCRIPT[3], SCRIPT[1]]

    assert availability(
        initial=None, transitions=shuffled, window_start=at(0), now=at(24)
    ) == availability(initial=None, transitions=SCRIPT, window_start=at(0), now=at(24))


def test_window_starting_mid_status_takes_the_status_in_force() -> None:
    # The window opens 5 h into the first HEALTHY stretch; earlier transitions only set the start.
    result = availability(initial=None, transitions=SCRIPT, window_start=at(5), now=at(29))

    assert result.healthy_seconds == 5 * H + 16 * H
    assert result.unreachable_seconds == 1 * H
    assert result.degraded_seconds == 2 * H
    assert result.unknown_seconds == 0.0
    assert result.transitions == 3
    assert result.ratio == 21 / 24


def test_initial_gives_the_status_before_the_first_transition_in_the_window() -> None:
    in_window = SCRIPT[1:]

    result = availability(initial=HEALTHY, transitions=in_window, window_start=at(5), now=at(29))

    assert result == availability(initial=None, transitions=SCRIPT, window_start=at(5), now=at(29))


def test_transitions_before_the_window_override_initial() -> None:
    result = availability(
        initial=UNREACHABLE,
        transitions=[Transition(at(-3), HEALTHY)],
        window_start=at(0),
        now=at(2),
    )

    assert result.healthy_seconds == 2 * H
    assert result.unreachable_seconds == 0.0
    assert result.transitions == 0


def test_transitions_after_now_are_ignored() -> None:
    result = availability(initial=None, transitions=SCRIPT, window_start=at(0), now=at(10.5))

    assert result.healthy_seconds == 10 * H
    assert result.unreachable_seconds == 0.5 * H
    assert result.degraded_seconds == 0.0
    assert result.transitions == 2


def test_transition_at_window_start_counts_as_a_change_in_the_window() -> None:
    result = availability(
        initial=UNREACHABLE,
        transitions=[Transition(at(0), HEALTHY)],
        window_start=at(0),
        now=at(1),
    )

    assert result.transitions == 1
    assert result.unreachable_seconds == 0.0
    assert result.ratio == 1.0


def test_transition_at_now_counts_but_adds_no_time() -> None:
    result = availability(
        initial=HEALTHY,
        transitions=[Transition(at(1), UNHEALTHY)],
        window_start=at(0),
        now=at(1),
    )

    assert result.transitions == 1
    assert result.healthy_seconds == H
    assert result.unhealthy_seconds == 0.0


def test_no_transitions_keeps_the_initial_status_all_window() -> None:
    result = availability(initial=DEGRADED, transitions=[], window_start=at(0), now=at(24))

    assert result.degraded_seconds == 24 * H
    assert result.ratio == 0.0
    assert result.transitions == 0


def test_all_unknown_has_no_ratio() -> None:
    result = availability(initial=None, transitions=[], window_start=at(0), now=at(24))

    assert result.ratio is None
    assert result.unknown_seconds == 24 * H


def test_unknown_time_is_left_out_of_the_ratio() -> None:
    # Imported 18 h into the window: 18 h unknown, then 4 h healthy and 2 h unhealthy.
    transitions = [Transition(at(18), HEALTHY), Transition(at(22), UNHEALTHY)]

    result = availability(initial=None, transitions=transitions, window_start=at(0), now=at(24))

    assert result.unknown_seconds == 18 * H
    assert result.unhealthy_seconds == 2 * H
    assert result.ratio == 4 / 6


def test_unrecognised_status_counts_as_unknown() -> None:
    transitions = [Transition(at(0), HEALTHY), Transition(at(1), "MAINTENANCE")]

    result = availability(initial=None, transitions=transitions, window_start=at(0), now=at(3))

    assert result.unknown_seconds == 2 * H
    assert result.ratio == 1.0


def test_repeated_status_is_not_a_change() -> None:
    transitions = [Transition(at(1), HEALTHY), Transition(at(2), HEALTHY)]

    result = availability(initial=HEALTHY, transitions=transitions, window_start=at(0), now=at(3))

    assert result.transitions == 0
    assert result.healthy_seconds == 3 * H


def test_empty_window_has_no_ratio() -> None:
    result = availability(initial=HEALTHY, transitions=SCRIPT, window_start=at(5), now=at(5))

    assert result.ratio is None
    assert result.healthy_seconds == 0.0


def test_window_start_after_now_is_refused() -> None:
    with pytest.raises(ValueError, match="window_start"):
        availability(initial=None, transitions=[], window_start=at(1), now=at(0))


def test_naive_times_are_refused() -> None:
    naive = datetime(2030, 3, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        availability(initial=None, transitions=[], window_start=naive, now=at(1))
    with pytest.raises(ValueError, match="timezone-aware"):
        availability(
            initial=None, transitions=[Transition(naive, HEALTHY)], window_start=at(0), now=at(1)
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        is_flapping([], now=naive)


def _alternating(count: int, *, first: datetime, step: timedelta) -> list[Transition]:
    statuses = [HEALTHY, UNREACHABLE]
    return [Transition(first + step * i, statuses[i % 2]) for i in range(count)]


def test_six_changes_in_an_hour_is_flapping() -> None:
    now = at(10)
    transitions = _alternating(6, first=now - 50 * timedelta(minutes=1), step=timedelta(minutes=10))

    assert is_flapping(transitions, now=now)


def test_five_changes_in_an_hour_is_not_flapping() -> None:
    now = at(10)
    transitions = _alternating(5, first=now - 50 * timedelta(minutes=1), step=timedelta(minutes=10))

    assert not is_flapping(transitions, now=now)


def test_flapping_window_includes_its_start_and_now() -> None:
    now = at(10)
    transitions = _alternating(6, first=now - HOUR, step=timedelta(minutes=12))

    assert transitions[-1].at == now
    assert is_flapping(transitions, now=now)
    assert not is_flapping(transitions, now=now + timedelta(microseconds=1))


def test_changes_before_the_window_or_after_now_do_not_count() -> None:
    now = at(10)
    old = _alternating(10, first=now - 3 * HOUR, step=timedelta(minutes=5))
    future = _alternating(10, first=now + timedelta(minutes=1), step=timedelta(minutes=1))

    assert not is_flapping(old + future, now=now)


def test_repeated_status_is_not_flapping() -> None:
    now = at(10)
    transitions = [Transition(now - timedelta(minutes=m), HEALTHY) for m in range(10)]

    assert not is_flapping(transitions, now=now)


def test_flapping_threshold_and_window_are_adjustable() -> None:
    now = at(10)
    transitions = _alternating(3, first=now - 20 * timedelta(minutes=1), step=timedelta(minutes=5))

    assert is_flapping(transitions, now=now, threshold=3)
    assert not is_flapping(transitions, now=now, threshold=4)
    assert not is_flapping(transitions, now=now, window=timedelta(minutes=5), threshold=3)


def test_flapping_refuses_meaningless_arguments() -> None:
    with pytest.raises(ValueError, match="window"):
        is_flapping([], now=at(0), window=timedelta(0))
    with pytest.raises(ValueError, match="threshold"):
        is_flapping([], now=at(0), threshold=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", HOUR),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("30d", timedelta(days=30)),
        ("90m", timedelta(minutes=90)),
        ("90d", MAX_WINDOW),
        ("2160h", MAX_WINDOW),
        ("129600m", MAX_WINDOW),
    ],
)
def test_parse_window_accepts_whole_minutes_hours_and_days(text: str, expected: timedelta) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "h",
        "0h",
        "024h",
        "-1d",
        "1.5h",
        "24 h",
        " 24h",
        "24h ",
        "24H",
        "1w",
        "10s",
        "1h30m",
        "٣d",
        "P1D",
        "24",
        "9" * 40 + "d",
    ],
)
def test_parse_window_refuses_other_forms_and_names_the_allowed_ones(text: str) -> None:
    with pytest.raises(ValueError, match=r'"24h".*"7d"'):
        parse_window(text)


@pytest.mark.parametrize("text", ["91d", "2161h", "129601m"])
def test_parse_window_refuses_more_than_90_days(text: str) -> None:
    with pytest.raises(ValueError, match="longer than 90d"):
        parse_window(text)
