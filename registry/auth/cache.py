"""Credentials this process has verified, so a request presenting them again skips the costly
check: a slow password hash (Basic auth on every request of a script), a token's signature
(Bearer on every request of a pull).

One mechanism for both: a bounded map, least recently used entries dropped first, each entry
good until its own deadline. Keys are keyed BLAKE2b hashes (a MAC, one pass, cheaper than
HMAC-SHA256 on every request) of the credential under a random key made per process, so
the cache never holds a secret, and its keys say nothing about one outside the process.
What an entry is worth is the caller's to check as well (a password's entry counts only
while the database holds the same hash; a token's only while its signing key verifies and
its account lives, looked up again every so often).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class VerifiedCache(Generic[T]):
    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        """`size` entries at most (0: keep nothing); deadlines are in `clock`'s time."""
        self.size = size
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, tuple[T, float]] = OrderedDict()

    def _id(self, parts: tuple[str, ...]) -> bytes:
        if len(parts) == 1:  # a token
            message = parts[0].encode("utf-8", "surrogateescape")
        else:  # each part length-prefixed, so no two splits of the same bytes share a key
            encoded = [part.encode("utf-8", "surrogateescape") for part in parts]
            message = b"".join(len(part).to_bytes(4, "big") + part for part in encoded)
        return hashlib.blake2b(message, key=self._key, digest_size=32).digest()

    def get(self, *credential: str) -> T | None:
        """The value kept for this credential, if its deadline has not passed."""
        if not self.size:
            return None
        key = self._id(credential)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, value: T, until: float, *credential: str) -> None:
        """Keep `value` for this credential until `until` (in `clock`'s time)."""
        if not self.size or until <= self.clock():
            return
        key = self._id(credential)
        self._entries[key] = (value, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def discard(self, *credential: str) -> None:
        self._entries.pop(self._id(credential), None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
