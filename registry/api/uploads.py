"""`/v2/<name>/blobs/uploads/`: monolithic, chunked and resumable uploads, and mounts.

Sessions live in the database (id, repository, size so far) and their bytes in storage, so a
restarted server, or another replica, carries on with an upload another one started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

from registry.api.context import (
    Services,
    authorize,
    checked_name,
    location,
    parse_digest,
    repository,
)
from registry.api.ranges import parse_content_range
from registry.auth import Access
from registry.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    SizeInvalid,
    Unavailable,
)
from registry.metadata.store import Reservation, Upload
from registry.numbers import parse_decimal
from registry.oci.digest import Digest
from registry.storage.layout import is_upload_id


def _upload_headers(request: Request, name: str, upload: Upload, size: int) -> dict[str, str]:
    return {
        "Location": location(request, f"/v2/{name}/blobs/uploads/{upload.id}"),
        "Range": f"0-{max(size - 1, 0)}",
        "Docker-Upload-UUID": upload.id,
        "Content-Length": "0",
    }


def _created(request: Request, name: str, digest: Digest) -> Response:
    return Response(
        status_code=201,
        headers={
            "Location": location(request, f"/v2/{name}/blobs/{digest}"),
            "Docker-Content-Digest": str(digest),
            "Content-Length": "0",
        },
    )


# An upload has one writer at a time, whichever process or replica serves the request: a
# claim in the database, renewed while bytes flow, and left to lapse if its holder dies.
CLAIM_SECONDS = 120.0
CLAIM_RENEW_AFTER = 30.0
CLAIM_WAIT_SECONDS = 30.0

# A monolithic upload's body up to this size is taken whole into memory, hashed there and
# stored in one step, instead of going through an upload file.
SMALL_BODY = 1024 * 1024


@dataclass
class Claim:
    svc: Services
    upload_id: str
    writer: str
    renewed_at: float = field(default_factory=time.monotonic)
    ended: bool = False  # the session is gone (finished or cancelled), or released already

    async def keep(self) -> None:
        """Renew the claim when it is getting old (called as body pieces arrive)."""
        if time.monotonic() - self.renewed_at > CLAIM_RENEW_AFTER:
            self.renewed_at = time.monotonic()
            held = await self.svc.metadata.claim_upload(self.upload_id, self.writer, CLAIM_SECONDS)
            if held is None:
                raise BlobUploadInvalid("another request took over this upload", status=416)


@asynccontextmanager
async def _claimed(
    request: Request, svc: Services, name: str, upload: Upload
) -> AsyncIterator[tuple[Upload, Claim]]:
    """Hold the upload's single-writer claim; yield the session as it is once held.

    A request that waited behind a cancel or a finish finds the session gone and gets 404,
    rather than writing into the upload's old place.
    """
    async with svc.upload_lock(upload.id):
        claim = Claim(svc, upload.id, svc.writer)
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while (
            held := await svc.metadata.claim_upload(upload.id, claim.writer, CLAIM_SECONDS)
        ) is None:
            if await svc.metadata.get_upload(name, upload.id) is None:
                raise BlobUploadUnknown(detail={"upload": upload.id})
            if time.monotonic() > deadline:
                raise BlobUploadInvalid(
                    "another request is writing to this upload",
                    status=416,
                    headers=_upload_headers(request, name, upload, upload.size),
                )
            await asyncio.sleep(0.05)
        try:
            yield held, claim
        finally:
            if not claim.ended:
                await svc.metadata.release_upload(upload.id, claim.writer)


async def _checked_body(
    request: Request, expected: int | None, claim: Claim | None = None
) -> AsyncIterator[bytes]:
    """The request body, failing (before anything is kept) when its length is not `expected`."""
    received = 0
    async for piece in request.stream():
        if claim is not None:
            await claim.keep()
        received += len(piece)
        if expected is not None and received > expected:
            raise SizeInvalid(detail={"expected": expected, "received_at_least": received})
        yield piece
    if expected is not None and received != expected:
        raise SizeInvalid(detail={"expected": expected, "received": received})


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    value = parse_decimal(raw)
    if value is None:  # the HTTP parser lets through only what it can count, but be sure
        raise SizeInvalid("malformed Content-Length", detail={"content-length": raw[:50]})
    return value


async def start_upload(request: Request) -> Response:
    name = repository(request)
    svc = await authorize(request, name, ("pull", "push"))
    params = request.query_params
    if "mount" in params:
        mounted = await _try_mount(
            request, svc, name, parse_digest(params["mount"]), params.get("from")
        )
        if mounted is not None:
            return mounted
    await svc.policies.check_upload(name)  # a namespace at its quota takes no new bytes
    upload = await svc.metadata.create_upload(name)
    if "digest" in params:
        digest = parse_digest(params["digest"])
        return await _finish(request, svc, name, upload, digest, _content_length(request))
    return Response(status_code=202, headers=_upload_headers(request, name, upload, 0))


async def _try_mount(
    request: Request, svc: Services, name: str, digest: Digest, source: str | None
) -> Response | None:
    """Link an existing blob into `name`; None when it cannot (the caller starts an upload).

    The source must be pullable with the credentials of this very request: with a token,
    by its `access` claim, so a token scoped to one repository reaches no blob elsewhere
    even when its account could. A token lacking pull on `from` whose account has it gets
    a 401 whose challenge names both repositories (the client widens its token and mounts).
    """
    if source is not None:
        checked_name(source)
        pull = Access("repository", source, ("pull",))
        if not await svc.access.can(request, pull):
            target = Access("repository", name, ("pull", "push"))
            await svc.access.ask_for_wider_token(request, [target, pull])
            return None
        found = await svc.metadata.blob_in_repository(source, str(digest))
    else:
        # Spec 1.1: without `from`, mount any copy the caller could read anyway: the blob
        # must be in some repository these credentials may pull.
        found = None
        for holder in await svc.metadata.repositories_with_blob(str(digest)):
            if await svc.access.can(request, Access("repository", holder, ("pull",))):
                found = await svc.metadata.blob_in_repository(holder, str(digest))
                break
    if found is None or await svc.blobs.stat(digest, found[1]) != found[0]:
        return None
    if not await svc.metadata.mount_blob(name, str(digest)):
        return None  # collected since: the client uploads it instead
    return _created(request, name, digest)


async def _session(request: Request) -> tuple[str, Services, Upload]:
    name = repository(request)
    svc = await authorize(request, name, ("pull", "push"))
    upload_id = request.path_params["upload_id"]
    upload = await svc.metadata.get_upload(name, upload_id) if is_upload_id(upload_id) else None
    if upload is None:
        raise BlobUploadUnknown(detail={"upload": upload_id[:100]})
    return name, svc, upload


async def upload_status(request: Request) -> Response:
    name, _svc, upload = await _session(request)
    return Response(status_code=204, headers=_upload_headers(request, name, upload, upload.size))


async def upload_chunk(request: Request) -> Response:
    name, svc, upload = await _session(request)
    async with _claimed(request, svc, name, upload) as (upload, claim):
        expected = _chunk_length(request, name, upload, _content_length(request))
        body = _checked_body(request, expected, claim)
        size = await _append(svc, upload, body, claim, expected)
    return Response(status_code=202, headers=_upload_headers(request, name, upload, size))


def _chunk_length(request: Request, name: str, upload: Upload, expected: int | None) -> int | None:
    """The chunk's length as its `Content-Range` gives it, checked against the upload's size
    and `Content-Length`; `expected` (the Content-Length) when there is no Content-Range."""
    content_range = request.headers.get("content-range")
    if content_range is None:
        return expected
    parsed = parse_content_range(content_range)
    if parsed is None:
        problem = "malformed Content-Range"
    elif parsed[0] != upload.size:
        problem = f"chunk starts at {parsed[0]}, upload is at {upload.size}"
    elif expected is not None and expected != parsed[1] - parsed[0] + 1:
        problem = "Content-Length does not match Content-Range"
    else:
        return parsed[1] - parsed[0] + 1
    raise BlobUploadInvalid(
        problem, status=416, headers=_upload_headers(request, name, upload, upload.size)
    )


async def _append(
    svc: Services,
    upload: Upload,
    body: AsyncIterator[bytes],
    claim: Claim | None,
    length: int | None = None,
) -> int:
    progress = await svc.blobs.append_upload(
        upload.id, upload.size, body, upload.hash_state, upload.storage_state, length
    )
    writer = claim.writer if claim is not None else None
    # The size and the states that go with it move together: the next request, on any
    # process or replica, carries on from exactly here. The claim ends in the same write.
    if progress.size != upload.size:
        if not await svc.metadata.advance_upload(
            upload.id,
            upload.size,
            progress.size,
            writer,
            progress.hash_state,
            progress.storage_state,
            release=claim is not None,
        ):
            raise BlobUploadInvalid("the upload changed during this request", status=416)
        if claim is not None:
            claim.ended = True
    return progress.size


async def finish_upload(request: Request) -> Response:
    name, svc, upload = await _session(request)
    digest = parse_digest(request.query_params.get("digest"))
    async with _claimed(request, svc, name, upload) as (upload, claim):
        expected = _content_length(request)
        if expected != 0:  # a final chunk: its Content-Range must fit like a PATCH's
            expected = _chunk_length(request, name, upload, expected)
        return await _finish(request, svc, name, upload, digest, expected, claim)


async def _finish(
    request: Request,
    svc: Services,
    name: str,
    upload: Upload,
    digest: Digest,
    expected: int | None,
    claim: Claim | None = None,
) -> Response:
    """Verify the bytes, reserve the blob against garbage collection, move the bytes to the
    blob's key (or leave them in place: storage/layout.py), then record the blob in the
    repository: the order of the protocol in registry/gc/__init__.py, which never
    acknowledges bytes a collector may be deleting."""
    size = upload.size
    body: bytes | None = None
    reserved: Reservation | None = None
    placed: str | None = None  # where this upload left the bytes, when not at the digest's key
    try:
        if upload.size == 0 and expected is not None and expected <= SMALL_BODY:
            # The whole blob in one small body: verified in memory, stored in one step.
            body = b"".join([piece async for piece in _checked_body(request, expected, claim)])
            await svc.blobs.verify_data(body, digest)
            size = len(body)
        elif upload.size == 0 and expected is not None and expected != 0:
            # The whole blob in one large body of known size: streamed to where it ends and
            # verified on the way, so the blob is reserved before its key is written.
            reserved = await _reserve(svc, digest, expected)
            body_stream = _checked_body(request, expected, claim)
            size = await svc.blobs.store_stream(
                upload.id, body_stream, digest, expected, reserved.location
            )
            await svc.blobs.delete_upload(upload.id)  # any file an empty PATCH left
        else:
            hash_state, storage_state = upload.hash_state, upload.storage_state
            if expected != 0:
                # The session ends here either way, so its recorded size need not move first.
                body_stream = _checked_body(request, expected, claim)
                progress = await svc.blobs.append_upload(
                    upload.id, upload.size, body_stream, hash_state, storage_state, expected
                )
                size, hash_state, storage_state = (
                    progress.size,
                    progress.hash_state,
                    progress.storage_state,
                )
            storage_state = await svc.blobs.verify_upload(
                upload.id, size, digest, hash_state, storage_state
            )
        if reserved is None:
            reserved = await _reserve(svc, digest, size)
            if body is not None:
                await svc.blobs.place_data(body, digest, reserved.location)
                await svc.blobs.delete_upload(upload.id)  # any file an empty PATCH left
            else:
                location = await svc.blobs.place_upload(
                    upload.id, size, digest, storage_state, reserved.location
                )
                placed = location if location != reserved.location else None
    except DigestInvalid:
        await svc.blobs.delete_upload(upload.id)
        await svc.metadata.delete_upload(upload.id)
        if claim is not None:
            claim.ended = True
        raise
    finished = await svc.metadata.finish_upload(
        upload.id, name, str(digest), size, reserved.incarnation, placed
    )
    if claim is not None:
        claim.ended = True
    if not finished:
        # Collected between the reservation and now (only with a grace period of about
        # nothing), or the session expired meanwhile: the bytes may be gone, so say nothing
        # was stored. Bytes left in place are this upload's alone: no row took them.
        await svc.metadata.delete_upload(upload.id)
        if placed is not None:
            await svc.blobs.delete_upload(upload.id)
        raise Unavailable(
            "the blob was garbage-collected during the upload; push it again",
            detail={"digest": str(digest)},
        )
    if placed is not None and finished.location != placed:
        await _keep_one(
            svc, upload.id, digest, size, reserved.incarnation, placed, finished.location
        )
    return _created(request, name, digest)


async def _keep_one(
    svc: Services,
    upload_id: str,
    digest: Digest,
    size: int,
    incarnation: str,
    placed: str,
    row: str | None,
) -> None:
    """Another upload of the same blob finished first, its bytes elsewhere (`row`): this
    upload's (at `placed`) are a duplicate, dropped; unless the row's are not there (lost or
    damaged), when the row takes this upload's instead."""
    if await svc.blobs.stat(digest, row) == size or not await svc.metadata.move_blob(
        str(digest), incarnation, row, placed
    ):
        await svc.blobs.delete_upload(upload_id)


# How long an upload waits for a collector to finish deleting the same blob's old bytes
# (a batch takes well under a second), polling every RESERVE_POLL_SECONDS.
RESERVE_WAIT_SECONDS = 30.0
RESERVE_POLL_SECONDS = 0.05


async def _reserve(svc: Services, digest: Digest, size: int) -> Reservation:
    deadline = time.monotonic() + RESERVE_WAIT_SECONDS
    while (reservation := await svc.metadata.reserve(str(digest), size)) is None:
        if time.monotonic() > deadline:
            raise Unavailable(
                "garbage collection is deleting this blob's old copy; try again",
                detail={"digest": str(digest)},
                headers={"Retry-After": "10"},
            )
        await asyncio.sleep(RESERVE_POLL_SECONDS)
    return reservation


async def cancel_upload(request: Request) -> Response:
    name, svc, upload = await _session(request)
    async with _claimed(request, svc, name, upload) as (_held, claim):
        await svc.metadata.delete_upload(upload.id)
        claim.ended = True
        await svc.blobs.delete_upload(upload.id)
    return Response(status_code=204, headers={"Content-Length": "0"})
