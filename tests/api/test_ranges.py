"""`registry.api.ranges`: the Range and Content-Range parsers, without a server."""

from __future__ import annotations

import pytest

from registry.api.ranges import Unsatisfiable, parse_content_range, parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-5", 100, (95, 99)),
        ("bytes=-500", 100, (0, 99)),
        ("bytes=90-500", 100, (90, 99)),
        ("bytes=99-99", 100, (99, 99)),
        (" bytes = 1 - 2 ", 100, (1, 2)),
    ],
)
def test_satisfiable(header: str, size: int, expected: tuple[int, int]) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header",
    [None, "", "bytes=", "bytes=-", "bytes=abc", "items=0-1", "0-9", "bytes=0-1,-", "bytes=1-2;"],
)
def test_ignored(header: str | None) -> None:
    """Not a list of byte ranges: the whole representation, as if there were no header."""
    assert parse_range(header, 100) is None


@pytest.mark.parametrize(
    "header", ["bytes=0-1,3-4", "bytes=0-1, 3-4", "bytes=500-600,0-9", "bytes=9-0,-5"]
)
def test_several_ranges_any_satisfiable_send_everything(header: str) -> None:
    assert parse_range(header, 100) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=100-", 100),
        ("bytes=100-200", 100),
        ("bytes=-0", 100),
        ("bytes=0-", 0),
        ("bytes=-1", 0),
        ("bytes=9-0", 100),  # last before first: invalid (RFC 9110 14.1.1), 416 all the same
        ("bytes=500-0", 1000),
        ("bytes=200-300,100-", 100),  # several ranges, none satisfiable
        ("bytes=5-1,-0", 100),
    ],
)
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0-9", (0, 9)),
        ("10-10", (10, 10)),
        ("bytes 0-9", (0, 9)),
        ("bytes=0-9", (0, 9)),
        ("0-9/10", (0, 9)),
        ("bytes 0-9/*", (0, 9)),
    ],
)
def test_content_range(header: str, expected: tuple[int, int]) -> None:
    assert parse_content_range(header) == expected


@pytest.mark.parametrize("header", ["", "9-0", "abc", "0-", "-9", "0-9/x", "bytes */10", "1-2-3"])
def test_malformed_content_range(header: str) -> None:
    assert parse_content_range(header) is None
