"""`registry.storage.blobstore`: streamed appends, verified commits, resumption, one copy;
on the filesystem driver and on S3 (SeaweedFS)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest

from registry.errors import DigestInvalid
from registry.oci.digest import Digest
from registry.storage import layout
from registry.storage.blobstore import BlobStore, UploadProgress
from registry.storage.driver import StorageDriver
from registry.storage.filesystem import FilesystemDriver
from storage.test_driver import s3_settings

from support.seaweedfs import SeaweedFS

UPLOAD = "a" * 32
OTHER_UPLOAD = "b" * 32
MiB = 1024 * 1024


class Boom(Exception):
    """A request body that fails midway (the client went away)."""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture(scope="module")
def s3_bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.new_bucket("blobstore")


@pytest.fixture(params=["filesystem", "s3"])
def driver_and_keys(
    request: pytest.FixtureRequest, root: Path
) -> tuple[StorageDriver, Callable[[], list[str]]]:
    """A driver, and what lists every key it holds (to see nothing is left behind)."""
    if request.param == "s3":
        from registry.storage.s3 import S3Driver

        seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
        bucket = request.getfixturevalue("s3_bucket")
        prefix = f"t/{uuid.uuid4().hex}"

        def keys() -> list[str]:
            found = seaweedfs.keys(bucket, prefix + "/")
            unfinished = [k for k in seaweedfs.multipart_uploads(bucket) if k.startswith(prefix)]
            return [k[len(prefix) + 1 :] for k in found + unfinished]

        return S3Driver(s3_settings(seaweedfs, bucket, prefix)), keys
    return FilesystemDriver(root), lambda: files(root)


@pytest.fixture(params=[4 * 1024 * 1024, 7], ids=["default-buffer", "tiny-buffer"])
def store(
    request: pytest.FixtureRequest, driver_and_keys: tuple[StorageDriver, Callable[[], list[str]]]
) -> BlobStore:
    """Blob stores with the default buffer and with one so small every piece is a block."""
    return BlobStore(driver_and_keys[0], buffer_bytes=request.param)


@pytest.fixture
def stored_keys(
    driver_and_keys: tuple[StorageDriver, Callable[[], list[str]]],
) -> Callable[[], list[str]]:
    return driver_and_keys[1]


async def body(pieces: Iterable[bytes], fail_after: int | None = None) -> AsyncIterator[bytes]:
    for i, piece in enumerate(pieces):
        if fail_after is not None and i == fail_after:
            raise Boom
        yield piece


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def push(
    store: BlobStore,
    upload_id: str,
    data: bytes,
    algorithm: str = "sha256",
    known: str | None = None,
) -> tuple[Digest, str | None]:
    """A chunked upload of `data`, committed: its digest, and its location (None: at the
    digest's key), as the blob's row would keep it. `known`: the row's location already."""
    await store.start_upload(upload_id)
    progress = await store.append_upload(upload_id, 0, body(split(data, 1000)))
    assert progress.size == len(data)
    digest = Digest.of(data, algorithm)
    return digest, await commit(store, upload_id, progress, digest, known)


async def commit(
    store: BlobStore,
    upload_id: str,
    progress: UploadProgress,
    digest: Digest,
    known: str | None = None,
) -> str | None:
    storage_state = await store.verify_upload(
        upload_id, progress.size, digest, progress.hash_state, progress.storage_state
    )
    return await store.place_upload(upload_id, progress.size, digest, storage_state, known)


def in_place(store: BlobStore) -> bool:
    return store.driver.keeps_uploads_in_place


async def append(
    store: BlobStore,
    upload_id: str,
    before: UploadProgress | None,
    pieces: Iterable[bytes],
    fail_after: int | None = None,
) -> UploadProgress:
    """An append after `before` (None: a new upload), with the states a session keeps."""
    before = before or UploadProgress(0)
    return await store.append_upload(
        upload_id, before.size, body(pieces, fail_after), before.hash_state, before.storage_state
    )


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_push_and_read(store: BlobStore, stored_keys: Callable[[], list[str]]) -> None:
    """On disk the upload is moved to the digest's key; on S3 it stays where it was written
    (moving it would copy it), and its location is what reads are given."""
    data = os.urandom(10_000)
    digest, where = await push(store, UPLOAD, data)
    assert where == (layout.placed_key(UPLOAD) if in_place(store) else None)
    assert await store.stat(digest, where) == len(data)
    assert await store.read_all(digest, where) == data
    assert b"".join([c async for c in store.read(digest, 100, 50, where)]) == data[100:150]
    assert stored_keys() == [where or layout.blob_key(digest)]  # nothing else left


async def test_local_path(root: Path) -> None:
    store = BlobStore(FilesystemDriver(root))
    data = os.urandom(1000)
    digest, where = await push(store, UPLOAD, data)
    assert where is None
    path = store.local_path(digest)
    assert path is not None and path.read_bytes() == data


async def test_sha512(store: BlobStore) -> None:
    """An upload is hashed with SHA-256 as it comes; a SHA-512 digest is checked by reading
    the bytes back (the fallback), on S3 too."""
    data = os.urandom(6 * MiB + 5)
    digest, where = await push(store, UPLOAD, data, "sha512")
    assert digest.algorithm == "sha512"
    assert await store.read_all(digest, where) == data


async def test_empty_blob(store: BlobStore) -> None:
    digest, where = await push(store, UPLOAD, b"")
    assert where is None
    assert str(digest) == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert await store.stat(digest) == 0


async def test_wrong_digest_keeps_blob_key_empty(
    store: BlobStore, stored_keys: Callable[[], list[str]]
) -> None:
    await store.start_upload(UPLOAD)
    progress = await append(store, UPLOAD, None, [b"actual bytes"])
    wrong = Digest.of(b"other bytes")
    with pytest.raises(DigestInvalid):
        await commit(store, UPLOAD, progress, wrong)
    assert await store.stat(wrong) is None
    assert await store.stat(Digest.of(b"actual bytes")) is None
    assert not [k for k in stored_keys() if k.startswith("blobs/")]
    await store.delete_upload(UPLOAD)
    assert stored_keys() == []


async def test_wrong_bytes_under_a_stored_digest_and_size_are_refused(
    store: BlobStore,
) -> None:
    """Bytes of the same size as a stored blob, committed or stored under its digest, are
    checked all the same: "already stored" must never stand in for the digest check, or
    anyone knowing a blob's digest and size could claim it with garbage."""
    stored = os.urandom(4000)
    digest, where = await push(store, UPLOAD, stored)
    forged = os.urandom(len(stored))
    await store.start_upload(OTHER_UPLOAD)
    progress = await append(store, OTHER_UPLOAD, None, split(forged, 1000))
    with pytest.raises(DigestInvalid):
        await commit(store, OTHER_UPLOAD, progress, digest, where)
    with pytest.raises(DigestInvalid):
        await store.store(forged, digest)
    assert await store.read_all(digest, where) == stored


async def test_a_commit_retried_after_its_move_finds_its_bytes_in_place(
    store: BlobStore,
) -> None:
    """The database may fail to record a blob its upload's bytes were committed for: the
    same commit again succeeds. Another upload without bytes gets nothing from that."""
    data = os.urandom(4000)
    await store.start_upload(UPLOAD)
    progress = await append(store, UPLOAD, None, split(data, 1000))
    digest = Digest.of(data)
    where = await commit(store, UPLOAD, progress, digest)
    assert await commit(store, UPLOAD, progress, digest) == where
    with pytest.raises(DigestInvalid):
        await store.commit_upload(OTHER_UPLOAD, len(data), digest)
    with pytest.raises(DigestInvalid):
        await store.commit_upload(UPLOAD, len(data) - 1, digest)
    assert await store.read_all(digest, where) == data


async def test_chunks_resume_in_another_process(
    driver_and_keys: tuple[StorageDriver, Callable[[], list[str]]],
) -> None:
    """A new BlobStore on a new driver (a restart, another replica) goes on from the states
    the session kept, reading nothing back."""
    data = os.urandom(14 * MiB + 3)
    first = BlobStore(driver_and_keys[0])
    progress = await append(first, UPLOAD, None, [data[: 6 * MiB + 1]])
    second = BlobStore(_reading_forbidden(driver_and_keys[0]))
    progress = await append(second, UPLOAD, progress, split(data[6 * MiB + 1 :], 99_999))
    assert progress.size == len(data)
    where = await commit(second, UPLOAD, progress, Digest.of(data))
    assert await first.read_all(Digest.of(data), where) == data


async def test_without_a_hash_state_the_bytes_are_read_back(store: BlobStore) -> None:
    """A session with no usable hash state (saved by an older build): the stored bytes are
    hashed again, and the upload goes on."""
    data = os.urandom(7 * MiB + 11)
    progress = await append(store, UPLOAD, None, [data[: 5 * MiB + 3]])
    progress = UploadProgress(progress.size, None, progress.storage_state)
    progress = await append(store, UPLOAD, progress, [data[5 * MiB + 3 :]])
    progress = UploadProgress(progress.size, b"SH\x012junk", progress.storage_state)
    where = await commit(store, UPLOAD, progress, Digest.of(data))
    assert await store.read_all(Digest.of(data), where) == data


def _reading_forbidden(driver: StorageDriver) -> StorageDriver:
    """`driver`, failing any read (resumption must not need one)."""

    class NoReads(type(driver)):  # type: ignore[misc]
        def __init__(self) -> None:
            self.__dict__.update(driver.__dict__)

        def read(self, *args: object, **kwargs: object) -> AsyncIterator[bytes]:
            raise AssertionError("read back")

    return NoReads()


async def test_failed_body_puts_the_upload_back(store: BlobStore) -> None:
    good, more = os.urandom(5000), os.urandom(6 * MiB)
    await store.start_upload(UPLOAD)
    progress = await append(store, UPLOAD, None, [good])
    assert progress.size == len(good)
    with pytest.raises(Boom):
        await append(store, UPLOAD, progress, split(more, 100_000), fail_after=55)
    # The retry of the same chunk, and the commit, see exactly the bytes that stayed.
    done = await append(store, UPLOAD, progress, [more])
    assert done.size == len(good + more)
    where = await commit(store, UPLOAD, done, Digest.of(good + more))
    assert await store.read_all(Digest.of(good + more), where) == good + more


async def test_append_at_an_earlier_offset_drops_the_rest(root: Path) -> None:
    """Bytes on disk past the offset are from a write that never completed (a crash
    mid-chunk)."""
    store = BlobStore(FilesystemDriver(root))
    await store.append_upload(UPLOAD, 0, body([b"keep", b"stale"]))
    assert (await store.append_upload(UPLOAD, 4, body([b"fresh"]))).size == 9
    await store.commit_upload(UPLOAD, 9, Digest.of(b"keepfresh"))
    assert await store.read_all(Digest.of(b"keepfresh")) == b"keepfresh"


async def test_commit_counts_only_the_recorded_size(root: Path) -> None:
    """The metadata's size is the truth: extra bytes on disk past it do not go into the blob."""
    store = BlobStore(FilesystemDriver(root))
    await store.append_upload(UPLOAD, 0, body([b"0123456789"]))
    with pytest.raises(DigestInvalid):
        await store.commit_upload(UPLOAD, 10, Digest.of(b"01234"))


async def test_second_copy_is_not_stored(
    store: BlobStore, stored_keys: Callable[[], list[str]]
) -> None:
    """A second upload of a stored blob (its row's location given) keeps nothing."""
    data = os.urandom(4000)
    digest, where = await push(store, UPLOAD, data)
    assert await push(store, OTHER_UPLOAD, data, known=where) == (digest, where)
    assert stored_keys() == [where or layout.blob_key(digest)]
    assert await store.read_all(digest, where) == data


async def test_interleaved_uploads_keep_their_own_state(store: BlobStore) -> None:
    a, b = os.urandom(3000), os.urandom(3000)
    pa = await append(store, UPLOAD, None, [a[:1000]])
    pb = await append(store, OTHER_UPLOAD, None, [b[:2000]])
    pa = await append(store, UPLOAD, pa, [a[1000:]])
    pb = await append(store, OTHER_UPLOAD, pb, [b[2000:]])
    wa = await commit(store, UPLOAD, pa, Digest.of(a))
    wb = await commit(store, OTHER_UPLOAD, pb, Digest.of(b))
    assert await store.read_all(Digest.of(a), wa) == a
    assert await store.read_all(Digest.of(b), wb) == b


async def test_delete_upload_and_blob(
    store: BlobStore, stored_keys: Callable[[], list[str]]
) -> None:
    await store.start_upload(UPLOAD)
    await append(store, UPLOAD, None, [b"x" * (6 * MiB)])  # a multipart upload on S3
    await store.delete_upload(UPLOAD)
    assert await store.upload_size(UPLOAD) is None
    digest, where = await push(store, OTHER_UPLOAD, b"blob")
    await store.delete_blobs([(digest, where)])
    assert await store.stat(digest, where) is None
    assert stored_keys() == []


async def test_streamed_blob_with_known_digest(
    store: BlobStore, stored_keys: Callable[[], list[str]]
) -> None:
    """A monolithic push goes straight to the blob's key; a wrong digest leaves nothing, and
    a second push of the same blob stores nothing more."""
    data = os.urandom(9 * MiB + 1)
    digest = Digest.of(data)
    with pytest.raises(DigestInvalid):
        await store.store_stream(UPLOAD, body(split(data, MiB)), Digest.of(b"other"), None)
    await store.delete_upload(UPLOAD)
    assert stored_keys() == []
    assert await store.store_stream(UPLOAD, body(split(data, MiB)), digest, None) == len(data)
    await store.delete_upload(UPLOAD)
    assert stored_keys() == [layout.blob_key(digest)]
    assert await store.read_all(digest) == data
    size = await store.store_stream(OTHER_UPLOAD, body(split(data, MiB)), digest, len(data))
    assert size == len(data)
    assert stored_keys() == [layout.blob_key(digest)]


class NotedWrites(FilesystemDriver):
    """The real filesystem driver, noting the lengths of the pieces of every write (one
    block) its writers get."""

    writes: list[list[int]]

    @property
    def sizes(self) -> list[int]:
        return [sum(pieces) for pieces in self.writes]

    async def append(self, key: str, offset: int, *args, **kwargs):  # type: ignore[no-untyped-def]
        writer = await super().append(key, offset, *args, **kwargs)
        write = writer.write

        async def noted(*pieces: bytes) -> None:
            self.writes.append([len(piece) for piece in pieces])
            await write(*pieces)

        writer.write = noted  # type: ignore[method-assign]
        return writer


@pytest.mark.parametrize("how", ["chunked", "monolithic"])
async def test_blocks_shrink_as_uploads_run_side_by_side(root: Path, how: str) -> None:
    """The blocks every upload in the process holds (four each at most: one filling, two
    queued, one being written) stay within `memory_bytes`, chunked or monolithic alike."""
    import asyncio

    driver = NotedWrites(root)
    driver.writes = []
    store = BlobStore(driver, buffer_bytes=4 * 1024 * 1024, memory_bytes=16 * 1024 * 1024)
    blobs = [os.urandom(8 * 1024 * 1024) for _ in range(9)]
    gate = asyncio.Event()
    waiting: list[int] = []

    async def slow_body(data: bytes) -> AsyncIterator[bytes]:
        waiting.append(1)
        await gate.wait()  # every upload is reading its body before any byte flows
        for piece in split(data, 64 * 1024):
            yield piece

    async def push(upload_id: str, data: bytes, pieces: AsyncIterator[bytes]) -> int:
        if how == "chunked":
            size = (await store.append_upload(upload_id, 0, pieces)).size
            await store.commit_upload(upload_id, size, Digest.of(data, "sha256"))
            return size
        return await store.store_stream(upload_id, pieces, Digest.of(data, "sha256"), None)

    gate.set()
    assert await push("c" * 32, blobs[0], slow_body(blobs[0])) == len(blobs[0])
    assert max(driver.sizes) == 4 * 1024 * 1024  # alone: the largest blocks
    driver.writes.clear()
    gate.clear()
    ids = [f"{i:032x}" for i in range(8)]
    tasks = [
        asyncio.ensure_future(push(i, data, slow_body(data)))
        for i, data in zip(ids, blobs[1:], strict=True)
    ]
    while len(waiting) < 1 + len(ids):
        await asyncio.sleep(0.01)
    gate.set()
    assert await asyncio.gather(*tasks) == [len(data) for data in blobs[1:]]
    # Eight at once: 16 MiB / (8 uploads x 4 blocks) = 512 KiB blocks, not 4 MiB. (The last
    # uploads to finish may take larger ones once the first have ended.)
    assert statistics.median(driver.sizes) == 512 * 1024
    assert driver.sizes.count(512 * 1024) >= len(driver.sizes) // 2
    assert sorted(files(root)) == sorted(
        layout.blob_key(Digest.of(data, "sha256")) for data in blobs
    )


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
    assert (await store.append_upload(UPLOAD, 0, body(pieces))).size == len(data)
    assert max(len(pieces) for pieces in driver.writes) <= 512
    digest = Digest.of(data, "sha256")
    await store.commit_upload(UPLOAD, len(data), digest)
    assert await store.read_all(digest) == data


async def test_on_idle_is_called_once_uploads_have_stopped(root: Path) -> None:
    """Never while an upload is being received, nor when another began during the quiet
    spell the last one's end started; once, after a spell with none."""
    calls: list[int] = []
    store = BlobStore(FilesystemDriver(root), on_idle=lambda: calls.append(1))
    store.idle_seconds = 0.1
    release = asyncio.Event()

    async def held() -> AsyncIterator[bytes]:
        yield b"first"
        await release.wait()
        yield b"rest"

    await store.append_upload(UPLOAD, 0, body([b"quick"]))  # its end starts a quiet spell
    slow = asyncio.create_task(store.append_upload(OTHER_UPLOAD, 0, held()))
    await asyncio.sleep(0.4)  # the spell's end comes and goes while `slow` is receiving
    assert calls == []
    release.set()
    assert (await slow).size == len(b"firstrest")
    await asyncio.sleep(0.4)
    assert calls == [1]
