"""Decimal numbers sent by clients (`n`, `Range`, `Content-Range`, `Content-Length`, `limit`),
read without Python's own `int()` on the raw text.

`int()` accepts what HTTP does not (`+5`, ` 5 `, `1_000`, and Unicode digits such as `٣`),
`str.isdigit()` lets through characters `int()` then refuses (`²`), and past 4,300 digits
`int()` raises ValueError ("Exceeds the limit (4300 digits) for integer string conversion"):
each was a 500 where the client deserved a 400. Here a number is ASCII digits only, leading
zeros allowed, and any value of more than 18 significant digits (beyond 10^18 bytes, or items,
more than any registry holds) is `TOO_LARGE`, which callers refuse like a malformed one or
read as "past every end", as fits.
"""

from __future__ import annotations

MAX_DIGITS = 18  # 10**18 - 1 < 2**63: fits every size, offset and count we store
TOO_LARGE = 10**MAX_DIGITS  # what parse_decimal(..., saturate=True) gives for longer numbers


def parse_decimal(text: str | None, *, saturate: bool = False) -> int | None:
    """The value of `text` if it is a decimal number of ASCII digits; else None.

    A number of more than MAX_DIGITS significant digits is None, or TOO_LARGE (a value
    larger than any real size) with `saturate`: a Range's last byte position of 10^5000
    is then simply past the end of every blob.
    """
    if not text or not (text.isascii() and text.isdigit()):
        return None
    significant = text.lstrip("0")
    if len(significant) > MAX_DIGITS:
        return TOO_LARGE if saturate else None
    return int(significant) if significant else 0
