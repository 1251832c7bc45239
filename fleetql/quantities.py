"""Kubernetes resource quantities ("7500m", "32596084Ki", "1e3") as exact decimals.

Node capacity, allocatable and metrics usage all arrive as ``resource.Quantity`` strings. Summing
them across a fleet in floats drifts; ``decimal.Decimal`` keeps them exact, and the two rounding
helpers round up exactly as Kubernetes' ``MilliValue()`` and ``Value()`` do, so our totals match
what ``kubectl`` shows.
"""

from __future__ import annotations

import decimal
import re
from decimal import Decimal

__all__ = ["QuantityError", "cpu_millicores", "memory_bytes", "parse_quantity"]


class QuantityError(ValueError):
    """The text is not a Kubernetes quantity; the message quotes the text."""


# sign, integer digits, optional fraction, then the suffix (checked below); at least one digit.
_QUANTITY = re.compile(r"([+-]?)(\d*)(?:\.(\d*))?(.*)", re.ASCII | re.DOTALL)
_EXPONENT = re.compile(r"[eE]([+-]?\d+)", re.ASCII)

_DECIMAL_SUFFIXES = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}

# Far beyond any real quantity, but keeps "1e999999999" from building a gigantic integer.
_MAX_DECIMAL_EXPONENT = 1000


def parse_quantity(text: str) -> Decimal:
    """Parse a Kubernetes quantity exactly; ``QuantityError`` for anything Kubernetes rejects.

    Accepts an optional sign, a decimal number, and one suffix: a decimal SI one (n u m k M G T P
    E), a binary one (Ki Mi Gi Ti Pi Ei) or a decimal exponent (e3, E-3). No whitespace.
    """
    match = _QUANTITY.fullmatch(text)
    if match is None:  # pragma: no cover - the pattern matches every string
        raise QuantityError(f"{text!r} is not a Kubernetes quantity")
    sign, whole, fraction, suffix = match.groups()
    if not whole and not fraction:
        raise QuantityError(f"{text!r} is not a Kubernetes quantity: it has no digits")
    number = Decimal(f"{sign}{whole or '0'}.{fraction or '0'}")
    if suffix in _DECIMAL_SUFFIXES:
        exponent = _DECIMAL_SUFFIXES[suffix]
        power_of_two = 0
    elif suffix in _BINARY_SUFFIXES:
        exponent = 0
        power_of_two = _BINARY_SUFFIXES[suffix]
    elif (exponent_match := _EXPONENT.fullmatch(suffix)) is not None:
        exponent = int(exponent_match.group(1))
        power_of_two = 0
        if abs(exponent) > _MAX_DECIMAL_EXPONENT:
            raise QuantityError(f"{text!r} is not a Kubernetes quantity: exponent out of range")
    else:
        raise QuantityError(
            f"{text!r} is not a Kubernetes quantity: unknown suffix {suffix!r} "
            "(use n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent like e3)"
        )
    # Enough precision that no product below is ever rounded: the result stays exact.
    digits = len(whole) + len(fraction or "") + 2 * _MAX_DECIMAL_EXPONENT + 64
    context = decimal.Context(prec=digits, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
    return context.multiply(number.scaleb(exponent, context), Decimal(2**power_of_two))


def cpu_millicores(text: str) -> int:
    """CPU in millicores, rounded up like Kubernetes' ``Quantity.MilliValue()`` ("100n" is 1)."""
    value = parse_quantity(text)
    return _ceiling(value.scaleb(3, decimal.Context(prec=len(value.as_tuple().digits) + 3)))


def memory_bytes(text: str) -> int:
    """Memory in bytes, rounded up like Kubernetes' ``Quantity.Value()`` ("0.5Ki" is 512)."""
    return _ceiling(parse_quantity(text))


def _ceiling(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=decimal.ROUND_CEILING))
