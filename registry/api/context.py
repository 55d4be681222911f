"""What every handler needs: the services built at start-up and request-parsing helpers."""

from __future__ import annotations

import asyncio
import secrets
import weakref
from dataclasses import dataclass, field

from starlette.requests import Request

from registry.auth import Access, AccessController, actions_for_method
from registry.config import Config
from registry.errors import DigestInvalid, NameInvalid, Unsupported
from registry.metadata.store import MetadataStore
from registry.oci.digest import Digest, DigestError
from registry.oci.names import is_repository_name
from registry.policies.pulls import PullRecorder
from registry.policies.service import Policies
from registry.storage.blobstore import BlobStore


@dataclass
class Services:
    config: Config
    blobs: BlobStore
    metadata: MetadataStore
    access: AccessController
    policies: Policies
    pulls: PullRecorder
    upload_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary
    )
    # This process's name as an upload's writer. Its requests on one upload take turns (the
    # lock below), so one name suffices, and a claim its request could not release (the
    # database's disk was full) is its next request's to take at once, not in CLAIM_SECONDS.
    writer: str = field(default_factory=lambda: secrets.token_hex(16))

    def upload_lock(self, upload_id: str) -> asyncio.Lock:
        """Queues this process's requests on one upload in arrival order (the database claim
        keeps processes apart; this keeps their order fair within one)."""
        lock = self.upload_locks.get(upload_id)
        if lock is None:
            lock = asyncio.Lock()
            self.upload_locks[upload_id] = lock
        return lock


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def repository(request: Request) -> str:
    """The path's repository name, checked against the spec's grammar."""
    return checked_name(request.path_params["name"])


def checked_name(name: str) -> str:
    if not is_repository_name(name):
        raise NameInvalid(detail={"name": name[:300]})
    return name


def require_deletes(svc: Services) -> None:
    if not svc.config.storage.delete_enabled:
        raise Unsupported("deletes are disabled on this registry")


def parse_digest(value: str | None) -> Digest:
    if not value:
        raise DigestInvalid("a digest is required")
    try:
        return Digest.parse(value)
    except DigestError as exc:
        raise DigestInvalid(str(exc), detail={"digest": value[:300]}) from None


async def authorize(
    request: Request, name: str, actions: tuple[str, ...] | None = None
) -> Services:
    """Check the request may act on repository `name`; return the services for convenience."""
    svc = services(request)
    wanted = actions if actions is not None else actions_for_method(request.method)
    await svc.access.authorize(request, [Access("repository", name, wanted)])
    return svc


def location(request: Request, path: str) -> str:
    """An absolute Location when a public URL is configured, else a path (both are allowed)."""
    base: str = services(request).config.server.public_url.rstrip("/")
    return f"{base}{path}"


def digest_headers(digest: str, size: int, content_type: str) -> dict[str, str]:
    """What a GET or HEAD of a blob or manifest answers with, besides its bytes."""
    return {
        "Content-Type": content_type,
        "Docker-Content-Digest": digest,
        "Content-Length": str(size),
        "ETag": f'"{digest}"',
    }
