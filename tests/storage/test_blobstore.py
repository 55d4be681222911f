"""`registry.storage.blobstore`: streamed appends, verified commits, resumption, one copy."""

from __future__ import annotations

import hashlib
import os
import statistics
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from registry.errors import DigestInvalid
from registry.oci.digest import Digest
from registry.storage import layout
from registry.storage.blobstore import BlobStore
from registry.storage.filesystem import FilesystemDriver

UPLOAD = "a" * 32
OTHER_UPLOAD = "b" * 32


class Boom(Exception):
    """A request body that fails midway (the client went away)."""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture(params=[4 * 1024 * 1024, 7], ids=["default-buffer", "tiny-buffer"])
def store(request: pytest.FixtureRequest, root: Path) -> BlobStore:
    """Blob stores with the default buffer and with one so small every piece is a block."""
    return BlobStore(FilesystemDriver(root), buffer_bytes=request.param)


async def body(pieces: Iterable[bytes], fail_after: int | None = None) -> AsyncIterator[bytes]:
    for i, piece in enumerate(pieces):
        if fail_after is not None and i == fail_after:
            raise Boom
        yield piece


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def push(store: BlobStore, upload_id: str, data: bytes, algorithm: str = "sha256") -> Digest:
    await store.start_upload(upload_id)
    size = await store.append_upload(upload_id, 0, body(split(data, 1000)))
    assert size == len(data)
    digest = Digest.of(data, algorithm)
    await store.commit_upload(upload_id, size, digest)
    return digest


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_push_and_read(store: BlobStore, root: Path) -> None:
    data = os.urandom(10_000)
    digest = await push(store, UPLOAD, data)
    assert await store.stat(digest) == len(data)
    assert await store.read_all(digest) == data
    assert b"".join([c async for c in store.read(digest, 100, 50)]) == data[100:150]
    assert files(root) == [layout.blob_key(digest)]
    assert await store.upload_size(UPLOAD) is None
    path = store.local_path(digest)
    assert path is not None and path.read_bytes() == data


async def test_sha512(store: BlobStore) -> None:
    data = os.urandom(5000)
    digest = await push(store, UPLOAD, data, "sha512")
    assert digest.algorithm == "sha512"
    assert await store.read_all(digest) == data


async def test_empty_blob(store: BlobStore) -> None:
    digest = await push(store, UPLOAD, b"")
    assert str(digest) == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert await store.stat(digest) == 0


async def test_wrong_digest_keeps_blob_key_empty(store: BlobStore, root: Path) -> None:
    await store.start_upload(UPLOAD)
    size = await store.append_upload(UPLOAD, 0, body([b"actual bytes"]))
    wrong = Digest.of(b"other bytes")
    with pytest.raises(DigestInvalid):
        await store.commit_upload(UPLOAD, size, wrong)
    assert await store.stat(wrong) is None
    assert await store.stat(Digest.of(b"actual bytes")) is None
    assert not (root / "blobs").exists()
    await store.delete_upload(UPLOAD)
    assert files(root) == []


async def test_wrong_bytes_under_a_stored_digest_and_size_are_refused(
    store: BlobStore,
) -> None:
    """Bytes of the same size as a stored blob, committed or stored under its digest, are
    checked all the same: "already stored" must never stand in for the digest check, or
    anyone knowing a blob's digest and size could claim it with garbage."""
    stored = os.urandom(4000)
    digest = await push(store, UPLOAD, stored)
    forged = os.urandom(len(stored))
    await store.start_upload(OTHER_UPLOAD)
    size = await store.append_upload(OTHER_UPLOAD, 0, body(split(forged, 1000)))
    with pytest.raises(DigestInvalid):
        await store.commit_upload(OTHER_UPLOAD, size, digest)
    with pytest.raises(DigestInvalid):
        await store.store(forged, digest)
    assert await store.read_all(digest) == stored


async def test_a_commit_retried_after_its_move_finds_its_bytes_in_place(
    store: BlobStore,
) -> None:
    """The database may fail to record a blob its upload's bytes were moved for: the same
    commit again succeeds. Another upload without bytes gets nothing from that."""
    data = os.urandom(4000)
    digest = await push(store, UPLOAD, data)
    await store.commit_upload(UPLOAD, len(data), digest)
    with pytest.raises(DigestInvalid):
        await store.commit_upload(OTHER_UPLOAD, len(data), digest)
    with pytest.raises(DigestInvalid):
        await store.commit_upload(UPLOAD, len(data) - 1, digest)
    assert await store.read_all(digest) == data


async def test_chunks_resume_in_a_new_process(root: Path) -> None:
    """A new BlobStore (a restart, another replica) has no hash state and re-reads the bytes."""
    data = os.urandom(30_000)
    first = BlobStore(FilesystemDriver(root))
    await first.start_upload(UPLOAD)
    assert await first.append_upload(UPLOAD, 0, body([data[:12_345]])) == 12_345
    second = BlobStore(FilesystemDriver(root))
    assert await second.upload_size(UPLOAD) == 12_345
    assert await second.append_upload(UPLOAD, 12_345, body(split(data[12_345:], 999))) == len(data)
    await second.commit_upload(UPLOAD, len(data), Digest.of(data))
    assert await second.read_all(Digest.of(data)) == data


async def test_failed_body_puts_the_upload_back(store: BlobStore) -> None:
    good, more = os.urandom(5000), os.urandom(20_000)
    await store.start_upload(UPLOAD)
    assert await store.append_upload(UPLOAD, 0, body([good])) == len(good)
    with pytest.raises(Boom):
        await store.append_upload(UPLOAD, len(good), body(split(more, 100), fail_after=150))
    assert await store.upload_size(UPLOAD) == len(good)
    # The retry of the same chunk, and the commit, see exactly the bytes that stayed.
    assert await store.append_upload(UPLOAD, len(good), body([more])) == len(good + more)
    await store.commit_upload(UPLOAD, len(good + more), Digest.of(good + more))
    assert await store.read_all(Digest.of(good + more)) == good + more


async def test_append_at_an_earlier_offset_drops_the_rest(store: BlobStore) -> None:
    """Bytes past the offset are from a write that never completed (a crash mid-chunk)."""
    await store.start_upload(UPLOAD)
    await store.append_upload(UPLOAD, 0, body([b"keep", b"stale"]))
    assert await store.append_upload(UPLOAD, 4, body([b"fresh"])) == 9
    await store.commit_upload(UPLOAD, 9, Digest.of(b"keepfresh"))
    assert await store.read_all(Digest.of(b"keepfresh")) == b"keepfresh"


async def test_commit_counts_only_the_recorded_size(store: BlobStore) -> None:
    """The metadata's size is the truth: extra bytes on disk past it do not go into the blob."""
    await store.start_upload(UPLOAD)
    await store.append_upload(UPLOAD, 0, body([b"0123456789"]))
    fresh = BlobStore(store.driver)  # no cached hash state
    with pytest.raises(DigestInvalid):
        await fresh.commit_upload(UPLOAD, 10, Digest.of(b"01234"))


async def test_second_copy_is_not_stored(store: BlobStore, root: Path) -> None:
    data = os.urandom(4000)
    digest = await push(store, UPLOAD, data)
    again = await push(store, OTHER_UPLOAD, data)
    assert again == digest
    assert files(root) == [layout.blob_key(digest)]
    assert await store.read_all(digest) == data


async def test_interleaved_uploads_keep_their_own_state(store: BlobStore) -> None:
    a, b = os.urandom(3000), os.urandom(3000)
    await store.start_upload(UPLOAD)
    await store.start_upload(OTHER_UPLOAD)
    await store.append_upload(UPLOAD, 0, body([a[:1000]]))
    await store.append_upload(OTHER_UPLOAD, 0, body([b[:2000]]))
    await store.append_upload(UPLOAD, 1000, body([a[1000:]]))
    await store.append_upload(OTHER_UPLOAD, 2000, body([b[2000:]]))
    await store.commit_upload(UPLOAD, 3000, Digest.of(a))
    await store.commit_upload(OTHER_UPLOAD, 3000, Digest.of(b))
    assert await store.read_all(Digest.of(a)) == a
    assert await store.read_all(Digest.of(b)) == b


async def test_delete_upload_and_blob(store: BlobStore, root: Path) -> None:
    await store.start_upload(UPLOAD)
    await store.append_upload(UPLOAD, 0, body([b"x" * 100]))
    await store.delete_upload(UPLOAD)
    assert await store.upload_size(UPLOAD) is None
    digest = await push(store, OTHER_UPLOAD, b"blob")
    await store.delete_blob(digest)
    assert await store.stat(digest) is None
    assert files(root) == []


class NotedWrites(FilesystemDriver):
    """The real filesystem driver, noting the lengths of the pieces of every write (one
    block) its writers get."""

    writes: list[list[int]]

    @property
    def sizes(self) -> list[int]:
        return [sum(pieces) for pieces in self.writes]

    async def append(self, key: str, offset: int):  # type: ignore[no-untyped-def]
        writer = await super().append(key, offset)
        write = writer.write

        async def noted(*pieces: bytes) -> None:
            self.writes.append([len(piece) for piece in pieces])
            await write(*pieces)

        writer.write = noted  # type: ignore[method-assign]
        return writer


async def test_blocks_shrink_as_uploads_run_side_by_side(root: Path) -> None:
    import asyncio

    driver = NotedWrites(root)
    driver.writes = []
    store = BlobStore(driver, buffer_bytes=4 * 1024 * 1024)
    data = os.urandom(8 * 1024 * 1024)
    gate = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        await gate.wait()  # every upload has started before any byte flows
        for piece in split(data, 64 * 1024):
            yield piece

    alone = await store.append_upload("c" * 32, 0, body(split(data, 64 * 1024)))
    assert alone == len(data) and max(driver.sizes) == 4 * 1024 * 1024
    driver.writes.clear()
    ids = [f"{i:032x}" for i in range(8)]
    tasks = [asyncio.ensure_future(store.append_upload(i, 0, slow_body())) for i in ids]
    await asyncio.sleep(0.05)
    gate.set()
    assert await asyncio.gather(*tasks) == [len(data)] * 8
    # Eight at once share the budget of two full blocks: 1 MiB blocks, not 4. (The last
    # uploads to finish may take larger ones once the first have ended.)
    assert statistics.median(driver.sizes) == 1024 * 1024
    assert driver.sizes.count(1024 * 1024) >= len(driver.sizes) // 2
    for upload_id in ["c" * 32, *ids]:
        await store.commit_upload(upload_id, len(data), Digest.of(data, "sha256"))
    assert files(root) == [layout.blob_key(Digest.of(data, "sha256"))]


async def test_a_body_of_tiny_pieces_is_stored_whole_in_bounded_writes(root: Path) -> None:
    """Tens of thousands of pieces of a few bytes, between large ones: stored exactly, and
    joined into writes of a few hundred pieces at most (one vectored write each)."""
    import random

    rng = random.Random(7)
    pieces = [rng.randbytes(rng.choice((1, 3, 100, 300))) for _ in range(40_000)]
    pieces[20_000:20_000] = [rng.randbytes(100_000) for _ in range(30)]
    data = b"".join(pieces)
    driver = NotedWrites(root)
    driver.writes = []
    store = BlobStore(driver)
    assert await store.append_upload(UPLOAD, 0, body(pieces)) == len(data)
    assert max(len(pieces) for pieces in driver.writes) <= 512
    digest = Digest.of(data, "sha256")
    await store.commit_upload(UPLOAD, len(data), digest)
    assert await store.read_all(digest) == data
