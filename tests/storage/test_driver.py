"""The storage driver contract (`registry.storage.driver`), one suite run on every driver:
the filesystem driver (with and without fsync) and the S3 driver on a real S3 (SeaweedFS).

Written against the protocol's documented behaviour only: an upload is readable once
committed, and the state a writer's `close` returns is all the next writer gets.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from registry.config import S3Config
from registry.storage.driver import AppendWriter, PathNotFound, StorageDriver, StorageError
from registry.storage.filesystem import FilesystemDriver

from support.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedFS

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3_bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.new_bucket("driver")


def s3_settings(seaweedfs: SeaweedFS, bucket: str, prefix: str) -> S3Config:
    return S3Config(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=seaweedfs.endpoint,
        region="us-east-1",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        addressing="path",
        part_size=5 * MiB,  # S3's smallest: several parts from a few MiB
    )


@pytest.fixture(params=["filesystem", "filesystem-without-fsync", "s3"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    if request.param == "s3":
        from registry.storage.s3 import S3Driver

        seaweedfs = request.getfixturevalue("seaweedfs")
        bucket = request.getfixturevalue("s3_bucket")
        return S3Driver(s3_settings(seaweedfs, bucket, f"t/{uuid.uuid4().hex}"))
    return FilesystemDriver(tmp_path / "root", fsync=request.param == "filesystem")


async def append_all(
    driver: StorageDriver, key: str, offset: int, state: str | None, *chunks: bytes
) -> str | None:
    writer: AppendWriter = await driver.append(key, offset, state)
    for chunk in chunks:
        await writer.write(chunk)
    return await writer.close()


async def read_all(
    driver: StorageDriver, key: str, offset: int = 0, length: int | None = None
) -> bytes:
    return b"".join([chunk async for chunk in driver.read(key, offset, length)])


async def test_put_stat_read(driver: StorageDriver) -> None:
    assert await driver.stat("a/b/c") is None
    await driver.put("a/b/c", b"hello")
    assert await driver.stat("a/b/c") == 5
    assert await read_all(driver, "a/b/c") == b"hello"
    await driver.put("a/b/c", b"replaced")
    assert await read_all(driver, "a/b/c") == b"replaced"
    await driver.put("empty", b"")
    assert await driver.stat("empty") == 0
    assert await read_all(driver, "empty") == b""


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, None, b"0123456789"),
        (3, None, b"3456789"),
        (3, 4, b"3456"),
        (0, 0, b""),
        (8, 100, b"89"),
        (10, None, b""),
        (20, 5, b""),
    ],
)
async def test_read_ranges(
    driver: StorageDriver, offset: int, length: int | None, expected: bytes
) -> None:
    await driver.put("k", b"0123456789")
    assert await read_all(driver, "k", offset, length) == expected


async def test_read_large_object_in_pieces(driver: StorageDriver) -> None:
    data = os.urandom(9 * 1024 * 1024 + 3)
    await driver.put("big", data)
    assert await read_all(driver, "big") == data
    assert (
        await read_all(driver, "big", 5 * 1024 * 1024 - 1, 4 * 1024 * 1024 + 2)
        == (data[5 * 1024 * 1024 - 1 : 9 * 1024 * 1024 + 1])
    )


async def test_read_missing(driver: StorageDriver) -> None:
    with pytest.raises(PathNotFound):
        await read_all(driver, "missing")


async def test_append(driver: StorageDriver) -> None:
    state = await append_all(driver, "up/data", 0, None, b"abc", b"def")
    await driver.commit("up/data", state, "up/data")
    assert await read_all(driver, "up/data") == b"abcdef"
    # A committed upload is a plain object: appending goes on from it with no state.
    state = await append_all(driver, "up/data", 6, None, b"ghi")
    await driver.commit("up/data", state, "up/data")
    assert await read_all(driver, "up/data") == b"abcdefghi"


async def test_append_in_many_requests_then_commit_elsewhere(driver: StorageDriver) -> None:
    """Requests of every size, each carried on from the last one's state alone (as another
    process would), across several parts; the commit puts the bytes at the destination and
    nothing at the upload's key."""
    sizes = [100, 3 * MiB, 7 * MiB + 5, 1, 0, 11 * MiB, 2 * MiB + 3, 5 * MiB]
    chunks = [os.urandom(size) for size in sizes]
    state, offset = None, 0
    for chunk in chunks:
        state = await append_all(driver, "up/x/data", offset, state, chunk[:1000], chunk[1000:])
        offset += len(chunk)
    assert await driver.stat("blob/data") is None
    await driver.commit("up/x/data", state, "blob/data")
    assert await read_all(driver, "blob/data") == b"".join(chunks)
    assert await driver.stat("up/x/data") is None


async def test_append_with_destination_commits_in_place(driver: StorageDriver) -> None:
    """A writer told the destination may write there, but nothing is seen there before the
    commit."""
    data = os.urandom(12 * MiB + 7)
    writer = await driver.append("up/y/data", 0, None, destination="dest/data")
    for start in range(0, len(data), MiB):
        await writer.write(data[start : start + MiB])
    state = await writer.close()
    assert await driver.stat("dest/data") is None
    await driver.commit("up/y/data", state, "dest/data")
    assert await read_all(driver, "dest/data") == data


async def test_aborted_append_keeps_the_state_before_it(driver: StorageDriver) -> None:
    first = os.urandom(6 * MiB)
    state = await append_all(driver, "up/z/data", 0, None, first)
    writer = await driver.append("up/z/data", len(first), state)
    await writer.write(os.urandom(13 * MiB))
    await writer.abort()
    second = os.urandom(MiB)
    state = await append_all(driver, "up/z/data", len(first), state, second)
    await driver.commit("up/z/data", state, "done/data")
    assert await read_all(driver, "done/data") == first + second


async def test_append_pieces_in_one_write(driver: StorageDriver) -> None:
    """A write of several pieces lands them in order, empty ones and more pieces than one
    vectored write takes included."""
    tiny = [bytes([i % 256]) * (i % 3) for i in range(3_000)]
    writer = await driver.append("up/data", 0)
    await writer.write(b"ab", b"", b"c" * 5000, b"d")
    await writer.write(*tiny)
    await driver.commit("up/data", await writer.close(), "up/data")
    assert await read_all(driver, "up/data") == b"ab" + b"c" * 5000 + b"d" + b"".join(tiny)


async def test_append_discards_past_offset(driver: StorageDriver) -> None:
    await driver.put("up/data", b"0123456789")
    writer = await driver.append("up/data", 4)
    await writer.write(b"xy")
    await driver.commit("up/data", await writer.close(), "up/data")
    assert await read_all(driver, "up/data") == b"0123xy"


async def test_append_abort_restores_start(driver: StorageDriver) -> None:
    await driver.put("up/data", b"keep")
    writer = await driver.append("up/data", 4)
    await writer.write(b"drop" * 1000)
    await writer.abort()
    assert await read_all(driver, "up/data") == b"keep"


async def test_commit_of_a_plain_object(driver: StorageDriver) -> None:
    await driver.put("src/data", b"bytes")
    await driver.put("dst/x/data", b"old")
    await driver.commit("src/data", None, "dst/x/data")
    assert await driver.stat("src/data") is None
    assert await read_all(driver, "dst/x/data") == b"bytes"
    await driver.put("src/data", b"new")
    await driver.commit("src/data", None, "fresh/dir/data")  # parents are created
    assert await read_all(driver, "fresh/dir/data") == b"new"


async def test_commit_missing(driver: StorageDriver) -> None:
    with pytest.raises(PathNotFound):
        await driver.commit("missing", None, "elsewhere")


async def test_redirect_url_serves_the_bytes_when_given(driver: StorageDriver) -> None:
    await driver.put("r/data", b"redirected")
    url = await driver.redirect_url("r/data")
    if isinstance(driver, FilesystemDriver):
        assert url is None
        return
    assert url is not None
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == b"redirected"


async def test_delete_key_and_prefix(driver: StorageDriver) -> None:
    for key in ("p/a", "p/b/c", "q"):
        await driver.put(key, b"x")
    await driver.delete("q")
    assert await driver.stat("q") is None
    await driver.delete("p")
    assert await driver.stat("p/a") is None
    assert await driver.stat("p/b/c") is None
    await driver.delete("p")  # absent: not an error
    await driver.delete("never/there")


async def test_list(driver: StorageDriver) -> None:
    for key in ("d/b", "d/a", "d/sub/x", "other"):
        await driver.put(key, b"x")
    assert await driver.list("d") == ["d/a", "d/b", "d/sub"]
    assert await driver.list("missing") == []
    assert await driver.list("other") == []  # not a directory


@pytest.mark.parametrize(
    "key",
    [
        *["", "/abs", "../x", "a/../../x", "a/./b", "a//b", "a/", "a b", "a\\b", "..", "."],
        "a\n",
    ],
)
async def test_unsafe_keys(driver: StorageDriver, key: str) -> None:
    with pytest.raises(StorageError):
        await driver.stat(key)
    with pytest.raises(StorageError):
        await driver.put(key, b"x")


async def test_read_stream_can_be_abandoned(driver: StorageDriver) -> None:
    await driver.put("k", os.urandom(5 * 1024 * 1024))
    stream = driver.read("k")
    assert isinstance(stream, AsyncIterator)
    first = await anext(stream)
    assert first
    await stream.aclose()  # type: ignore[attr-defined]


async def test_append_refuses_offset_past_the_stored_bytes(driver: StorageDriver) -> None:
    # A session that claims more bytes than the file holds (e.g. after a power cut) must
    # not be resumed over a gap of zeros.
    await driver.put("up/data", b"abc")
    with pytest.raises(StorageError):
        await driver.append("up/data", 10)
    assert await read_all(driver, "up/data") == b"abc"


# Garbage collection and fsck (delete_many, walk, abort_abandoned) -----------------------------


async def test_delete_many(driver: StorageDriver) -> None:
    for key in ("b/1/data", "b/2/data", "b/3/data"):
        await driver.put(key, key.encode())
    await driver.delete_many(["b/1/data", "b/3/data", "b/absent/data"])  # absent: no error
    assert await driver.stat("b/1/data") is None and await driver.stat("b/3/data") is None
    assert await read_all(driver, "b/2/data") == b"b/2/data"
    await driver.delete_many([])


async def test_delete_many_refuses_an_unsafe_key_before_deleting_any(
    driver: StorageDriver,
) -> None:
    await driver.put("keep/data", b"x")
    with pytest.raises(StorageError):
        await driver.delete_many(["keep/data", "../escape"])
    assert await driver.stat("keep/data") == 1


async def test_walk(driver: StorageDriver) -> None:
    await driver.put("w/a/data", b"1")
    await driver.put("w/b/c/data", b"22")
    await driver.put("other/data", b"333")
    found = {item.key: item for item in [i async for i in driver.walk("w")]}
    assert set(found) == {"w/a/data", "w/b/c/data"}
    assert (found["w/a/data"].size, found["w/b/c/data"].size) == (1, 2)
    for item in found.values():
        assert item.modified.tzinfo is not None
    assert [i async for i in driver.walk("nothing")] == []


async def test_walk_pages_through_many_objects(driver: StorageDriver) -> None:
    for index in range(1200):  # more than a page of S3 listing, a batch of the filesystem walk
        await driver.put(f"many/{index:05d}", b"")
    keys = [item.key async for item in driver.walk("many")]
    assert sorted(keys) == [f"many/{index:05d}" for index in range(1200)]


@pytest.mark.parametrize("size", [3 * MiB, 7 * MiB])
async def test_a_write_committed_in_place_leaves_only_its_object(
    driver: StorageDriver, size: int
) -> None:
    """A streamed push writes toward its destination (S3: a multipart upload there, with a
    tail object beside it under 5 MiB) and commits in place: afterwards nothing but the
    object is stored, since nothing else ever deletes under a blob's key."""
    data = os.urandom(size)
    writer = await driver.append("uploads/u/data", 0, None, destination="blobs/b/data")
    await writer.write(data)
    state = await writer.close()
    await driver.commit("uploads/u/data", state, "blobs/b/data")
    await driver.delete("uploads/u")
    assert await read_all(driver, "blobs/b/data") == data
    assert [item.key async for item in driver.walk("blobs")] == ["blobs/b/data"]
    assert [item.key async for item in driver.walk("uploads")] == []


async def test_abort_abandoned_leaves_uploads_in_flight(driver: StorageDriver) -> None:
    """Only writes begun before the cutoff go; none of a finished object's bytes."""
    from datetime import UTC, datetime, timedelta

    await driver.put("blobs/done/data", b"kept")
    writer = await driver.append("uploads/v/data", 0, None, destination="blobs/c/data")
    await writer.write(os.urandom(6 * MiB))
    state = await writer.close()
    past = datetime.now(UTC) - timedelta(hours=1)
    assert await driver.abort_abandoned(past) == 0  # begun after the cutoff: in flight
    await driver.commit("uploads/v/data", state, "blobs/c/data")
    assert await driver.stat("blobs/c/data") == 6 * MiB
    assert await driver.abort_abandoned(datetime.now(UTC) + timedelta(hours=1)) == 0
    assert await driver.stat("blobs/done/data") == 4
