"""OCI error codes as exceptions, rendered in one place as the spec's JSON body.

RegistryError                 base: code, HTTP status, message, detail
├── BlobUnknown               404 BLOB_UNKNOWN
├── BlobUploadInvalid         400 BLOB_UPLOAD_INVALID (416 for a chunk out of order)
├── BlobUploadUnknown         404 BLOB_UPLOAD_UNKNOWN
├── DigestInvalid             400 DIGEST_INVALID
├── ManifestBlobUnknown       400 MANIFEST_BLOB_UNKNOWN
├── ManifestInvalid           400 MANIFEST_INVALID
├── ManifestUnknown           404 MANIFEST_UNKNOWN
├── NameInvalid               400 NAME_INVALID
├── NameUnknown               404 NAME_UNKNOWN
├── SizeInvalid               400 SIZE_INVALID
├── Unauthorized              401 UNAUTHORIZED
├── Denied                    403 DENIED
├── Unsupported               405 UNSUPPORTED
├── TooManyRequests           429 TOOMANYREQUESTS
├── Unavailable               503 UNAVAILABLE (Distribution's code: a server too busy to serve)
├── RangeNotSatisfiable       416 RANGE_INVALID (a Range the blob cannot satisfy)
├── PayloadTooLarge           413 (a manifest over the size limit)
├── DiskFull                  503 UNAVAILABLE (the disk under the blobs or the database is full)
└── Unavailable               503 UNAVAILABLE (try again shortly: e.g. a blob being collected)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

MAX_ERRORS = 100


class RegistryError(Exception):
    code: ClassVar[str] = "UNKNOWN"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "unknown error"

    def __init__(
        self,
        message: str | None = None,
        detail: Any = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        also: Sequence[RegistryError] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.detail = detail
        self.http_status = status or self.status
        self.headers = headers or {}
        # A manifest can name thousands of missing blobs; a hundred errors say enough.
        self.also = list(also or [])[:MAX_ERRORS - 1]
        super().__init__(self.message)

    def body(self) -> bytes:
        errors = [self._entry(), *(e._entry() for e in self.also)]
        return json.dumps({"errors": errors}).encode()

    def _entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        entry["detail"] = self.detail if self.detail is not None else {}
        return entry


class BlobUnknown(RegistryError):
    code, status, default_message = "BLOB_UNKNOWN", 404, "blob unknown to registry"


class BlobUploadInvalid(RegistryError):
    code, status, default_message = "BLOB_UPLOAD_INVALID", 400, "blob upload invalid"


class BlobUploadUnknown(RegistryError):
    code, status, default_message = "BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"


class DigestInvalid(RegistryError):
    code, status, default_message = (
        "DIGEST_INVALID",
        400,
        "provided digest did not match uploaded content",
    )


class ManifestBlobUnknown(RegistryError):
    code, status, default_message = (
        "MANIFEST_BLOB_UNKNOWN",
        400,
        "manifest references a manifest or blob unknown to registry",
    )


class ManifestInvalid(RegistryError):
    code, status, default_message = "MANIFEST_INVALID", 400, "manifest invalid"


class ManifestUnknown(RegistryError):
    code, status, default_message = "MANIFEST_UNKNOWN", 404, "manifest unknown to registry"


class NameInvalid(RegistryError):
    code, status, default_message = "NAME_INVALID", 400, "invalid repository name"


class NameUnknown(RegistryError):
    code, status, default_message = "NAME_UNKNOWN", 404, "repository name not known to registry"


class SizeInvalid(RegistryError):
    code, status, default_message = (
        "SIZE_INVALID",
        400,
        "provided length did not match content length",
    )


class Unauthorized(RegistryError):
    code, status, default_message = "UNAUTHORIZED", 401, "authentication required"


class Denied(RegistryError):
    code, status, default_message = "DENIED", 403, "requested access to the resource is denied"


class Unsupported(RegistryError):
    code, status, default_message = "UNSUPPORTED", 405, "the operation is unsupported"


class TooManyRequests(RegistryError):
    code, status, default_message = "TOOMANYREQUESTS", 429, "too many requests"


class Unavailable(RegistryError):
    """Nothing of the request was kept and the client should try again shortly (too many
    connections; a blob whose bytes garbage collection is deleting at this moment)."""

    code, status, default_message = "UNAVAILABLE", 503, "service unavailable"


class RangeNotSatisfiable(RegistryError):
    code, status, default_message = "RANGE_INVALID", 416, "requested range not satisfiable"


class PayloadTooLarge(RegistryError):
    code, status, default_message = "MANIFEST_INVALID", 413, "manifest too large"


class DiskFull(RegistryError):
    """A disk the registry writes to (blobs or database) is full. Nothing of the request was
    kept, and an upload stays where it was: the client may retry once space is freed.
    `UNAVAILABLE` is the code Distribution answers its 503s with."""

    code, status, default_message = (
        "UNAVAILABLE",
        503,
        "the registry's disk is full: nothing was stored; retry once space is freed",
    )
