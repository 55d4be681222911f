"""`/v2/<name>/blobs/<digest>`: fetch (with Range), check and delete blobs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from registry.api.context import (
    authorize,
    digest_headers,
    parse_digest,
    repository,
    require_deletes,
)
from registry.api.filesend import FileRangeResponse, can_send_files
from registry.api.ranges import Unsatisfiable, parse_range
from registry.errors import BlobUnknown, RangeNotSatisfiable
from registry.storage.driver import PathNotFound

log = logging.getLogger("registry")


async def get_blob(request: Request) -> Response:
    name = repository(request)
    digest = parse_digest(request.path_params["digest"])
    svc = await authorize(request, name, ("pull",))
    found = await svc.metadata.blob_in_repository(name, str(digest))
    if found is None:
        raise BlobUnknown(detail={"digest": str(digest)})
    size, where = found
    stored = await svc.blobs.stat(digest, where)
    if stored != size:
        # Bytes lost or damaged under a recorded blob: say so before a 200 promises them.
        log.error("blob %s: %s bytes recorded, %s in storage", digest, size, stored)
        raise BlobUnknown("blob content is missing from storage", detail={"digest": str(digest)})
    headers = digest_headers(str(digest), size, "application/octet-stream")
    headers["Accept-Ranges"] = "bytes"
    try:
        wanted = parse_range(request.headers.get("range"), size)
    except Unsatisfiable:
        raise RangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"}) from None
    status, offset, length = 200, 0, size
    if wanted is not None:
        first, last = wanted
        status, offset, length = 206, first, last - first + 1
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    if svc.config.storage.s3.redirect and (url := await svc.blobs.redirect_url(digest, where)):
        # Straight from storage, as Distribution's redirect does (the client sends its Range
        # there again); HEAD is answered above, by the registry.
        redirect = {"Location": url, "Docker-Content-Digest": str(digest), "Content-Length": "0"}
        return Response(status_code=307, headers=redirect)
    if can_send_files(request.scope) and (file := svc.blobs.open_local(digest, where)) is not None:
        return FileRangeResponse(file, offset, length, status, headers)
    stream = svc.blobs.read(digest, offset, length, where)
    # The first block before the status line: storage failing now is still a JSON error.
    try:
        opening = await stream.__anext__()
    except StopAsyncIteration:
        opening = b""
    except PathNotFound:  # gone since the size was checked (another replica, or damage)
        log.error("blob %s: recorded, but missing from storage", digest)
        raise BlobUnknown(
            "blob content is missing from storage", detail={"digest": str(digest)}
        ) from None
    return StreamingResponse(_after(opening, stream), status, headers=headers)


async def _after(opening: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if opening:
        yield opening
    async for chunk in rest:
        yield chunk


async def delete_blob(request: Request) -> Response:
    name = repository(request)
    digest = parse_digest(request.path_params["digest"])
    svc = await authorize(request, name, ("delete",))
    require_deletes(svc)
    if not await svc.metadata.unlink_blob(name, str(digest)):
        raise BlobUnknown(detail={"digest": str(digest)})
    # Only the repository's link goes; the bytes stay for others until garbage collection.
    return Response(status_code=202, headers={"Docker-Content-Digest": str(digest)})
