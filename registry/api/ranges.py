"""The HTTP `Range` header (RFC 9110, section 14), parsed without I/O.

What a blob GET makes of it:
- no header, or one that is not a list of byte ranges (another unit, a typo, a lone `-`):
  ignored, the whole blob (200), as RFC 9110 14.2 says for what a server does not understand;
- one range: that range (206), its end clipped to the blob; a suffix `bytes=-N` is the last
  N bytes;
- ranges none of which can be served, because they start past the end (`bytes=5000-` of a
  smaller blob, anything of an empty one, `bytes=-0`) or end before they start
  (`bytes=500-0`, invalid under 14.1.1): 416 with `Content-Range: bytes */<size>` (14.2:
  "invalid or unsatisfiable ... SHOULD send a 416");
- several ranges of which any can be served: the whole blob (200). Clients of a registry
  ask for one range at a time; a multipart/byteranges answer is not made.
Positions of more digits than any size has are read as past the end (`parse_decimal`'s
TOO_LARGE), as RFC 9110 reads a last position beyond the representation.
"""

from __future__ import annotations

import re

from registry.numbers import TOO_LARGE, parse_decimal

_RANGE_SET = re.compile(r"^bytes=([0-9]*-[0-9]*(?:,[0-9]*-[0-9]*)*)\Z")


class Unsatisfiable(ValueError):
    """Ranges none of which selects a byte of the representation."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte positions wanted, or None to send everything.

    Raises Unsatisfiable when no range of the header can be served (see the module's doc).
    """
    if not header:
        return None
    match = _RANGE_SET.match(header.replace(" ", "").replace("\t", ""))
    if not match:
        return None
    specs = match.group(1).split(",")
    if "-" in specs:  # neither first nor last: not a range at all
        return None
    served = [_served(spec, size) for spec in specs]
    if all(positions is None for positions in served):
        raise Unsatisfiable(header)
    return served[0] if len(specs) == 1 else None


def _served(spec: str, size: int) -> tuple[int, int] | None:
    """The bytes one `first-last` range selects of `size`; None when it selects none."""
    first_text, last_text = spec.split("-")
    if not first_text:  # suffix range: the last N bytes
        suffix = _position(last_text)
        return (max(0, size - suffix), size - 1) if suffix and size else None
    first = _position(first_text)
    last = _position(last_text) if last_text else size - 1
    if last < first or first >= size:
        return None
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
