"""The storage driver contract (`registry.storage.driver`), run on the filesystem driver.

Written against the protocol's documented behaviour only, so another driver (S3) can be
added to the `driver` fixture's parameters and run the same tests.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registry.storage.driver import PathNotFound, StorageDriver, StorageError
from registry.storage.filesystem import FilesystemDriver


@pytest.fixture(params=["filesystem", "filesystem-without-fsync"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    return FilesystemDriver(tmp_path / "root", fsync=request.param == "filesystem")


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
    writer = await driver.append("up/data", 0)
    await writer.write(b"abc")
    await writer.write(b"def")
    await writer.close()
    assert await read_all(driver, "up/data") == b"abcdef"
    writer = await driver.append("up/data", 6)
    await writer.write(b"ghi")
    await writer.close()
    assert await read_all(driver, "up/data") == b"abcdefghi"


async def test_append_pieces_in_one_write(driver: StorageDriver) -> None:
    """A write of several pieces lands them in order, empty ones and more pieces than one
    vectored write takes included."""
    tiny = [bytes([i % 256]) * (i % 3) for i in range(3_000)]
    writer = await driver.append("up/data", 0)
    await writer.write(b"ab", b"", b"c" * 5000, b"d")
    await writer.write(*tiny)
    await writer.close()
    assert await read_all(driver, "up/data") == b"ab" + b"c" * 5000 + b"d" + b"".join(tiny)


async def test_append_discards_past_offset(driver: StorageDriver) -> None:
    await driver.put("up/data", b"0123456789")
    writer = await driver.append("up/data", 4)
    await writer.write(b"xy")
    await writer.close()
    assert await read_all(driver, "up/data") == b"0123xy"


async def test_append_abort_restores_start(driver: StorageDriver) -> None:
    await driver.put("up/data", b"keep")
    writer = await driver.append("up/data", 4)
    await writer.write(b"drop" * 1000)
    await writer.abort()
    assert await read_all(driver, "up/data") == b"keep"


async def test_move(driver: StorageDriver) -> None:
    await driver.put("src/data", b"bytes")
    await driver.put("dst/x/data", b"old")
    await driver.move("src/data", "dst/x/data")
    assert await driver.stat("src/data") is None
    assert await read_all(driver, "dst/x/data") == b"bytes"
    await driver.put("src/data", b"new")
    await driver.move("src/data", "fresh/dir/data")  # parents are created
    assert await read_all(driver, "fresh/dir/data") == b"new"


async def test_move_missing(driver: StorageDriver) -> None:
    with pytest.raises(PathNotFound):
        await driver.move("missing", "elsewhere")


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


async def test_put_leaves_no_temporary_files(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    await driver.put("a/b", b"x" * 1000)
    assert sorted(p.name for p in (tmp_path / "root" / "a").iterdir()) == ["b"]


async def test_local_path(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    await driver.put("a/b", b"x")
    path = driver.local_path("a/b")
    assert path is not None
    assert path.read_bytes() == b"x"
    assert path == (tmp_path / "root" / "a" / "b").resolve()


async def test_listing_hides_temporary_files(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    await driver.put("d/a", b"x")
    (tmp_path / "root" / "d" / ".tmp-123").write_bytes(b"partial")
    assert await driver.list("d") == ["d/a"]


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


# Garbage collection and fsck (delete_many, abort_upload, walk) ---------------------------------


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


async def test_abort_upload(driver: StorageDriver) -> None:
    writer = await driver.append("uploads/u/data", 0)
    await writer.write(b"partial")
    await writer.close()
    await driver.abort_upload("uploads/u/data")
    assert await driver.stat("uploads/u/data") is None
    await driver.abort_upload("uploads/u/data")  # again: nothing there, no error


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
    for index in range(2500):  # more than one batch of the filesystem driver's listing
        await driver.put(f"many/{index:05d}", b"")
    keys = [item.key async for item in driver.walk("many")]
    assert sorted(keys) == [f"many/{index:05d}" for index in range(2500)]


async def test_filesystem_delete_many_removes_the_emptied_folder(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path / "root", fsync=False)
    await driver.put("blobs/sha256/ab/abc/data", b"x")
    await driver.put("blobs/sha256/ab/abd/data", b"y")
    await driver.delete_many(["blobs/sha256/ab/abc/data"])
    assert not (tmp_path / "root/blobs/sha256/ab/abc").exists()
    assert (tmp_path / "root/blobs/sha256/ab/abd/data").exists()  # the shared level stays


async def test_filesystem_walk_skips_writes_in_progress(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path / "root", fsync=False)
    await driver.put("w/data", b"x")
    (tmp_path / "root/w/.tmp-123").write_bytes(b"half")
    assert [item.key async for item in driver.walk("w")] == ["w/data"]
