"""S3 parts streamed while the request's body arrives, when its length is known: each part's
UploadPart begins with its first byte, not after its last, so a PATCH answers soon after its
body ends; a streamed part that fails is sent again whole; a body that breaks off leaves the
upload as it was. On SeaweedFS."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from registry.oci.digest import Digest
from registry.storage.blobstore import BlobStore, UploadProgress
from registry.storage.driver import StorageUnavailable
from registry.storage.s3 import S3Driver
from registry.storage.s3upload import PartStream
from storage.test_driver import s3_settings

from support.seaweedfs import SeaweedFS

MiB = 1024 * 1024
UPLOAD = "c" * 32


class Boom(Exception):
    """The client went away mid-body."""


class NotedS3(S3Driver):
    """The real S3 driver, noting how each part was sent: streamed (and whether the request
    body had ended when the stream began) or whole; streams of `failing` parts fail after
    their first read."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.body_ended = False
        self.streamed: list[tuple[int, bool]] = []
        self.whole: list[int] = []
        self.failing: set[int] = set()

    async def upload_part_stream(
        self, key: str, upload_id: str, number: int, body: PartStream
    ) -> str:
        self.streamed.append((number, self.body_ended))
        if number in self.failing:
            self.failing.discard(number)
            body.read(1024)
            raise StorageUnavailable("S3 dropped the connection")
        return await super().upload_part_stream(key, upload_id, number, body)

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        self.whole.append(number)
        return await super().upload_part(key, upload_id, number, data)


@pytest.fixture
def driver(seaweedfs: SeaweedFS) -> NotedS3:
    bucket = seaweedfs.new_bucket("streamed")
    driver = NotedS3(s3_settings(seaweedfs, bucket, f"t/{uuid.uuid4().hex}"))
    driver.part_size = 8 * MiB  # the default
    return driver


async def pieces(
    driver: NotedS3, data: bytes, size: int = MiB, fail_at: int | None = None
) -> AsyncIterator[bytes]:
    driver.body_ended = False
    for start in range(0, len(data), size):
        if fail_at is not None and start >= fail_at:
            raise Boom
        if start + size >= len(data):
            driver.body_ended = True  # the last piece is on its way
        yield data[start : start + size]


async def append(
    store: BlobStore, before: UploadProgress, body: AsyncIterator[bytes], length: int
) -> UploadProgress:
    return await store.append_upload(
        UPLOAD, before.size, body, before.hash_state, before.storage_state, length
    )


async def test_parts_stream_while_the_body_arrives(driver: NotedS3) -> None:
    """24 MiB in one request of known length: three 8 MiB parts, each begun before the
    body's last piece; then 3 MiB, too few for a part, kept as a tail; the blob whole."""
    store = BlobStore(driver)
    first, second = os.urandom(24 * MiB), os.urandom(3 * MiB)
    done = await append(store, UploadProgress(0), pieces(driver, first), len(first))
    assert driver.streamed == [(1, False), (2, False), (3, False)] and driver.whole == []
    done = await append(store, done, pieces(driver, second), len(second))
    assert len(driver.streamed) == 3 and driver.whole == []
    where = await store.commit_upload(
        UPLOAD, done.size, Digest.of(first + second), done.hash_state, done.storage_state
    )
    assert await store.read_all(Digest.of(first + second), where) == first + second


async def test_a_failed_stream_is_sent_again_whole(driver: NotedS3) -> None:
    store = BlobStore(driver)
    driver.failing = {2}
    data = os.urandom(21 * MiB + 3)
    done = await append(store, UploadProgress(0), pieces(driver, data), len(data))
    assert [number for number, _ in driver.streamed] == [1, 2, 3] and driver.whole == [2]
    where = await store.commit_upload(
        UPLOAD, done.size, Digest.of(data), done.hash_state, done.storage_state
    )
    assert await store.read_all(Digest.of(data), where) == data


async def test_a_body_broken_off_mid_part_leaves_the_upload_as_it_was(driver: NotedS3) -> None:
    store = BlobStore(driver)
    good, more = os.urandom(6 * MiB), os.urandom(10 * MiB)
    done = await append(store, UploadProgress(0), pieces(driver, good), len(good))
    with pytest.raises(Boom):
        await append(store, done, pieces(driver, more, fail_at=7 * MiB), len(more))
    done = await append(store, done, pieces(driver, more), len(more))
    assert done.size == len(good + more)
    where = await store.commit_upload(
        UPLOAD, done.size, Digest.of(good + more), done.hash_state, done.storage_state
    )
    assert await store.read_all(Digest.of(good + more), where) == good + more


def test_a_streamed_part_cannot_be_sent_twice() -> None:
    """botocore rewinds a body to retry a request: a stream already read from refuses, so
    the retry fails at once (and the part goes again whole), instead of sending S3 the rest
    under the whole part's length."""
    fresh = PartStream(4)
    fresh.seek(0)  # before sending: fine
    fresh.feed(b"ab")
    fresh.feed(b"cd")
    fresh.end()
    assert fresh.read(1) == b"a"
    assert b"".join(iter(lambda: fresh.read(3), b"")) == b"bcd"
    used = PartStream(4)
    used.feed(b"abcd")
    used.end()
    assert used.read(2) == b"ab"
    used.seek(0)
    with pytest.raises(OSError):
        used.read()
