"""The S3 storage driver, with boto3: AWS, MinIO, Ceph, SeaweedFS.

Keys are the layout's keys under `storage.s3.prefix` in the bucket. boto3 blocks, so every
call runs in a pool of `max_concurrency` threads (one botocore connection each), never one
thread per chunk. Uploads are multipart uploads (see `s3upload.py`); `commit` completes them
and, when the bytes are not at their destination yet, copies them there server-side
(CopyObject up to 5 GiB, UploadPartCopy in parallel ranges above). That copy took a quarter
of a chunked push, so the driver `keeps_uploads_in_place`: BlobStore commits a finished
upload where it was written, and the blob's row records that location. Reads are one GET each,
its body read in pieces by the pool while the loop sends the piece before: ranged GETs of a
few MiB, several at once, cost botocore ~2 ms of CPU each, which made pulls CPU-bound here.

Errors: botocore retries what is safe to retry (throttling, 5xx, dropped connections) with
exponential backoff; what is still failing becomes `StorageUnavailable` (transient: the client
gets 503 with Retry-After), `PathNotFound`, or `StorageError` (denied, misconfigured).
Payloads are not signed (TLS protects them in transit, and every blob's digest is checked by
the registry before its key is written), so a part costs no extra SHA-256 on our side.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from registry.config import S3Config
from registry.storage.driver import (
    PathNotFound,
    StorageError,
    StorageUnavailable,
    StoredObject,
    check_key,
)
from registry.storage.s3upload import (
    MIN_PART,
    PartStream,
    S3AppendWriter,
    UploadState,
    completed_parts,
)

log = logging.getLogger("registry.storage.s3")

READ_PIECE = 2 * 1024 * 1024  # a read's pieces: one being sent while the next is read
COPY_OBJECT_MAX = 5 * 1024**3  # CopyObject's limit; above it, UploadPartCopy
COPY_PART = 512 * 1024 * 1024
# Sizes of blob keys seen lately. A blob's bytes never change once written, and a HEAD to S3
# costs ~2 ms of botocore's CPU (several times our whole blob HEAD), so a blob HEAD answers
# from here. Only blobs' keys: `blobs/`, and `uploaded/` where chunked pushes leave theirs
# (an object there is replaced only by an upload that reopens it, which forgets it). Dropped
# on delete and whenever a read finds the object gone or of another size; and kept a minute
# at most, so that a blob deleted through another process is seen missing by this one's
# HEADs within that time (its GETs see it at once).
STAT_TTL_SECONDS = 60.0
STAT_CACHE_KEYS = 10_000
_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
_TRANSIENT = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
}

T = TypeVar("T")


def _translate(exc: Exception, what: str) -> StorageError:
    """A botocore failure as the driver's error."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND:
            return PathNotFound(what)
        if code in _TRANSIENT or status >= 500 or status == 429:
            return StorageUnavailable(f"{what}: S3 is unavailable ({code or status})")
        return StorageError(f"{what}: S3 refused ({code or status}): {error.get('Message', '')}")
    if isinstance(exc, bx.ConnectionError | bx.HTTPClientError):
        return StorageUnavailable(f"{what}: S3 unreachable: {exc}")
    return StorageError(f"{what}: {exc}")


def make_client(settings: S3Config) -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    config = BotoConfig(
        region_name=settings.region or None,
        signature_version="s3v4",
        max_pool_connections=settings.max_concurrency,
        connect_timeout=5,
        read_timeout=60,
        tcp_keepalive=True,
        retries={"mode": "standard", "max_attempts": 4},
        s3={"addressing_style": settings.addressing, "payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key or None,
        aws_secret_access_key=settings.secret_key or None,
        region_name=settings.region or None,
    )
    return session.client("s3", endpoint_url=settings.endpoint_url or None, config=config)


def composite_etag(upload: UploadState) -> str | None:
    """The ETag S3 gives a multipart object of exactly the recorded parts (the MD5 of their
    MD5s, then the count), or None when the parts' ETags are not MD5s (SSE-KMS)."""
    digests = []
    for etag, _ in upload.parts:
        text = etag.strip('"')
        if len(text) != 32:
            return None
        try:
            digests.append(bytes.fromhex(text))
        except ValueError:
            return None
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


class S3Driver:
    write_block_bytes: int | None = 1024 * 1024  # writers gather them into parts

    def __init__(
        self, settings: S3Config, client: Any | None = None, memory_bytes: int = 16 * 1024 * 1024
    ) -> None:
        self.bucket = settings.bucket
        self.prefix = settings.prefix.strip("/") + "/" if settings.prefix.strip("/") else ""
        self.part_size = settings.part_size
        self.redirect_seconds = settings.redirect_seconds
        # A copy of a finished upload to its digest's key cost a quarter of a chunked push.
        self.keeps_uploads_in_place = settings.chunked_in_place
        self._sse: dict[str, str] = {}
        if settings.encryption:
            self._sse["ServerSideEncryption"] = settings.encryption
        if settings.kms_key_id:
            self._sse["SSEKMSKeyId"] = settings.kms_key_id
        self.client = client if client is not None else make_client(settings)
        self._sizes: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()
        self._cached = (self.prefix + "blobs/", self.prefix + "uploaded/")
        self._pool = ThreadPoolExecutor(settings.max_concurrency, thread_name_prefix="registry-s3")
        # Parts uploading at once, every writer of this process together: each is a part in
        # memory, so they share the upload memory (limits.upload_memory_bytes); two at least,
        # so that one upload sends a part while the next is cut.
        self.parts_in_flight = max(2, min(memory_bytes // self.part_size, settings.max_concurrency))
        self.budget = asyncio.Semaphore(self.parts_in_flight)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def _run(self, what: str, call: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(call, *args, **kwargs))
        except StorageError:
            raise
        except Exception as exc:
            raise _translate(exc, what) from exc

    # Objects ------------------------------------------------------------------------------

    async def stat(self, key: str) -> int | None:
        full = self._key(key)
        cached = self._sizes.get(full)
        if cached is not None and time.monotonic() - cached[0] < STAT_TTL_SECONDS:
            return cached[1]
        try:
            head = await self._run(key, self.client.head_object, Bucket=self.bucket, Key=full)
        except PathNotFound:
            self._sizes.pop(full, None)
            return None
        size = int(head["ContentLength"])
        self._remember(full, size)
        return size

    def _remember(self, full: str, size: int) -> None:
        if full.startswith(self._cached):
            self._sizes[full] = (time.monotonic(), size)
            self._sizes.move_to_end(full)
            while len(self._sizes) > STAT_CACHE_KEYS:
                self._sizes.popitem(last=False)

    def _forget(self, full: str) -> None:
        for key in [k for k in self._sizes if k == full or k.startswith(full + "/")]:
            del self._sizes[key]

    def _get_range(self, key: str, first: int, last: int) -> tuple[bytes, int]:
        """Bytes `first`..`last` of `key` and the object's size (in a pool thread)."""
        response = self.client.get_object(
            Bucket=self.bucket, Key=key, Range=f"bytes={first}-{last}"
        )
        with response["Body"] as body:
            data = body.read()
        total = int(str(response.get("ContentRange", "")).rpartition("/")[2] or len(data))
        return data, total

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        full = self._key(key)
        if length == 0:
            if await self.stat(key) is None:
                raise PathNotFound(key)
            return
        wanted = f"bytes={offset}-" if length is None else f"bytes={offset}-{offset + length - 1}"
        try:
            response = await self._run(
                key, self.client.get_object, Bucket=self.bucket, Key=full, Range=wanted
            )
        except PathNotFound:
            self._forget(full)
            raise
        except StorageError as exc:
            if "InvalidRange" in str(exc):  # it exists, and `offset` is at or past its end
                return
            raise
        body = response["Body"]
        reading: asyncio.Future[bytes] | None = None
        try:
            total = int(str(response.get("ContentRange", "")).rpartition("/")[2] or -1)
            cached = self._sizes.get(full)
            if cached is not None and cached[1] != total:  # replaced or damaged behind our back
                self._forget(full)
                raise PathNotFound(f"{key}: {total} bytes, not the {cached[1]} seen before")
            remaining = int(response["ContentLength"])
            # One GET, read in pieces by the pool while the loop sends the piece before.
            reading = asyncio.ensure_future(self._run(key, body.read, READ_PIECE))
            while True:
                piece = await reading
                if not piece:
                    break
                remaining -= len(piece)
                if remaining > 0:
                    reading = asyncio.ensure_future(self._run(key, body.read, READ_PIECE))
                yield piece
                if remaining <= 0:
                    break
            if remaining > 0:
                raise StorageError(f"{key}: the object ended {remaining} bytes early")
        finally:
            if reading is not None and not reading.done():
                await asyncio.gather(reading, return_exceptions=True)
            await asyncio.get_running_loop().run_in_executor(self._pool, body.close)

    async def put(self, key: str, data: bytes) -> None:
        await self.put_object(self._key(key), data)

    async def delete(self, key: str) -> None:
        full = self._key(key)
        self._forget(full)
        mine = (full + "/", full + ".")  # under it, or its upload's tail objects
        keys = [k for k in await self._list_all(full) if k == full or k.startswith(mine)]
        if keys:
            await self.delete_keys(keys)
        uploads = await self._run(
            key, self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=full
        )
        for upload in uploads.get("Uploads", []):
            name = upload["Key"]
            if name == full or name.startswith(mine):
                await self.abort_multipart(name, upload["UploadId"])

    async def abort_abandoned(self, older_than: datetime) -> int:
        """Abort the multipart uploads at blob keys started before `older_than`: a monolithic
        push writes at its blob's key for one request only, so these are left by a process
        that died mid-push (an upload's own multipart upload goes with its session)."""
        prefix = self.prefix + "blobs/"
        aborted = 0
        token: dict[str, str] = {}
        while True:
            page = await self._run(
                prefix,
                self.client.list_multipart_uploads,
                Bucket=self.bucket,
                Prefix=prefix,
                **token,
            )
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < older_than:
                    await self.abort_multipart(upload["Key"], upload["UploadId"])
                    aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            token = {
                "KeyMarker": page["NextKeyMarker"],
                "UploadIdMarker": page["NextUploadIdMarker"],
            }

    async def _list_all(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = await self._run(
                prefix, self.client.list_objects_v2, Bucket=self.bucket, Prefix=prefix, **token
            )
            keys += [item["Key"] for item in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return keys
            token = {"ContinuationToken": page["NextContinuationToken"]}

    async def delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            result = await self._run(
                keys[start],
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
            if result.get("Errors"):
                error = result["Errors"][0]
                raise StorageError(f"delete {error.get('Key')}: {error.get('Code')}")

    async def delete_many(self, keys: Sequence[str]) -> None:
        full = [self._key(key) for key in keys]  # refuse an unsafe key before deleting any
        for key in full:
            self._sizes.pop(key, None)
        if full:
            await self.delete_keys(full)

    async def walk(self, prefix: str) -> AsyncIterator[StoredObject]:
        full = self._key(prefix) + "/"
        token: dict[str, str] = {}
        while True:
            page = await self._run(
                prefix, self.client.list_objects_v2, Bucket=self.bucket, Prefix=full, **token
            )
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                yield StoredObject(key, int(item["Size"]), item["LastModified"])
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    async def list(self, prefix: str) -> list[str]:
        full = self._key(prefix) + "/"
        names: set[str] = set()
        token: dict[str, str] = {}
        while True:
            page = await self._run(
                prefix,
                self.client.list_objects_v2,
                Bucket=self.bucket,
                Prefix=full,
                Delimiter="/",
                **token,
            )
            names.update(item["Key"] for item in page.get("Contents", []))
            names.update(p["Prefix"].rstrip("/") for p in page.get("CommonPrefixes", []))
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        return sorted(n[len(self.prefix) :] for n in names if ".tail-" not in n)

    def local_path(self, key: str) -> Path | None:
        return None

    async def redirect_url(self, key: str) -> str | None:
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=self.redirect_seconds,
        )
        return url

    # Uploads ------------------------------------------------------------------------------

    async def append(
        self,
        key: str,
        offset: int,
        state: str | None = None,
        destination: str | None = None,
        length: int | None = None,
    ) -> S3AppendWriter:
        full = self._key(key)
        if state is not None:
            upload = UploadState.load(state)
            if upload.size != offset:
                raise StorageError(f"{key} holds {upload.size} bytes, not the {offset} expected")
            return S3AppendWriter(self, upload, self.part_size, length=length)
        if not offset:
            if destination is None:
                return S3AppendWriter(self, UploadState(full), self.part_size, length=length)
            target = UploadState(self._key(destination))
            return S3AppendWriter(self, target, self.part_size, whole=True, length=length)
        # A plain object at `key` holds the first bytes: they start the multipart upload as
        # a copied part (server-side), or, under a part's minimum, as its tail.
        self._forget(full)
        stored = await self.stat(key)
        if stored is None or stored < offset:
            raise StorageError(f"{key} holds {stored or 0} bytes, not the {offset} expected")
        upload = UploadState(full)
        if offset < MIN_PART:
            upload.tail = [(full, offset)]
        else:
            upload.upload_id = await self.create_multipart(full)
            etag = await self._copy_part(full, upload.upload_id, 1, full, 0, offset)
            upload.parts = [(etag, offset)]
        return S3AppendWriter(self, upload, self.part_size, length=length)

    async def commit(self, source: str, state: str | None, destination: str) -> None:
        src, dst = self._key(source), self._key(destination)
        self._forget(dst)
        if state is None:  # a plain object at `source`
            size = await self.stat(source)
            if size is None:
                raise PathNotFound(source)
            if src != dst:
                await self._copy(src, dst, size)
                await self.delete_keys([src])
            return
        upload = UploadState.load(state)
        if upload.upload_id is None:
            await self._commit_tail(upload, dst)
        else:
            await self._complete(upload)
            if upload.key != dst:
                await self._copy(upload.key, dst, upload.size)
                await self.delete_keys([upload.key])
        # The tail objects are in the object now. Those next to a blob's key (a streamed push
        # writes there) would otherwise stay forever: nothing else deletes under a blob key.
        if tails := [key for key, _ in upload.tail if ".tail-" in key]:
            await self.delete_keys(tails)

    async def _commit_tail(self, upload: UploadState, dst: str) -> None:
        """An upload under 5 MiB: no multipart upload, only tail objects."""
        if len(upload.tail) == 1 and ".tail-" in upload.tail[0][0]:
            await self._copy(upload.tail[0][0], dst, upload.size)  # one object, all its own
            return
        data = b"".join([await self.read_start(k, n) for k, n in upload.tail])
        await self.put_object(dst, data)

    async def _complete(self, upload: UploadState) -> None:
        """Complete the multipart upload, its tail (under 5 MiB, read back once) as the last
        part; a multipart upload completed already by an earlier try (whose answer was lost,
        or whose copy failed) is taken as it is, when its size is right."""
        assert upload.upload_id is not None
        try:
            if upload.tail:
                data = b"".join([await self.read_start(k, n) for k, n in upload.tail])
                number = len(upload.parts) + 1
                etag = await self.upload_part(upload.key, upload.upload_id, number, data)
                upload.parts.append((etag, len(data)))
            result = await self._run(
                upload.key,
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=upload.key,
                UploadId=upload.upload_id,
                MultipartUpload={"Parts": completed_parts(upload)},
            )
        except StorageError as exc:
            if "NoSuchUpload" not in str(exc):
                raise
            head = await self._run(
                upload.key, self.client.head_object, Bucket=self.bucket, Key=upload.key
            )
            if int(head["ContentLength"]) != upload.size:
                raise
            log.info("%s: multipart upload completed already", upload.key)
            return
        expected = composite_etag(upload)
        if expected is not None and str(result.get("ETag", "")).strip('"') != expected:
            # A part is not the one this state recorded: a writer that had lost the upload
            # replaced it. Not all S3 servers check the ETags they are given; we do.
            raise StorageError(f"{upload.key}: its parts are not the ones recorded")

    async def _copy(self, src: str, dst: str, size: int) -> None:
        source = {"Bucket": self.bucket, "Key": src}
        if size <= COPY_OBJECT_MAX:
            await self._run(
                dst,
                self.client.copy_object,
                Bucket=self.bucket,
                Key=dst,
                CopySource=source,
                **self._sse,
            )
            return
        upload_id = await self.create_multipart(dst)
        try:
            ranges = [(i, min(i + COPY_PART, size)) for i in range(0, size, COPY_PART)]
            etags = await asyncio.gather(
                *(
                    self._copy_part(dst, upload_id, n + 1, src, first, stop)
                    for n, (first, stop) in enumerate(ranges)
                )
            )
            parts = [{"PartNumber": n + 1, "ETag": etag} for n, etag in enumerate(etags)]
            await self._run(
                dst,
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=dst,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            await self.abort_multipart(dst, upload_id)
            raise

    async def _copy_part(
        self, key: str, upload_id: str, number: int, src: str, first: int, stop: int
    ) -> str:
        result = await self._run(
            key,
            self.client.upload_part_copy,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": self.bucket, "Key": src},
            CopySourceRange=f"bytes={first}-{stop - 1}",
        )
        return str(result["CopyPartResult"]["ETag"])

    # What an upload's writer does (s3upload.Operations) ----------------------------------

    async def create_multipart(self, key: str) -> str:
        result = await self._run(
            key, self.client.create_multipart_upload, Bucket=self.bucket, Key=key, **self._sse
        )
        return str(result["UploadId"])

    async def put_object(self, key: str, data: bytes) -> None:
        self._forget(key)
        await self._run(
            key, self.client.put_object, Bucket=self.bucket, Key=key, Body=data, **self._sse
        )

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        return await self._upload_part(key, upload_id, number, data)

    async def upload_part_stream(
        self, key: str, upload_id: str, number: int, body: PartStream
    ) -> str:
        return await self._upload_part(key, upload_id, number, body, ContentLength=body.size)

    async def _upload_part(
        self, key: str, upload_id: str, number: int, body: object, **extra: Any
    ) -> str:
        result = await self._run(
            key,
            self.client.upload_part,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            **extra,
        )
        return str(result["ETag"])

    async def read_start(self, key: str, size: int) -> bytes:
        if size == 0:
            return b""
        data, _ = await self._run(key, self._get_range, key, 0, size - 1)
        if len(data) != size:
            raise StorageError(f"{key}: {len(data)} bytes, not {size}")
        return data

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await self._run(
                key,
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
            )
        except StorageError as exc:
            if "NoSuchUpload" not in str(exc):
                raise
