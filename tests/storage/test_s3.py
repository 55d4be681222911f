"""What only the S3 driver does, on a real S3 (SeaweedFS): multipart uploads left behind,
large copies, encryption settings, and S3's errors as the driver's. The driver's contract is
tested on every driver in `test_driver.py`."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from registry.storage.driver import AppendWriter, StorageError, StorageUnavailable
from registry.storage.s3 import S3Driver
from storage.test_driver import s3_settings

from support.seaweedfs import SeaweedFS

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.new_bucket("s3driver")


@pytest.fixture
def prefix() -> str:
    return f"t/{uuid.uuid4().hex}"


@pytest.fixture
def driver(seaweedfs: SeaweedFS, bucket: str, prefix: str) -> S3Driver:
    return S3Driver(s3_settings(seaweedfs, bucket, prefix))


async def write(writer: AppendWriter, data: bytes) -> str | None:
    await writer.write(data)
    return await writer.close()


def unfinished(seaweedfs: SeaweedFS, bucket: str, prefix: str) -> list[str]:
    return [k for k in seaweedfs.multipart_uploads(bucket) if k.startswith(prefix)]


async def test_deleting_an_upload_aborts_its_multipart_upload(
    driver: S3Driver, seaweedfs: SeaweedFS, bucket: str, prefix: str
) -> None:
    state = await write(await driver.append("uploads/u/data", 0), os.urandom(11 * MiB))
    state = await write(await driver.append("uploads/u/data", 11 * MiB, state), b"tail")
    assert unfinished(seaweedfs, bucket, prefix) == [f"{prefix}/uploads/u/data"]
    assert seaweedfs.keys(bucket, prefix)  # the tail object
    await driver.delete("uploads/u")
    assert unfinished(seaweedfs, bucket, prefix) == []
    assert seaweedfs.keys(bucket, prefix) == []


async def test_an_aborted_new_upload_leaves_nothing(
    driver: S3Driver, seaweedfs: SeaweedFS, bucket: str, prefix: str
) -> None:
    writer = await driver.append("uploads/v/data", 0, None, destination="blobs/x/data")
    await writer.write(os.urandom(12 * MiB))  # parts on their way
    await writer.abort()
    assert unfinished(seaweedfs, bucket, prefix) == []
    assert seaweedfs.keys(bucket, prefix) == []


async def test_a_writer_that_lost_its_upload_cannot_slip_its_bytes_in(driver: S3Driver) -> None:
    """Two writers went on from the same state (one had lost its claim but ran on), both
    uploading the same part number: completing with one's state commits exactly that one's
    bytes (the ones it hashed), or fails; never the other's."""
    start, mine, theirs = os.urandom(6 * MiB), os.urandom(6 * MiB), os.urandom(6 * MiB)
    state = await write(await driver.append("uploads/w/data", 0), start)
    first = await write(await driver.append("uploads/w/data", 6 * MiB, state), mine)
    await write(await driver.append("uploads/w/data", 6 * MiB, state), theirs)
    try:
        await driver.commit("uploads/w/data", first, "blobs/w/data")
    except StorageError:
        assert await driver.stat("blobs/w/data") is None
    else:
        assert b"".join([c async for c in driver.read("blobs/w/data")]) == start + mine


def test_composite_etag_is_s3s() -> None:
    """The check of a completed upload's parts: the ETag S3 computes for a multipart object."""
    from registry.storage.s3 import composite_etag
    from registry.storage.s3upload import UploadState

    upload = UploadState(
        "k",
        "id",
        [('"78d4832e086f8d0ab7befaa917799813"', 6), ('"159e93a1ec01826c06e956a81f44b247"', 6)],
    )
    assert composite_etag(upload) == "47bee0fd77aa2fa009d73a93931af11f-2"  # SeaweedFS's own
    upload.parts[0] = ("kms-style-etag", 6)
    assert composite_etag(upload) is None


async def test_large_objects_are_copied_in_parts(
    driver: S3Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above CopyObject's limit (5 GiB, made small here) the commit copies in ranged parts."""
    import registry.storage.s3 as s3

    monkeypatch.setattr(s3, "COPY_OBJECT_MAX", 6 * MiB)
    monkeypatch.setattr(s3, "COPY_PART", 5 * MiB)
    data = os.urandom(13 * MiB + 1)
    copies: list[str] = []
    copy_part = driver._copy_part

    async def noted(*args: object) -> str:
        copies.append(str(args[4:]))
        return await copy_part(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(driver, "_copy_part", noted)
    state = await write(await driver.append("uploads/c/data", 0), data)
    await driver.commit("uploads/c/data", state, "blobs/c/data")
    assert len(copies) == 3
    assert b"".join([c async for c in driver.read("blobs/c/data")]) == data


async def test_server_side_encryption_is_asked_for(
    seaweedfs: SeaweedFS, bucket: str, prefix: str
) -> None:
    settings = s3_settings(seaweedfs, bucket, prefix)
    settings.encryption = "AES256"
    driver = S3Driver(settings)
    await driver.put("enc/data", b"secret")
    state = await write(await driver.append("uploads/e/data", 0), os.urandom(6 * MiB))
    await driver.commit("uploads/e/data", state, "blobs/e/data")
    client = seaweedfs.client()
    for key in ("enc/data", "blobs/e/data"):
        head = client.head_object(Bucket=bucket, Key=f"{prefix}/{key}")
        assert head.get("ServerSideEncryption") == "AES256", key


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_is_transient(seaweedfs: SeaweedFS, bucket: str) -> None:
    settings = s3_settings(seaweedfs, bucket, "x")
    settings.endpoint_url = f"http://127.0.0.1:{_closed_port()}"
    driver = S3Driver(settings)
    with pytest.raises(StorageUnavailable):
        await driver.stat("a/b")
    with pytest.raises(StorageUnavailable):
        await driver.put("a/b", b"x")


async def test_denied_is_not_transient(seaweedfs: SeaweedFS, bucket: str) -> None:
    settings = s3_settings(seaweedfs, bucket, "x")
    settings.secret_key = "wrong"
    driver = S3Driver(settings)
    with pytest.raises(StorageError) as caught:
        await driver.put("a/b", b"x")
    assert not isinstance(caught.value, StorageUnavailable)


async def test_commit_retried_after_the_upload_completed(driver: S3Driver) -> None:
    """An earlier commit completed the multipart upload, then failed (its copy, or its
    answer lost): the retry takes the completed object as it is."""
    from registry.storage.s3upload import UploadState

    data = os.urandom(7 * MiB + 3)  # a part and a tail
    state = await write(await driver.append("uploads/r/data", 0), data[: 6 * MiB])
    state = await write(await driver.append("uploads/r/data", 6 * MiB, state), data[6 * MiB :])
    assert state is not None
    await driver._complete(UploadState.load(state))
    await driver.commit("uploads/r/data", state, "blobs/r/data")
    assert b"".join([c async for c in driver.read("blobs/r/data")]) == data


async def test_blob_sizes_are_remembered_until_a_read_finds_them_changed(
    seaweedfs: SeaweedFS, bucket: str, prefix: str
) -> None:
    """A blob's size is asked of S3 once (blob HEADs are answered from memory); a read that
    finds the object gone or of another size forgets it, and says so."""
    from registry.storage.driver import PathNotFound

    from support.tcpproxy import TcpProxy

    proxy = TcpProxy("127.0.0.1", seaweedfs.ports["s3"])
    proxy.start()
    try:
        settings = s3_settings(seaweedfs, bucket, prefix)
        settings.endpoint_url = proxy.url
        driver = S3Driver(settings)
        await driver.put("blobs/x/data", b"0123456789")
        assert await driver.stat("blobs/x/data") == 10
        sent = proxy.upstream_bytes
        assert await driver.stat("blobs/x/data") == 10
        assert proxy.upstream_bytes == sent  # not asked again
        seaweedfs.client().put_object(Bucket=bucket, Key=f"{prefix}/blobs/x/data", Body=b"short")
        with pytest.raises(PathNotFound):
            [c async for c in driver.read("blobs/x/data")]
        assert await driver.stat("blobs/x/data") == 5
        await driver.put("uploads/u/data", b"abc")  # not a blob: never remembered
        assert await driver.stat("uploads/u/data") == 3
        sent = proxy.upstream_bytes
        await driver.stat("uploads/u/data")
        assert proxy.upstream_bytes > sent
    finally:
        proxy.stop()


async def test_a_monolithic_push_is_written_where_it_ends(
    driver: S3Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob pushed whole, its digest known, goes into a multipart upload at its own key,
    completed once the digest checks: no copy."""
    from registry.oci.digest import Digest
    from registry.storage.blobstore import BlobStore

    copies: list[object] = []
    copy = driver._copy

    async def noted(*args: object) -> None:
        copies.append(args)
        await copy(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(driver, "_copy", noted)
    parts: list[int] = []
    upload_part = driver.upload_part

    async def sized(key: str, upload_id: str, number: int, data: bytes) -> str:
        parts.append(len(data))
        return await upload_part(key, upload_id, number, data)

    monkeypatch.setattr(driver, "upload_part", sized)
    data = os.urandom(9 * MiB + 1)

    async def body():  # type: ignore[no-untyped-def]
        for start in range(0, len(data), MiB):
            yield data[start : start + MiB]

    store = BlobStore(driver)
    assert await store.store_stream("a" * 32, body(), Digest.of(data), None) == len(data)
    assert copies == []
    # Parts as soon as there is one, the last one short: none kept back, none larger.
    assert parts == [5 * MiB, 4 * MiB + 1]
    assert await store.read_all(Digest.of(data)) == data


async def test_parts_in_flight_share_the_upload_memory(
    seaweedfs: SeaweedFS, bucket: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four uploads at once send no more parts together than `memory_bytes` holds (two
    here), whatever the thread pool's size: each part in flight is a part in memory."""
    import asyncio

    from registry.oci.digest import Digest
    from registry.storage.blobstore import BlobStore

    driver = S3Driver(s3_settings(seaweedfs, bucket, prefix), memory_bytes=10 * MiB)
    sending, most = [0], [0]
    upload_part = driver.upload_part

    async def counted(*args: object) -> str:
        sending[0] += 1
        most[0] = max(most[0], sending[0])
        try:
            return await upload_part(*args)  # type: ignore[arg-type]
        finally:
            sending[0] -= 1

    monkeypatch.setattr(driver, "upload_part", counted)
    blobs = [os.urandom(16 * MiB) for _ in range(4)]

    async def body(data: bytes):  # type: ignore[no-untyped-def]
        for start in range(0, len(data), MiB):
            yield data[start : start + MiB]

    store = BlobStore(driver, memory_bytes=10 * MiB)
    sizes = await asyncio.gather(
        *(
            store.store_stream(f"{i:032x}", body(data), Digest.of(data), None)
            for i, data in enumerate(blobs)
        )
    )
    assert sizes == [len(data) for data in blobs]
    assert most[0] == driver.parts_in_flight == 2
    for data in blobs:
        assert await store.read_all(Digest.of(data)) == data
