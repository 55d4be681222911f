"""Hashing and writing an upload's blocks in worker threads while the next block arrives.

Both run in order, each in its own thread, so a push uses two cores: one hashing, one
receiving; the disk gets up to `depth` blocks of slack before the network has to wait for
it. A block is the list of body pieces as they were received: they are hashed one after
another and written in one vectored write, never joined (a copy of every byte pushed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from registry.oci.digest import Hasher
from registry.storage.driver import AppendWriter

DEPTH = 2  # blocks queued for the writer
BLOCKS_HELD = DEPTH + 2  # at most, per upload: one filling, the queued ones, one being written


class BlockPipeline:
    def __init__(self, hasher: Hasher, writer: AppendWriter, depth: int = DEPTH) -> None:
        self._hasher = hasher
        self._writer = writer
        self._hashing: asyncio.Future[None] | None = None
        self._queue: asyncio.Queue[Sequence[bytes] | None] = asyncio.Queue(depth)
        self._writing = asyncio.ensure_future(self._write_in_order())

    async def _write_in_order(self) -> None:
        while (block := await self._queue.get()) is not None:
            await self._writer.write(*block)

    def _hash(self, block: Sequence[bytes]) -> None:
        for piece in block:
            self._hasher.update(piece)

    async def _enqueue(self, item: Sequence[bytes] | None) -> None:
        """Queue `item` for the writer, or raise the writer's error if it has failed."""
        put = asyncio.ensure_future(self._queue.put(item))
        done, _ = await asyncio.wait({put, self._writing}, return_when=asyncio.FIRST_COMPLETED)
        if put not in done:
            put.cancel()
            self._writing.result()  # raises what stopped the writer
            raise RuntimeError("the block writer stopped early")

    async def push(self, block: Sequence[bytes]) -> None:
        """Hash and write `block` (its pieces in order) after the blocks before it."""
        if self._hashing is not None:
            await self._hashing
        self._hashing = asyncio.ensure_future(asyncio.to_thread(self._hash, block))
        await self._enqueue(block)

    async def finish(self) -> None:
        """Wait until every block is hashed and written; raise the first failure."""
        if self._hashing is not None:
            await self._hashing
        await self._enqueue(None)
        await self._writing

    async def stop(self) -> None:
        """After a failure: let the block in hand land, drop the rest, and wait for both
        threads, so nothing is written after the caller truncates the upload."""
        while not self._queue.empty():
            self._queue.get_nowait()
        if not self._writing.done():
            self._queue.put_nowait(None)
        await asyncio.gather(self._writing, return_exceptions=True)
        if self._hashing is not None:
            await asyncio.gather(self._hashing, return_exceptions=True)
