"""What only the filesystem driver does: files under a root, temporary files, local paths.
The driver's contract is tested on every driver in `test_driver.py`."""

from __future__ import annotations

from pathlib import Path

from registry.storage.filesystem import FilesystemDriver


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
