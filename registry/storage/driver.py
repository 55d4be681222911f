"""The storage driver protocol: a dumb key/value store of byte streams.

Drivers know nothing of digests, manifests or repositories; `BlobStore` adds that meaning.
Keys are relative, `/`-separated paths built only by `registry.storage.layout`.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol


class StorageError(Exception):
    """The driver could not complete an operation (disk full, permission, network)."""


class PathNotFound(StorageError):
    """The key does not exist."""


class StorageFull(StorageError):
    """No space left (or over quota) where the bytes go: nothing was stored."""


_FULL = (errno.ENOSPC, errno.EDQUOT)


def storage_error(exc: OSError, what: str) -> StorageError:
    """The driver's error for a failed system call: StorageFull when the disk is full."""
    cls = StorageFull if exc.errno in _FULL else StorageError
    return cls(f"{what}: {exc.strerror or exc}")


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object found by `StorageDriver.walk`."""

    key: str
    size: int
    modified: datetime  # when its bytes were last written (aware, UTC)


class AppendWriter(Protocol):
    """Bytes appended to an upload in progress. `close` ends the writer; the bytes are made
    durable when they are moved into place, not before."""

    async def write(self, *pieces: bytes) -> None:
        """Append `pieces`, in order, after what came before."""
        ...

    async def close(self) -> None: ...
    async def abort(self) -> None:
        """Drop everything written through this writer, back to where it started."""
        ...


class StorageDriver(Protocol):
    async def stat(self, key: str) -> int | None:
        """Size in bytes of the object at `key`, or None when there is none."""
        ...

    def read(self, key: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream the bytes of `key` from `offset`, `length` of them (all when None).

        Raises PathNotFound on first iteration when the key does not exist.
        """
        ...

    async def put(self, key: str, data: bytes) -> None:
        """Write a small object atomically: readers see the old bytes or the new, never a mix."""
        ...

    async def append(self, key: str, offset: int) -> AppendWriter:
        """A writer that appends to `key` from `offset`, discarding anything past it."""
        ...

    async def move(self, source: str, destination: str) -> None:
        """Atomically rename `source` to `destination`, replacing it if present."""
        ...

    async def delete(self, key: str) -> None:
        """Remove a key, or everything under a prefix; absent keys are not an error."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Keys directly under `prefix` (one level, like a directory listing), sorted."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A filesystem path holding the bytes of `key`, when the driver has one."""
        ...

    # For garbage collection and fsck (registry/gc/) ------------------------------------------

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Remove these objects (keys, not prefixes); absent ones are not an error.

        One call per batch of a collection, so a backend that can delete many objects in one
        request must: S3 sends DeleteObjects with up to 1,000 keys each, never a request per
        key. The filesystem driver also removes the folder of each key when it is left empty.
        Raises StorageError when some could not be removed (the others may have been).
        """
        ...

    async def abort_upload(self, key: str) -> None:
        """Forget an unfinished upload written at `key` through `append`: its bytes, and
        whatever the driver keeps for it (S3 aborts the multipart upload, whose parts would
        otherwise be kept and billed forever). Absent is not an error."""
        ...

    def walk(self, prefix: str) -> AsyncIterator[StoredObject]:
        """Every object under `prefix`, at any depth, in no particular order, with its size and
        modification time: one listing for fsck, not a stat per key (S3: ListObjectsV2 pages).
        Nothing when the prefix holds nothing."""
        ...
