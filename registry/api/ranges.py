"""The HTTP `Range` header (RFC 9110, single byte ranges), parsed without I/O."""

from __future__ import annotations

import re

from registry.numbers import TOO_LARGE, parse_decimal

_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)\Z")


class Unsatisfiable(ValueError):
    """A well-formed range that selects no byte of the representation."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte positions wanted, or None to send everything.

    A malformed header, or one asking for several ranges, is ignored as RFC 9110 allows.
    Raises Unsatisfiable for a range that starts past the end. Positions of more digits than
    any size has are read as past the end (`parse_decimal`'s TOO_LARGE), as RFC 9110 reads
    a last position beyond the representation.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if not match:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # suffix range: the last N bytes
        suffix = _position(last_text)
        if suffix == 0 or size == 0:
            raise Unsatisfiable(header)
        return max(0, size - suffix), size - 1
    first = _position(first_text)
    if last_text and _position(last_text) < first:
        return None
    if first >= size:
        raise Unsatisfiable(header)
    last = _position(last_text) if last_text else size - 1
    return first, min(last, size - 1)


def _position(text: str) -> int:
    """A byte position of ASCII digits (the pattern's), TOO_LARGE when longer than any size."""
    value = parse_decimal(text, saturate=True)
    return TOO_LARGE if value is None else value


_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?\Z")


def parse_content_range(header: str) -> tuple[int, int] | None:
    """An upload chunk's inclusive (start, end) from `Content-Range`, or None if malformed
    (or of positions longer than any upload can be)."""
    match = _CONTENT_RANGE.match(header.strip())
    if not match:
        return None
    start, end = parse_decimal(match.group(1)), parse_decimal(match.group(2))
    if start is None or end is None or end < start:
        return None
    return start, end
