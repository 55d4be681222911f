"""A disk that fills up mid-upload: the error propagates and nothing half-written remains."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from registry.oci.digest import Digest
from registry.storage import layout
from registry.storage.blobstore import BlobStore
from registry.storage.driver import StorageError
from registry.storage.filesystem import FilesystemDriver

from support.tmpfs import small_disk

MiB = 1024 * 1024
UPLOAD = "c" * 32


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk", "2m") as path:
        yield path


async def pieces(count: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield os.urandom(size)


@pytest.mark.parametrize("buffer_bytes", [MiB // 4, 4 * MiB])
async def test_append_on_a_full_disk_fails_and_keeps_the_upload_as_it_was(
    disk: Path, buffer_bytes: int
) -> None:
    store = BlobStore(FilesystemDriver(disk), buffer_bytes=buffer_bytes)
    first = os.urandom(MiB // 2)

    async def one() -> AsyncIterator[bytes]:
        yield first

    assert (await store.append_upload(UPLOAD, 0, one())).size == len(first)
    with pytest.raises(StorageError):
        await store.append_upload(UPLOAD, len(first), pieces(16, MiB // 4))
    # Back to what was there before the failed request, and still resumable.
    assert await store.upload_size(UPLOAD) == len(first)
    await store.commit_upload(UPLOAD, len(first), Digest.of(first))
    assert await store.read_all(Digest.of(first)) == first


async def test_nothing_is_visible_after_a_failed_push(disk: Path) -> None:
    store = BlobStore(FilesystemDriver(disk), buffer_bytes=MiB // 4)
    with pytest.raises(StorageError):
        await store.append_upload(UPLOAD, 0, pieces(16, MiB // 4))
    assert await store.upload_size(UPLOAD) == 0
    assert not (disk / "blobs").exists() or not any((disk / "blobs").rglob("data"))
    # The space the failed push took is given back: a blob that fits is stored.
    await store.store(b"fits", Digest.of(b"fits"))
    assert await store.read_all(Digest.of(b"fits")) == b"fits"
    # The session itself is the caller's to drop (it is still there), and dropping it
    # leaves nothing of it.
    assert (disk / layout.upload_key(UPLOAD)).is_file()
    await store.delete_upload(UPLOAD)
    assert not (disk / layout.upload_prefix(UPLOAD)).exists()
