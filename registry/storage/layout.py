"""Where each kind of object lives in storage. Every key is computed here.

    <root>/
    ├── blobs/
    │   └── <algorithm>/<first two hex digits>/<hex>/data      one copy per digest, immutable
    ├── uploads/
    │   └── <upload id>/data                                   bytes of an upload in progress
    └── uploaded/
        └── <upload id>/data                                   an upload written in place

Repositories, tags and manifests are not in storage: the metadata database owns names.
A blob key is written only by an atomic move from an upload after its digest checked, and
deleted only by garbage collection while the blob's row is marked (registry/gc/).

A driver that cannot move bytes without copying them (S3: a multipart upload's key is fixed
when it begins, before the digest is known) writes an upload under `uploaded/` instead, and
the finished object stays there: the blob row's `location` names it. Until the upload
finishes it belongs to its session (expiry removes it); after, to the blob row (garbage
collection removes it, with the digest's key).
"""

from __future__ import annotations

import re

from registry.oci.digest import Digest

_UPLOAD_ID = re.compile(r"^[a-f0-9]{32}\Z")


def blob_key(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.encoded[:2]}/{digest.encoded}/data"


def upload_key(upload_id: str) -> str:
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise ValueError(f"invalid upload id {upload_id!r}")
    return f"uploads/{upload_id}/data"


def upload_prefix(upload_id: str) -> str:
    return upload_key(upload_id).rsplit("/", 1)[0]


def placed_key(upload_id: str) -> str:
    """Where a driver that keeps uploads in place writes one (and the blob then stays)."""
    return "uploaded/" + upload_key(upload_id).split("/", 1)[1]


def placed_prefix(upload_id: str) -> str:
    return placed_key(upload_id).rsplit("/", 1)[0]


def is_upload_id(value: str) -> bool:
    return _UPLOAD_ID.fullmatch(value) is not None


_BLOB_KEY = re.compile(r"^blobs/([a-z0-9]+)/([a-f0-9]{2})/([a-f0-9]+)/data\Z")


def digest_of_blob_key(key: str) -> Digest | None:
    """The digest whose bytes `key` holds, when it is a well-formed blob key (for fsck)."""
    found = _BLOB_KEY.fullmatch(key)
    if found is None or not found[3].startswith(found[2]):
        return None
    try:
        return Digest.parse(f"{found[1]}:{found[3]}")
    except ValueError:
        return None


def upload_id_of_key(key: str, top: str = "uploads") -> str | None:
    """The upload a key under `top` (`uploads/`, or `uploaded/`) belongs to (for fsck)."""
    parts = key.split("/")
    if len(parts) >= 2 and parts[0] == top and is_upload_id(parts[1]):
        return parts[1]
    return None
