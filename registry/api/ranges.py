"""The HTTP `Range` header (RFC 9110, single byte ranges), parsed without I/O."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)\Z")


class Unsatisfiable(ValueError):
    """A well-formed range that selects no byte of the representation."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte positions wanted, or None to send everything.

    A malformed header, or one asking for several ranges, is ignored as RFC 9110 allows.
    Raises Unsatisfiable for a range that starts past the end.
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
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise Unsatisfiable(header)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        raise Unsatisfiable(header)
    last = int(last_text) if last_text else size - 1
    return first, min(last, size - 1)


_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?\Z")


def parse_content_range(header: str) -> tuple[int, int] | None:
    """An upload chunk's inclusive (start, end) from `Content-Range`, or None if malformed."""
    match = _CONTENT_RANGE.match(header.strip())
    if not match:
        return None
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        return None
    return start, end
