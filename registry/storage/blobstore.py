"""Blobs by digest over a storage driver: streamed uploads hashed on the fly, verified commits.

An upload's bytes go to `uploads/<id>/data`. `commit_upload` checks the digest, then has the
driver commit them to the blob's key in one atomic step; a blob key therefore only ever holds
verified bytes. The API does the same in two steps (`verify_upload`, then `place_upload`) with
the blob reserved against garbage collection in between (registry/gc/). On a driver that
would copy the bytes to move them (S3), they go to `uploaded/<id>/data` instead and stay
there: `place_upload` returns that *location*, the blob's row keeps it, and every read of the
blob is given it (None: the digest's own key). Whatever an upload needs to continue, in any
process, travels with its session in the database: its size, the hash state at its end
(`hashstate`), and the driver's upload state. When a saved hash state cannot be used (saved
by a build that could not export it, or a digest of another algorithm), the bytes already
stored are read back and hashed again.
Callers keep to one writer per upload at a time (the API holds a claim in the database)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from registry.errors import DigestInvalid
from registry.oci.digest import Digest, Hasher, new_hasher
from registry.storage import hashstate, layout
from registry.storage.driver import AppendWriter, StorageDriver
from registry.storage.pipeline import BLOCKS_HELD, BlockPipeline

DEFAULT_ALGORITHM = "sha256"
_MAX_REMEMBERED_COMMITS = 1024
MIN_BLOCK_BYTES = 256 * 1024
IDLE_SECONDS = 1.0  # longer than the pause between two chunks of one push
_HASH_ON_LOOP_BYTES = 64 * 1024  # hashing this much takes ~50 us: not worth a thread hop
_MAX_PIECES = 256  # body pieces in one block; more (tiny ones) are joined
_SMALL_PIECE = 64 * 1024  # pieces below this may be joined; larger ones are left as they came


def _join_small_tail(pieces: list[bytes]) -> None:
    """Join the run of small pieces at the end of `pieces`, in place. Only the tail: a piece
    that has grown large is not copied again, so a body of tiny pieces costs each byte a few
    copies, not one per join."""
    start = len(pieces)
    while start and len(pieces[start - 1]) < _SMALL_PIECE:
        start -= 1
    pieces[start:] = [b"".join(pieces[start:])]


@dataclass(frozen=True, slots=True)
class UploadProgress:
    """Where an upload stands after a request: what its session keeps for the next one."""

    size: int
    hash_state: bytes | None = None  # None: the hash cannot be resumed (it is recomputed)
    storage_state: str | None = None  # the driver's, opaque


def _saved(hasher: Any) -> bytes | None:
    save = getattr(hasher, "save", None)
    return save() if save is not None else None


class BlobStore:
    def __init__(
        self,
        driver: StorageDriver,
        buffer_bytes: int = 4 * 1024 * 1024,
        memory_bytes: int = 16 * 1024 * 1024,
        on_idle: Callable[[], object] | None = None,
    ) -> None:
        self.driver = driver
        self.buffer_bytes = buffer_bytes  # the largest block
        self.memory_bytes = memory_bytes  # what the blocks of every upload together may hold
        # Called once no upload has been received for `idle_seconds` (the server gives the
        # freed blocks back to the kernel then: registry/allocator.py).
        self.on_idle = on_idle
        self.idle_seconds = IDLE_SECONDS
        self._pouring = 0  # uploads being received in this process
        self._pours = 0  # uploads begun, ever: a quiet spell is one where this stays put
        # Uploads this process verified and committed, as (digest, size, location): when the
        # database then fails to record the blob (its disk is full), the client's retry of
        # the same PUT finds the bytes already where they belong.
        self._committed: OrderedDict[str, tuple[Digest, int, str | None]] = OrderedDict()

    async def stat(self, digest: Digest, location: str | None = None) -> int | None:
        return await self.driver.stat(_key_of(digest, location))

    def read(
        self,
        digest: Digest,
        offset: int = 0,
        length: int | None = None,
        location: str | None = None,
    ) -> AsyncIterator[bytes]:
        return self.driver.read(_key_of(digest, location), offset, length)

    def local_path(self, digest: Digest, location: str | None = None) -> Path | None:
        return self.driver.local_path(_key_of(digest, location))

    def open_local(self, digest: Digest, location: str | None = None) -> BinaryIO | None:
        """The blob's file opened for reading, when the driver keeps it on local disk."""
        path = self.driver.local_path(_key_of(digest, location))
        if path is None:
            return None
        try:
            return open(path, "rb", buffering=0)
        except FileNotFoundError:
            return None

    async def redirect_url(self, digest: Digest, location: str | None = None) -> str | None:
        return await self.driver.redirect_url(_key_of(digest, location))

    async def read_all(self, digest: Digest, location: str | None = None) -> bytes:
        return b"".join([chunk async for chunk in self.read(digest, location=location)])

    def _upload_key(self, upload_id: str) -> str:
        if self.driver.keeps_uploads_in_place:
            return layout.placed_key(upload_id)
        return layout.upload_key(upload_id)

    async def append_upload(
        self,
        upload_id: str,
        offset: int,
        body: AsyncIterator[bytes],
        hash_state: bytes | None = None,
        storage_state: str | None = None,
        length: int | None = None,
    ) -> UploadProgress:
        """Append a request body to an upload at `offset` (its session's saved states given;
        `length`: the body's, when known); return where the upload stands now.

        Bytes are hashed and written in large blocks (lists of the body's pieces, not joined)
        in worker threads while the next block arrives. If the body fails midway (client
        gone, disk full), the upload is put back exactly as it was and the error propagates.
        """
        key = self._upload_key(upload_id)
        hasher, storage_state = await self._resume(key, offset, hash_state, storage_state)
        writer = await self.driver.append(key, offset, storage_state, length=length)
        size = await self._pour(body, hasher, writer, offset)
        storage_state = await _closed(writer)
        return UploadProgress(size, _saved(hasher), storage_state)

    def _block_bytes(self) -> int:
        """The block size now: `buffer_bytes`, smaller while more uploads run at once, so
        that the blocks they all hold (BLOCKS_HELD each at most) stay within `memory_bytes`."""
        shared = self.memory_bytes // (BLOCKS_HELD * max(self._pouring, 1))
        largest = min(self.buffer_bytes, self.driver.write_block_bytes or self.buffer_bytes)
        return min(largest, max(shared, MIN_BLOCK_BYTES))

    async def _pour(
        self, body: AsyncIterator[bytes], hasher: Hasher, writer: AppendWriter, offset: int
    ) -> int:
        """Hash and write `body` through `writer`; its new end. On failure the writer is
        aborted (the upload is back where it was) and the error propagates."""
        pipeline = BlockPipeline(hasher, writer)
        size = offset
        pieces: list[bytes] = []
        buffered = 0
        self._pouring += 1
        self._pours += 1
        try:
            async for piece in body:
                pieces.append(piece)
                buffered += len(piece)
                if buffered >= self._block_bytes():
                    size += buffered
                    await pipeline.push(pieces)
                    pieces, buffered = [], 0
                elif len(pieces) >= _MAX_PIECES:
                    _join_small_tail(pieces)
            if pieces:
                size += buffered
                await pipeline.push(pieces)
            await pipeline.finish()
        except BaseException:
            await pipeline.stop()
            await writer.abort()
            raise
        finally:
            self._pouring -= 1
            if self._pouring == 0 and self.on_idle is not None:
                asyncio.get_running_loop().call_later(
                    self.idle_seconds, self._quiet_since, self._pours
                )
        return size

    def _quiet_since(self, pours: int) -> None:
        if self._pours == pours and self.on_idle is not None:  # none began since
            self.on_idle()

    async def _resume(
        self, key: str, offset: int, hash_state: bytes | None, storage_state: str | None
    ) -> tuple[Hasher, str | None]:
        """The hash of the upload's first `offset` bytes, and the storage state to go on with:
        from the saved hash state, else by reading the bytes back (the driver's upload made a
        plain object first, since an unfinished S3 multipart upload cannot be read)."""
        if offset == 0:
            return hashstate.new(DEFAULT_ALGORITHM), storage_state
        hasher = hashstate.load(hash_state, DEFAULT_ALGORITHM)
        if hasher is not None:
            return hasher, storage_state
        await self._sealed(key, storage_state)
        return await self._rehash(key, offset, DEFAULT_ALGORITHM), None

    async def _sealed(self, key: str, storage_state: str | None) -> None:
        """Make the upload a plain, readable object at its own key."""
        if storage_state is not None:
            await self.driver.commit(key, storage_state, key)

    async def commit_upload(
        self,
        upload_id: str,
        size: int,
        digest: Digest,
        hash_state: bytes | None = None,
        storage_state: str | None = None,
    ) -> str | None:
        """Verify the upload's bytes against `digest` and commit them to the blob's key (or
        in place: their location is returned, as by `place_upload`).

        Raises DigestInvalid when they do not match; the upload is left for the caller to drop.
        """
        storage_state = await self.verify_upload(upload_id, size, digest, hash_state, storage_state)
        return await self.place_upload(upload_id, size, digest, storage_state)

    async def verify_upload(
        self,
        upload_id: str,
        size: int,
        digest: Digest,
        hash_state: bytes | None = None,
        storage_state: str | None = None,
    ) -> str | None:
        """Check that the upload holds `size` bytes whose digest is `digest`, leaving them
        where they are (the API reserves the blob against garbage collection before it places
        them: registry/gc/); the storage state to place them with. Raises DigestInvalid when
        they do not match."""
        committed = self._committed.get(upload_id)
        if (
            committed is not None
            and committed[:2] == (digest, size)
            and await self.stat(digest, committed[2]) == size
        ):
            return storage_state  # a retry: this upload's bytes were placed by the last try
        if size == 0:  # nothing was ever sent: the empty blob
            _check(new_hasher(digest.algorithm), digest)
            return None
        key = self._upload_key(upload_id)
        if storage_state is None and await self.driver.stat(key) != size:
            raise DigestInvalid(
                "the upload's stored bytes are not the size recorded",
                detail={"digest": str(digest)},
            )
        hasher: Hasher | None = hashstate.load(hash_state, digest.algorithm)
        if hasher is None:  # read the bytes back: the fallback
            await self._sealed(key, storage_state)
            storage_state = None
            hasher = await self._rehash(key, size, digest.algorithm)
        _check(hasher, digest)
        return storage_state

    async def place_upload(
        self,
        upload_id: str,
        size: int,
        digest: Digest,
        storage_state: str | None = None,
        known: str | None = None,
    ) -> str | None:
        """Commit a verified upload's bytes to the blob's key, or where they are when the
        driver keeps uploads in place, unless the blob is stored already (at `known`, its
        row's location: one copy); drop the rest of the upload. Returns the bytes' location
        (None: the digest's key). Raises DigestInvalid when the upload's bytes are gone."""
        blob = layout.blob_key(digest)
        location = known
        if size == 0:
            location = None
            if await self.driver.stat(blob) != 0:
                await self.driver.put(blob, b"")
        elif await self.stat(digest, known) != size:  # else someone stored it already
            key = self._upload_key(upload_id)
            location = key if self.driver.keeps_uploads_in_place else None
            # In place, an earlier try of this commit may have finished it (the database
            # then failed): the bytes are there, whole.
            stored = None
            if location is not None or storage_state is None:
                stored = await self.driver.stat(key)
            if location is None or stored != size:
                if storage_state is None and stored != size:
                    raise DigestInvalid(
                        "the upload's bytes are gone; push the blob again",
                        detail={"digest": str(digest)},
                    )
                await self.driver.commit(key, storage_state, location or blob)
        # Committed in place, nothing else is left: the commit removed its tail objects.
        if location != layout.placed_key(upload_id):
            await self.delete_upload(upload_id)
        self._committed[upload_id] = (digest, size, location)
        while len(self._committed) > _MAX_REMEMBERED_COMMITS:
            self._committed.popitem(last=False)
        return location

    async def store_stream(
        self,
        upload_id: str,
        body: AsyncIterator[bytes],
        digest: Digest,
        expected: int | None,
        known: str | None = None,
    ) -> int:
        """A whole blob in one streamed body, its digest known up front: verified as it is
        written, and committed where the driver allows writing it in place (S3) without a
        copy. A blob already stored (with the `expected` size, at `known` when its row has a
        location) is only hashed, not stored again. Raises DigestInvalid when the bytes do
        not match; returns their size."""
        blob = layout.blob_key(digest)
        hasher = hashstate.new(digest.algorithm)
        if expected is not None and await self.stat(digest, known) == expected:
            size = await self._pour(body, hasher, _Discard(), 0)
            _check(hasher, digest)
            return size
        key = layout.upload_key(upload_id)
        writer = await self.driver.append(key, 0, None, destination=blob, length=expected)
        size = await self._pour(body, hasher, writer, 0)
        try:
            _check(hasher, digest)
        except DigestInvalid:
            await writer.abort()
            raise
        state = await _closed(writer)
        await self.driver.commit(key, state, blob)
        return size

    async def store(self, data: bytes, digest: Digest) -> None:
        """Verify a small blob held in memory against `digest`, and store it (once).

        Raises DigestInvalid when it does not match.
        """
        await self.verify_data(data, digest)
        await self.place_data(data, digest)

    async def verify_data(self, data: bytes, digest: Digest) -> None:
        """Raise DigestInvalid unless `data` hashes to `digest`."""
        hasher = new_hasher(digest.algorithm)
        if len(data) > _HASH_ON_LOOP_BYTES:
            await asyncio.to_thread(hasher.update, data)
        else:
            hasher.update(data)
        _check(hasher, digest)

    async def place_data(self, data: bytes, digest: Digest, known: str | None = None) -> None:
        """Store verified bytes under the blob's key, unless they are there already (or at
        `known`, its row's location)."""
        if await self.stat(digest, known) != len(data):
            await self.driver.put(layout.blob_key(digest), data)

    async def start_upload(self, upload_id: str) -> None:
        """Create the upload's (empty) file; appending creates it too, so this is optional."""
        writer = await self.driver.append(self._upload_key(upload_id), 0)
        await writer.close()

    async def upload_size(self, upload_id: str) -> int | None:
        return await self.driver.stat(self._upload_key(upload_id))

    async def delete_upload(self, upload_id: str, everywhere: bool = False) -> None:
        """Remove what the upload left in storage; under `uploaded/` only on a driver that
        writes there, unless `everywhere` (fsck)."""
        await self.driver.delete(layout.upload_prefix(upload_id))
        if self.driver.keeps_uploads_in_place or everywhere:
            await self.driver.delete(layout.placed_prefix(upload_id))

    async def delete_blobs(self, blobs: Sequence[Digest | tuple[Digest, str | None]]) -> None:
        """Remove the bytes of many blobs, given as digests or (digest, location): their
        digests' keys and their locations, in one batch of the driver's (garbage
        collection)."""
        keys = []
        for blob in blobs:
            digest, location = blob if isinstance(blob, tuple) else (blob, None)
            keys.append(layout.blob_key(digest))
            if location is not None:
                keys.append(location)
        await self.driver.delete_many(keys)

    async def _rehash(self, key: str, size: int, algorithm: str) -> Hasher:
        hasher: Hasher = hashstate.new(algorithm)
        if size:
            async for chunk in self.driver.read(key, 0, size):
                await asyncio.to_thread(hasher.update, chunk)
        return hasher


def _key_of(digest: Digest, location: str | None) -> str:
    """Where the blob's bytes are: its row's location, else the digest's key."""
    return location or layout.blob_key(digest)


async def _closed(writer: AppendWriter) -> str | None:
    """Close `writer` (its last writes may fail there); on failure, abort it."""
    try:
        return await writer.close()
    except BaseException:
        await writer.abort()
        raise


def _check(hasher: Hasher, digest: Digest) -> None:
    actual = hasher.hexdigest()
    if actual != digest.encoded:
        raise DigestInvalid(
            detail={"digest": str(digest), "actual": f"{digest.algorithm}:{actual}"}
        )


class _Discard:
    """A writer that keeps nothing: the body of a blob stored already is only hashed."""

    async def write(self, *pieces: bytes) -> None:
        pass

    async def close(self) -> str | None:
        return None

    async def abort(self) -> None:
        pass
