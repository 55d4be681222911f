"""An upload on S3: a multipart upload whose state travels with the upload session.

S3 takes parts of at least 5 MiB (all but the last), and an unfinished multipart upload can
be neither read nor appended to in place. So an upload is

    the multipart upload (its key, id, and each part's ETag and size)    parts >= 5 MiB
    + a tail: the last bytes that did not fill a part, as small objects  < 5 MiB in all
      next to the upload's key (`<key>.tail-<offset>-<random>`), one per request

and all of that is the `UploadState` saved (as JSON) with the session after every request,
so whichever process takes the next one carries on. A writer cuts parts of `part_size` only
while more than 5 MiB stays buffered behind the cut; whatever is left at the end of a request
becomes one last part when it reaches 5 MiB, else a tail object. A request of 5 MiB or more
therefore leaves no tail, and a tail is read back (once per byte) only when the requests
before it were small. A writer of a whole blob (a monolithic push) keeps nothing back: it
cuts a part as soon as it has one, and its last part may be short. Tail objects have random
names, and parts are checked by ETag when the upload completes, so a writer that lost its
claim but still runs can never slip its bytes into the upload in place of another's.

When the request says how many bytes it brings (`length`: its Content-Length), each part's
size is known before its first byte arrives, and the part is *streamed*: its UploadPart
starts at once and sends the bytes as they come (`PartStream`), instead of after the last
one. Otherwise a request's last part went up only once the body had ended, and the client
waited that long before its next PATCH: a sixth of a chunked push. The part's bytes are
still kept until it is stored, so a streamed part that fails is sent again whole.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

MIN_PART = 5 * 1024 * 1024  # S3's smallest part but the last
MAX_PARTS = 10_000
PARTS_IN_FLIGHT = 2  # parts of one writer uploading at once, while the next fills


@dataclass
class UploadState:
    key: str  # where the multipart upload is (the upload's key, or the blob's)
    upload_id: str | None = None  # None: no part yet
    parts: list[tuple[str, int]] = field(default_factory=list)  # (ETag, size), part 1 first
    tail: list[tuple[str, int]] = field(default_factory=list)  # (object key, first bytes)

    @property
    def size(self) -> int:
        return sum(size for _, size in self.parts) + self.tail_size

    @property
    def tail_size(self) -> int:
        return sum(size for _, size in self.tail)

    def dump(self) -> str:
        return json.dumps(
            {"v": 1, "key": self.key, "id": self.upload_id, "parts": self.parts, "tail": self.tail}
        )

    @classmethod
    def load(cls, text: str) -> UploadState:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise ValueError("not an S3 upload state")
        return cls(
            key=str(doc["key"]),
            upload_id=doc["id"],
            parts=[(str(etag), int(size)) for etag, size in doc["parts"]],
            tail=[(str(key), int(size)) for key, size in doc["tail"]],
        )


class Operations(Protocol):
    """What the writer needs from the driver (each runs off the event loop, errors mapped)."""

    budget: asyncio.Semaphore  # parts uploading at once, all writers of the process together

    async def create_multipart(self, key: str) -> str: ...
    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str: ...
    async def upload_part_stream(
        self, key: str, upload_id: str, number: int, body: PartStream
    ) -> str: ...
    async def put_object(self, key: str, data: bytes) -> None: ...
    async def read_start(self, key: str, size: int) -> bytes: ...
    async def abort_multipart(self, key: str, upload_id: str) -> None: ...
    async def delete_keys(self, keys: list[str]) -> None: ...


class PartStream:
    """A part's body, fed by the event loop as the request's bytes arrive and read by the
    thread sending it (botocore reads it like a file of `size` bytes)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fed = 0
        self._pieces: list[memoryview] = []
        self._ended = False
        self._failed = False
        self._read_from = False
        self._ready = threading.Condition()

    def feed(self, piece: bytes) -> None:
        with self._ready:
            self._pieces.append(memoryview(piece))
            self.fed += len(piece)
            self._ready.notify()

    def end(self, failed: bool = False) -> None:
        """No more bytes: all were fed, or (`failed`) the request broke off."""
        with self._ready:
            self._ended = True
            self._failed = failed
            self._ready.notify()

    def seek(self, offset: int, whence: int = 0) -> int:
        """Only to the start, before anything was read: a retry of the request (botocore
        rewinds its body) fails at once instead, and the part is sent again whole."""
        with self._ready:
            if offset or whence or self._read_from:
                self._failed = True
                self._ready.notify()
            return 0

    def read(self, amount: int = -1) -> bytes:
        with self._ready:
            self._read_from = True
            while not self._pieces and not self._ended and not self._failed:
                self._ready.wait()
            if self._failed:
                raise OSError("the part's stream cannot be sent again")
            if not self._pieces:
                return b""
            head = self._pieces[0]
            if 0 <= amount < len(head):
                self._pieces[0] = head[amount:]
                return bytes(head[:amount])
            self._pieces.pop(0)
            return bytes(head)


@dataclass
class _Streaming:
    """The part being streamed: its number, body, the bytes fed so far (kept until it is
    stored, to send again whole if the stream fails), and the task sending it."""

    number: int
    body: PartStream
    kept: list[bytes] = field(default_factory=list)
    task: asyncio.Future[None] | None = None
    all_fed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def missing(self) -> int:
        return self.body.size - self.body.fed


class S3AppendWriter:
    def __init__(
        self,
        ops: Operations,
        state: UploadState,
        part_size: int,
        whole: bool = False,
        length: int | None = None,
    ) -> None:
        self._ops = ops
        # The writer of a whole blob in one request (a monolithic push): its last part may be
        # short, so it need not keep 5 MiB back for one, and holds a part less in memory.
        self._whole = whole
        self._state = state
        self._start = UploadState(state.key, state.upload_id, list(state.parts), list(state.tail))
        self._part_size = part_size
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._tail_loaded = not state.tail  # the old tail's bytes are in `_pieces` already
        self._in_flight: set[asyncio.Future[None]] = set()
        self._new_tail: list[str] = []
        # Bytes this request still brings (None: unknown), and the part being streamed.
        self._coming = length
        self._streaming: _Streaming | None = None

    async def write(self, *pieces: bytes) -> None:
        if self._coming is not None and self._tail_loaded:
            await self._stream(pieces)
            return
        for piece in pieces:
            if piece:
                self._pieces.append(piece)
                self._buffered += len(piece)
                if self._coming is not None:
                    self._coming -= len(piece)
        kept_back = 0 if self._whole else MIN_PART
        while self._buffered + self._unread_tail() >= self._part_size + kept_back:
            await self._load_tail()
            await self._send_part(self._part_size)

    # Streamed parts -------------------------------------------------------------------------

    def _streamed_size(self, ahead: int) -> int | None:
        """The size of the next part, given the bytes `ahead` (buffered and still coming);
        None when they are too few for a part (they become a tail object at the end)."""
        if ahead >= self._part_size + MIN_PART or (self._whole and ahead > self._part_size):
            return self._part_size
        if ahead >= MIN_PART or (self._whole and ahead and self._state.parts):
            return ahead
        return None

    async def _stream(self, pieces: tuple[bytes, ...]) -> None:
        assert self._coming is not None
        for piece in pieces:
            if piece:
                self._coming -= len(piece)
                self._pieces.append(piece)
                self._buffered += len(piece)
                await self._pump()

    async def _pump(self) -> None:
        """Feed the buffered bytes to streamed parts, each begun once its size is known;
        the request's last bytes, too few for a part, stay for the tail."""
        assert self._coming is not None
        while self._buffered:
            if self._streaming is None:
                size = self._streamed_size(self._buffered + self._coming)
                if size is None:
                    return
                await self._start_stream(size)
            assert self._streaming is not None
            self._feed(self._cut(min(self._buffered, self._streaming.missing)))

    async def _start_stream(self, size: int) -> None:
        await self._claim_part_slot()
        self._state.parts.append(("", size))
        streaming = _Streaming(len(self._state.parts), PartStream(size))
        streaming.task = asyncio.ensure_future(self._send_streamed(streaming))
        self._in_flight.add(streaming.task)
        self._streaming = streaming

    def _feed(self, piece: bytes) -> None:
        streaming = self._streaming
        assert streaming is not None and len(piece) <= streaming.missing
        streaming.kept.append(piece)
        streaming.body.feed(piece)
        if not streaming.missing:
            streaming.body.end()
            streaming.all_fed.set()
            self._streaming = None

    async def _send_streamed(self, streaming: _Streaming) -> None:
        key, upload_id = self._state.key, self._state.upload_id
        assert upload_id is not None
        try:
            try:
                etag = await self._ops.upload_part_stream(
                    key, upload_id, streaming.number, streaming.body
                )
            except Exception:
                await streaming.all_fed.wait()  # (cancelled when the request broke off)
                data = b"".join(streaming.kept)  # sent again whole: botocore may retry it
                etag = await self._ops.upload_part(key, upload_id, streaming.number, data)
            self._state.parts[streaming.number - 1] = (etag, streaming.body.size)
        finally:
            streaming.kept.clear()
            self._ops.budget.release()

    def _stop_stream(self) -> None:
        """The request broke off mid-part: end its stream as failed (its part is left out
        of the state, as the writer is aborted)."""
        if self._streaming is not None:
            self._streaming.body.end(failed=True)
            if self._streaming.task is not None:
                self._streaming.task.cancel()
            self._streaming = None

    # Parts cut from the buffer ----------------------------------------------------------

    def _unread_tail(self) -> int:
        return 0 if self._tail_loaded else self._state.tail_size

    async def _load_tail(self) -> None:
        """Put the old tail's bytes before the new ones: they go into the next part."""
        if self._tail_loaded:
            return
        old = [await self._ops.read_start(key, size) for key, size in self._state.tail]
        self._pieces[:0] = old
        self._buffered += sum(map(len, old))
        self._state.tail = []
        self._tail_loaded = True

    def _cut(self, size: int) -> bytes:
        """The first `size` buffered bytes, as one object (each byte copied once)."""
        taken, total = [], 0
        while total < size:
            piece = self._pieces.pop(0)
            if total + len(piece) > size:
                keep = size - total
                self._pieces.insert(0, piece[keep:])
                piece = piece[:keep]
            taken.append(piece)
            total += len(piece)
        self._buffered -= size
        return taken[0] if len(taken) == 1 else b"".join(taken)

    async def _send_part(self, size: int) -> None:
        """Send the first `size` buffered bytes as the next part, once this writer and the
        process may have one more part in flight: they are joined into one object only then,
        so a writer kept waiting holds its pieces and no copy of them."""
        await self._claim_part_slot()
        data = self._cut(size)
        self._state.parts.append(("", len(data)))
        self._in_flight.add(asyncio.ensure_future(self._upload(len(self._state.parts), data)))

    async def _claim_part_slot(self) -> None:
        """Wait until this writer and the process may have one more part in flight (the
        caller releases the budget when the part is stored); begin the multipart upload."""
        self._raise_failures()
        while len(self._in_flight) >= PARTS_IN_FLIGHT:
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            self._raise_failures()
        state = self._state
        if state.upload_id is None:
            state.upload_id = await self._ops.create_multipart(state.key)
        if len(state.parts) >= MAX_PARTS:
            raise ValueError("the upload has more parts than S3 takes")
        await self._ops.budget.acquire()

    async def _upload(self, number: int, data: bytes) -> None:
        try:
            assert self._state.upload_id is not None
            etag = await self._ops.upload_part(self._state.key, self._state.upload_id, number, data)
            self._state.parts[number - 1] = (etag, len(data))
        finally:
            self._ops.budget.release()

    def _raise_failures(self) -> None:
        done = {f for f in self._in_flight if f.done()}
        self._in_flight -= done
        failures = [f.exception() for f in done if not f.cancelled()]
        for failure in failures:
            if failure is not None:
                raise failure

    async def _drain(self) -> None:
        if self._in_flight:
            await asyncio.wait(self._in_flight)
        self._raise_failures()

    async def close(self) -> str | None:
        if self._streaming is not None:  # the body ended short of what it announced
            self._stop_stream()
            raise ValueError("the request ended before the bytes it announced")
        last_part = self._whole and self._buffered > 0 and bool(self._state.parts)
        if last_part or self._buffered + self._unread_tail() >= MIN_PART:
            await self._load_tail()
            await self._send_part(self._buffered)
        elif self._buffered:
            # Too little for a part: kept as a small object of its own, read back once.
            data = self._cut(self._buffered)
            offset = self._state.size
            key = f"{self._state.key}.tail-{offset:012x}-{secrets.token_hex(4)}"
            self._new_tail.append(key)
            await self._ops.put_object(key, data)
            self._state.tail.append((key, len(data)))
        await self._drain()
        return self._state.dump()

    async def abort(self) -> None:
        """Let parts in flight end, then drop what this writer added: a multipart upload it
        started, its tail object. Parts it uploaded into an older multipart upload are left
        out of the state, so the upload's completion leaves them out too."""
        self._stop_stream()
        if self._in_flight:
            await asyncio.wait(self._in_flight)
        self._in_flight.clear()
        if self._start.upload_id is None and self._state.upload_id is not None:
            await self._ops.abort_multipart(self._state.key, self._state.upload_id)
        if self._new_tail:
            await self._ops.delete_keys(self._new_tail)


def completed_parts(state: UploadState) -> list[dict[str, Any]]:
    return [{"PartNumber": i + 1, "ETag": etag} for i, (etag, _) in enumerate(state.parts)]
