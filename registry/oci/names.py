"""Repository names and tags, with the distribution-spec grammar."""

from __future__ import annotations

import re

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
_TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")

# Distribution caps the whole name (with a host) at 255 characters.
MAX_NAME_LENGTH = 255


def is_repository_name(name: str) -> bool:
    return 0 < len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name) is not None


def is_tag(tag: str) -> bool:
    return _TAG.fullmatch(tag) is not None


def referrers_tag(digest: str) -> str:
    """The fallback tag of the referrers tag schema for a subject digest."""
    algorithm, _, encoded = digest.partition(":")
    raw = f"{algorithm[:32]}-{encoded[:64]}"
    return re.sub(r"[^a-zA-Z0-9._-]", "-", raw)
