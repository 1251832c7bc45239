"""Quantities parse exactly and round up the way Kubernetes does."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from fleetql.quantities import QuantityError, cpu_millicores, memory_bytes, parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3500m", Decimal("3.5")),
        ("32596084Ki", Decimal(32596084 * 1024)),
        ("256Gi", Decimal(256 * 2**30)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("12e-3", Decimal("0.012")),
        ("1.5", Decimal("1.5")),
        ("100n", Decimal("0.0000001")),
        ("0.5Gi", Decimal(2**29)),
        ("8", Decimal(8)),
        ("-1", Decimal(-1)),
        ("+2k", Decimal(2000)),
        (".5", Decimal("0.5")),
        ("1.", Decimal(1)),
        ("0", Decimal(0)),
        ("1E", Decimal(10**18)),
        ("2Ei", Decimal(2 * 2**60)),
        ("123456789n", Decimal("0.123456789")),
        ("5M", Decimal(5_000_000)),
        ("1u", Decimal("0.000001")),
    ],
)
def test_parse_quantity_is_exact(text: str, expected: Decimal) -> None:
    assert parse_quantity(text) == expected


def test_parse_quantity_keeps_digits_beyond_float_precision() -> None:
    exact_nano = 123456789012345678901234567890_123456789 * 2**60  # the value times 10**9
    parsed = parse_quantity("123456789012345678901234567890.123456789Ei")
    assert Fraction(parsed) == Fraction(exact_nano, 10**9)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1",
        "1 ",
        "abc",
        "1K",
        "1ki",
        "1.1.1",
        "1e",
        "1e+",
        "--1",
        "m",
        ".",
        "-",
        "1Gib",
        "1i",
        "0.1mi",
    ],
)
def test_invalid_quantity_raises_quantity_error_naming_the_text(text: str) -> None:
    with pytest.raises(QuantityError) as raised:
        parse_quantity(text)
    assert repr(text) in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_huge_exponent_is_refused_instead_of_building_a_giant_number() -> None:
    with pytest.raises(QuantityError, match="exponent"):
        parse_quantity("1e999999999")


@pytest.mark.parametrize(
    ("text", "millicores"),
    [("3500m", 3500), ("8", 8000), ("1.5", 1500), ("100n", 1), ("123456789n", 124), ("0", 0)],
)
def test_cpu_millicores_rounds_up_like_milli_value(text: str, millicores: int) -> None:
    assert cpu_millicores(text) == millicores


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("32596084Ki", 32596084 * 1024),
        ("256Gi", 256 * 2**30),
        ("0.5Gi", 2**29),
        ("1e3", 1000),
        ("100n", 1),
        ("1500m", 2),
        ("-1500m", -1),
    ],
)
def test_memory_bytes_rounds_up_like_value(text: str, size: int) -> None:
    assert memory_bytes(text) == size


def test_rounding_helpers_reject_invalid_text() -> None:
    with pytest.raises(QuantityError):
        cpu_millicores("lots")
    with pytest.raises(QuantityError):
        memory_bytes("12 Gi")
