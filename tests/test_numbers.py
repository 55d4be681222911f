"""`registry.numbers.parse_decimal`: the one reader of numbers clients send."""

from __future__ import annotations

import pytest

from registry.numbers import MAX_DIGITS, TOO_LARGE, parse_decimal

LONG = "9" * 5000  # past Python's int-conversion limit of 4,300 digits


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("7", 7), ("0010", 10), ("0" * 5000 + "5", 5), ("9" * MAX_DIGITS, 10**18 - 1)],
)
def test_numbers(text: str, value: int) -> None:
    assert parse_decimal(text) == value
    assert parse_decimal(text, saturate=True) == value


@pytest.mark.parametrize(
    "text",
    [None, "", " 5", "5 ", "+5", "-5", "1_000", "0x10", "1e3", "²", "\u0663", "\uff15", "1.0"],
)
def test_not_numbers(text: str | None) -> None:
    assert parse_decimal(text) is None
    assert parse_decimal(text, saturate=True) is None


@pytest.mark.parametrize("text", ["1" + "0" * MAX_DIGITS, LONG, "0" * 10 + LONG])
def test_too_large(text: str) -> None:
    assert parse_decimal(text) is None
    assert parse_decimal(text, saturate=True) == TOO_LARGE
