"""The storage driver protocol: a dumb key/value store of byte streams.

Drivers know nothing of digests, manifests or repositories; `BlobStore` adds that meaning.
Keys are relative, `/`-separated paths built only by `registry.storage.layout`.

An upload is written by `append` and made an object by `commit`. Between requests (which
may land on different processes or machines) the driver's progress travels as an opaque
*upload state*: the string a writer's `close` returns, which the caller saves with the upload
session and hands back to the next `append` and to `commit`. The filesystem driver needs none
(its file is the state); the S3 driver keeps its multipart upload's id and parts there.

    StorageError                  the driver could not complete an operation
    ├── PathNotFound              the key does not exist
    └── StorageUnavailable        a transient failure (unreachable, throttled): retry later
"""

from __future__ import annotations

import errno
import re
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


class StorageUnavailable(StorageError):
    """A failure that may pass (storage unreachable, throttling): the client may retry."""

    retry_after_seconds = 5


_SAFE_KEY = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*\Z")


def check_key(key: str) -> str:
    """`key`, when it is a safe relative key (no `.`/`..` parts, no empty or odd ones)."""
    # Keys come from layout.py, but refuse anything that could leave the root all the same.
    if not _SAFE_KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise StorageError(f"unsafe storage key {key!r}")
    return key


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object found by `StorageDriver.walk`."""

    key: str
    size: int
    modified: datetime  # when its bytes were last written (aware, UTC)


class AppendWriter(Protocol):
    """Bytes appended to an upload in progress."""

    async def write(self, *pieces: bytes) -> None:
        """Append `pieces`, in order, after what came before."""
        ...

    async def close(self) -> str | None:
        """End the writer once everything is stored; the upload's new state (None when the
        driver keeps none). The bytes are made durable when committed, not before."""
        ...

    async def abort(self) -> None:
        """Drop everything written through this writer, back to where it started."""
        ...


class StorageDriver(Protocol):
    # The largest block worth handing an append writer at once; None: as large as the
    # BlobStore's budget allows. A driver that gathers its own parts (S3) needs only small
    # ones: larger, they would be held twice while its parts are sent.
    write_block_bytes: int | None
    # True when moving an upload's bytes to another key would copy them (S3): uploads are then
    # written under `uploaded/` and stay there once they are blobs (storage/layout.py).
    keeps_uploads_in_place: bool

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

    async def append(
        self,
        key: str,
        offset: int,
        state: str | None = None,
        destination: str | None = None,
        length: int | None = None,
    ) -> AppendWriter:
        """A writer that appends to the upload at `key` from `offset`, discarding anything
        past it. `state` is what the upload's last writer returned (None for a new upload, or
        for an object at `key` written whole). `destination`, when already known, is where
        `commit` will put the bytes: a driver whose unfinished writes are invisible may write
        them there directly, so that the commit moves nothing. `length`, when known, is how
        many bytes the writer will be given (S3 streams its parts then)."""
        ...

    async def commit(self, source: str, state: str | None, destination: str) -> None:
        """Make the upload at `source` (with its last `state`) the object at `destination`,
        atomically and without the bytes leaving the storage; `source` may be `destination`
        (the upload becomes a plain object there, readable and appendable with state None)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove a key, or everything under a prefix (unfinished uploads included); absent
        keys are not an error."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Keys directly under `prefix` (one level, like a directory listing), sorted."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A filesystem path holding the bytes of `key`, when the driver has one."""
        ...

    async def redirect_url(self, key: str) -> str | None:
        """A short-lived URL a client may GET the bytes of `key` from directly, or None."""
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

    def walk(self, prefix: str) -> AsyncIterator[StoredObject]:
        """Every object under `prefix`, at any depth, in no particular order, with its size and
        modification time: one listing for fsck, not a stat per key (S3: ListObjectsV2 pages).
        Nothing when the prefix holds nothing."""
        ...

    async def abort_abandoned(self, older_than: datetime) -> int:
        """Drop unfinished writes at blob keys begun before `older_than`, which only a process
        that died mid-push leaves (an upload's own go with its session, through `delete`);
        how many. S3 aborts such multipart uploads, which would otherwise be billed forever;
        the filesystem driver writes to an upload's own key first and has none."""
        ...
