"""Content digests (`algorithm:encoded`) as the OCI image-spec defines them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

# Registered algorithms we can verify, with the exact length of their hex encoding.
_ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> Hasher: ...


class DigestError(ValueError):
    """A string that is not a digest we accept."""


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    encoded: str

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse and validate; raise DigestError for bad syntax or an unsupported algorithm."""
        if len(value) > 256 or not _GRAMMAR.match(value):
            raise DigestError(f"invalid digest: {value[:80]!r}")
        algorithm, encoded = value.split(":", 1)
        length = _ALGORITHMS.get(algorithm)
        if length is None:
            raise DigestError(f"unsupported digest algorithm: {algorithm!r}")
        if len(encoded) != length or not re.fullmatch(r"[a-f0-9]+", encoded):
            raise DigestError(f"invalid {algorithm} digest: {value[:80]!r}")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        hasher = new_hasher(algorithm)
        hasher.update(data)
        return cls(algorithm, hasher.hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"


def is_digest(value: str) -> bool:
    """True when `value` looks like a digest (has the grammar), whether supported or not."""
    return ":" in value


def new_hasher(algorithm: str) -> Hasher:
    if algorithm not in _ALGORITHMS:
        raise DigestError(f"unsupported digest algorithm: {algorithm!r}")
    return hashlib.new(algorithm)  # type: ignore[return-value]


def supported_algorithms() -> tuple[str, ...]:
    return tuple(_ALGORITHMS)
