"""The SQL of `registry fsck` (registry/gc/fsck.py): read-only, in pages and batches; its
repairs go through `GCStore`'s marks like any collection."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from registry.metadata.db import Database
from registry.metadata.tables import (
    blobs,
    manifest_references,
    manifests,
    repositories,
    repository_blobs,
    tags,
    uploads,
)


@dataclass(frozen=True, slots=True)
class BlobRow:
    digest: str
    size: int
    created_at: datetime
    location: str | None = None  # where its bytes are, when not at the digest's key


class FsckStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def blob_totals(self) -> tuple[int, int]:
        """How many live blobs, and their bytes."""
        query = select(func.count(), func.coalesce(func.sum(blobs.c.size), 0)).where(
            blobs.c.deleting_since.is_(None)
        )
        async with self.db.read() as conn:
            row = (await conn.execute(query)).one()
        return int(row[0]), int(row[1])

    async def blob_rows(self, after: str, limit: int) -> list[BlobRow]:
        """Live blob rows after digest `after`, in digest order."""
        query = (
            select(blobs.c.digest, blobs.c.size, blobs.c.created_at, blobs.c.location)
            .where(blobs.c.digest > after, blobs.c.deleting_since.is_(None))
            .order_by(blobs.c.digest)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return [BlobRow(*row) for row in await conn.execute(query)]

    async def known_blobs(self, digests: Iterable[str]) -> set[str]:
        """Those of `digests` with a row (live or being deleted)."""
        return await self._present(blobs.c.digest, digests)

    async def live_blobs(self, digests: Iterable[str]) -> set[str]:
        """Those of `digests` with a row not being deleted."""
        query = select(blobs.c.digest).where(
            blobs.c.digest.in_(sorted(set(digests))), blobs.c.deleting_since.is_(None)
        )
        async with self.db.read() as conn:
            return set((await conn.execute(query)).scalars())

    async def linked(self, digests: Iterable[str]) -> set[str]:
        """Those of `digests` that some repository may serve."""
        return await self._present(repository_blobs.c.digest, digests)

    async def known_uploads(self, upload_ids: Iterable[str]) -> set[str]:
        return await self._present(uploads.c.id, upload_ids)

    async def locations(self, keys: Iterable[str]) -> set[str]:
        """Those of the storage `keys` that a blob row (live or being deleted) names as the
        location of its bytes."""
        return await self._present(blobs.c.location, keys)

    async def _present(self, column: Any, values: Iterable[str]) -> set[str]:
        wanted = sorted(set(values))
        if not wanted:
            return set()
        query = select(column).where(column.in_(wanted)).distinct()
        async with self.db.read() as conn:
            return set((await conn.execute(query)).scalars())

    async def users(self, digest: str, limit: int = 100) -> list[str]:
        """The manifests referring to the blob, as `repository:tag` (one per tag) or
        `repository@digest` when untagged: what to push again."""
        query = (
            select(repositories.c.name, manifests.c.digest, tags.c.name)
            .select_from(
                manifest_references.join(
                    manifests, manifests.c.id == manifest_references.c.manifest_id
                )
                .join(repositories, repositories.c.id == manifests.c.repository_id)
                .outerjoin(
                    tags,
                    (tags.c.repository_id == manifests.c.repository_id)
                    & (tags.c.manifest_digest == manifests.c.digest),
                )
            )
            .where(manifest_references.c.digest == digest, manifest_references.c.kind != "manifest")
            .order_by(repositories.c.name, manifests.c.digest, tags.c.name)
            .limit(limit)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [f"{repo}:{tag}" if tag else f"{repo}@{manifest}" for repo, manifest, tag in rows]
