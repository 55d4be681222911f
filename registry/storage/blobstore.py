"""Blobs by digest over a storage driver: streamed uploads hashed on the fly, verified commits.

An upload's bytes go to `uploads/<id>/data`. `commit_upload` checks the digest, then moves them
to the blob's key in one atomic step; a blob key therefore only ever holds verified bytes. The
API does the same in two steps (`verify_upload`, then `place_upload`) with the blob reserved
against garbage collection in between (registry/gc/).
Hash state is cached per process to avoid re-reading an upload; when it is missing (a restart,
another replica took the previous chunk) the bytes already stored are hashed again. Callers
keep to one writer per upload at a time (the API holds a claim in the database for that).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import BinaryIO

from registry.errors import DigestInvalid
from registry.oci.digest import Digest, Hasher, new_hasher
from registry.storage import layout
from registry.storage.driver import StorageDriver
from registry.storage.pipeline import BlockPipeline

DEFAULT_ALGORITHM = "sha256"
_MAX_CACHED_HASHERS = 1024
MIN_BLOCK_BYTES = 256 * 1024
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


class BlobStore:
    def __init__(self, driver: StorageDriver, buffer_bytes: int = 4 * 1024 * 1024) -> None:
        self.driver = driver
        self.buffer_bytes = buffer_bytes
        self._appending = 0  # appends in progress in this process
        self._hashers: OrderedDict[str, tuple[int, Hasher]] = OrderedDict()
        # Uploads this process verified and moved into place, as (digest, size): when the
        # database then fails to record the blob (its disk is full), the client's retry of
        # the same PUT finds the bytes already where they belong.
        self._committed: OrderedDict[str, tuple[Digest, int]] = OrderedDict()

    async def stat(self, digest: Digest) -> int | None:
        return await self.driver.stat(layout.blob_key(digest))

    def read(
        self, digest: Digest, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        return self.driver.read(layout.blob_key(digest), offset, length)

    def local_path(self, digest: Digest) -> Path | None:
        return self.driver.local_path(layout.blob_key(digest))

    def open_local(self, digest: Digest) -> BinaryIO | None:
        """The blob's file opened for reading, when the driver keeps it on local disk."""
        path = self.driver.local_path(layout.blob_key(digest))
        if path is None:
            return None
        try:
            return open(path, "rb", buffering=0)
        except FileNotFoundError:
            return None

    async def read_all(self, digest: Digest) -> bytes:
        return b"".join([chunk async for chunk in self.read(digest)])

    async def append_upload(self, upload_id: str, offset: int, body: AsyncIterator[bytes]) -> int:
        """Append a request body to an upload at `offset`; return the new size.

        Bytes are hashed and written in large blocks (lists of the body's pieces, not joined)
        in worker threads while the next block arrives. If the body fails midway (client
        gone, disk full), the upload is put back exactly as it was and the error propagates.
        """
        self._appending += 1
        try:
            return await self._append(upload_id, offset, body)
        finally:
            self._appending -= 1

    def _block_bytes(self) -> int:
        """The block size now: `buffer_bytes`, shrinking while more uploads run at once, so
        that their buffers together stay near a fixed budget."""
        shared = self.buffer_bytes * 2 // max(self._appending, 1)
        return min(self.buffer_bytes, max(shared, MIN_BLOCK_BYTES))

    async def _append(self, upload_id: str, offset: int, body: AsyncIterator[bytes]) -> int:
        hasher = await self._hasher_at(upload_id, offset)
        resume_point = hasher.copy()
        writer = await self.driver.append(layout.upload_key(upload_id), offset)
        pipeline = BlockPipeline(hasher, writer)
        size = offset
        pieces: list[bytes] = []
        buffered = 0
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
            await writer.close()
        except BaseException:
            await pipeline.stop()
            await writer.abort()
            self._remember(upload_id, offset, resume_point)
            raise
        self._remember(upload_id, size, hasher)
        return size

    async def commit_upload(self, upload_id: str, size: int, digest: Digest) -> None:
        """Verify the upload's bytes against `digest` and move them to the blob's key.

        Raises DigestInvalid when they do not match; the upload is left for the caller to drop.
        """
        await self.verify_upload(upload_id, size, digest)
        await self.place_upload(upload_id, size, digest)

    async def verify_upload(self, upload_id: str, size: int, digest: Digest) -> None:
        """Check that the upload holds `size` bytes whose digest is `digest`, leaving them
        where they are (the API reserves the blob against garbage collection before it moves
        them: registry/gc/). Raises DigestInvalid when they do not match."""
        stored = await self.driver.stat(layout.upload_key(upload_id))
        if (
            stored is None
            and self._committed.get(upload_id) == (digest, size)
            and await self.driver.stat(layout.blob_key(digest)) == size
        ):
            return  # a retry: this upload's bytes were verified and moved by the last try
        if stored is None and size == 0:  # nothing was ever sent: the empty blob
            await self.start_upload(upload_id)
            stored = 0
        if stored != size:
            raise DigestInvalid(
                "the upload's stored bytes are not the size recorded",
                detail={"digest": str(digest)},
            )
        actual = await self._digest_of_upload(upload_id, size, digest.algorithm)
        if actual != digest.encoded:
            raise DigestInvalid(
                detail={"digest": str(digest), "actual": f"{digest.algorithm}:{actual}"}
            )

    async def place_upload(self, upload_id: str, size: int, digest: Digest) -> None:
        """Move a verified upload's bytes to the blob's key (unless they are there already)
        and drop the upload. Raises DigestInvalid when the upload's bytes are gone."""
        key = layout.blob_key(digest)
        if await self.driver.stat(key) != size:
            if await self.driver.stat(layout.upload_key(upload_id)) != size:
                raise DigestInvalid(
                    "the upload's bytes are gone; push the blob again",
                    detail={"digest": str(digest)},
                )
            await self.driver.move(layout.upload_key(upload_id), key)
        # else someone stored these bytes already: one copy is enough.
        await self.delete_upload(upload_id)
        self._committed[upload_id] = (digest, size)
        while len(self._committed) > _MAX_CACHED_HASHERS:
            self._committed.popitem(last=False)

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
        actual = hasher.hexdigest()
        if actual != digest.encoded:
            raise DigestInvalid(
                detail={"digest": str(digest), "actual": f"{digest.algorithm}:{actual}"}
            )

    async def place_data(self, data: bytes, digest: Digest) -> None:
        """Store verified bytes under the blob's key, unless they are there already."""
        key = layout.blob_key(digest)
        if await self.driver.stat(key) != len(data):
            await self.driver.put(key, data)

    async def start_upload(self, upload_id: str) -> None:
        """Create the upload's (empty) file; appending creates it too, so this is optional."""
        writer = await self.driver.append(layout.upload_key(upload_id), 0)
        await writer.close()

    async def upload_size(self, upload_id: str) -> int | None:
        return await self.driver.stat(layout.upload_key(upload_id))

    async def delete_upload(self, upload_id: str) -> None:
        self._hashers.pop(upload_id, None)
        await self.driver.abort_upload(layout.upload_key(upload_id))
        await self.driver.delete(layout.upload_prefix(upload_id))

    async def delete_blob(self, digest: Digest) -> None:
        await self.driver.delete(layout.blob_key(digest).rsplit("/", 1)[0])

    async def delete_blobs(self, digests: Sequence[Digest]) -> None:
        """Remove the bytes of many blobs, in one batch of the driver's (garbage collection)."""
        await self.driver.delete_many([layout.blob_key(digest) for digest in digests])

    async def _digest_of_upload(self, upload_id: str, size: int, algorithm: str) -> str:
        if algorithm == DEFAULT_ALGORITHM:
            hasher = await self._hasher_at(upload_id, size)
            return hasher.copy().hexdigest()
        hasher = await self._rehash(upload_id, size, algorithm)
        return hasher.hexdigest()

    async def _hasher_at(self, upload_id: str, offset: int) -> Hasher:
        cached = self._hashers.get(upload_id)
        if cached is not None and cached[0] == offset:
            return cached[1]
        return await self._rehash(upload_id, offset, DEFAULT_ALGORITHM)

    async def _rehash(self, upload_id: str, size: int, algorithm: str) -> Hasher:
        hasher = new_hasher(algorithm)
        if size:
            async for chunk in self.driver.read(layout.upload_key(upload_id), 0, size):
                await asyncio.to_thread(hasher.update, chunk)
        return hasher

    def _remember(self, upload_id: str, offset: int, hasher: Hasher) -> None:
        self._hashers[upload_id] = (offset, hasher)
        self._hashers.move_to_end(upload_id)
        while len(self._hashers) > _MAX_CACHED_HASHERS:
            self._hashers.popitem(last=False)
