"""What pushes and deletes do for garbage collection, inside their own transactions.

Two kinds of statements, used by `MetadataStore` (the protocol they are part of is written
down in `registry/gc/__init__.py`):

- Locks. A push that is about to rely on a blob or a manifest takes a shared lock on its row
  (PostgreSQL `FOR SHARE`) and checks that it is live in the same statement; the collector
  takes `FOR UPDATE SKIP LOCKED` and rechecks under its lock, so the two serialise and the
  collector passes over rows a push holds. On SQLite the `FOR` clauses are left out: every
  write transaction starts with `BEGIN IMMEDIATE`, one writer at a time, so they serialise
  all the same.
- Review queue entries: "something happened to this blob (manifest) at `event_at` that may
  leave it unreferenced". Upserts keep the latest time, so the grace period always counts
  from the latest event.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, select

from registry.metadata.db import Database, SQLConnection
from registry.metadata.tables import (
    blobs,
    gc_blob_reviews,
    gc_manifest_reviews,
    manifests,
    repository_blobs,
)


def new_incarnation() -> str:
    return secrets.token_hex(16)


_LIVE_BLOBS_IN_REPOSITORY = (
    select(blobs.c.digest)
    .select_from(blobs.join(repository_blobs, repository_blobs.c.digest == blobs.c.digest))
    .where(
        repository_blobs.c.repository_id == bindparam("repository_id"),
        blobs.c.digest.in_(bindparam("digests", expanding=True)),
        blobs.c.deleting_since.is_(None),
    )
    .with_for_update(read=True, of=blobs)
)
_MANIFESTS_IN_REPOSITORY = (
    select(manifests.c.digest)
    .where(
        manifests.c.repository_id == bindparam("repository_id"),
        manifests.c.digest.in_(bindparam("digests", expanding=True)),
    )
    .with_for_update(read=True)
)
_BLOB_FOR_UPDATE = (
    select(blobs.c.incarnation, blobs.c.deleting_since)
    .where(blobs.c.digest == bindparam("digest"))
    .with_for_update()
)
_BLOB_FOR_SHARE = (
    select(blobs.c.incarnation, blobs.c.deleting_since)
    .where(blobs.c.digest == bindparam("digest"))
    .with_for_update(read=True)
)


def _later(column: Any, excluded: Any) -> Any:
    """The later of a row's time and the upserted one (GREATEST, in both dialects)."""
    return case((excluded > column, excluded), else_=column)


class Reviews:
    """The queue upserts and the row locks, with statements built once."""

    def __init__(self, db: Database) -> None:
        blob_upsert = db.insert(gc_blob_reviews)
        self._queue_blob = blob_upsert.on_conflict_do_update(
            index_elements=[gc_blob_reviews.c.digest],
            set_={"event_at": _later(gc_blob_reviews.c.event_at, blob_upsert.excluded.event_at)},
        )
        manifest_upsert = db.insert(gc_manifest_reviews)
        self._queue_manifest = manifest_upsert.on_conflict_do_update(
            index_elements=[gc_manifest_reviews.c.repository_id, gc_manifest_reviews.c.digest],
            set_={
                "event_at": _later(
                    gc_manifest_reviews.c.event_at, manifest_upsert.excluded.event_at
                )
            },
        )

    async def queue_blobs(self, conn: SQLConnection, digests: Iterable[str], at: datetime) -> None:
        # Sorted: two transactions upserting the same entries take their locks in one order.
        rows = [{"digest": d, "event_at": at} for d in sorted(set(digests))]
        if rows:
            await conn.execute(self._queue_blob, rows)

    async def queue_manifests(
        self, conn: SQLConnection, repository_id: int, digests: Iterable[str], at: datetime
    ) -> None:
        rows = [
            {"repository_id": repository_id, "digest": d, "event_at": at}
            for d in sorted(set(digests))
        ]
        if rows:
            await conn.execute(self._queue_manifest, rows)


async def lock_live_blobs(
    conn: SQLConnection, repository_id: int, digests: Sequence[str]
) -> set[str]:
    """Those of `digests` that `repository_id` may serve and that are not being collected,
    share-locked until the transaction ends."""
    if not digests:
        return set()
    params = {"repository_id": repository_id, "digests": sorted(set(digests))}
    return set((await conn.execute(_LIVE_BLOBS_IN_REPOSITORY, params)).scalars())


async def lock_manifests(
    conn: SQLConnection, repository_id: int, digests: Sequence[str]
) -> set[str]:
    """Those of `digests` stored in `repository_id`, share-locked until the transaction ends."""
    if not digests:
        return set()
    params = {"repository_id": repository_id, "digests": sorted(set(digests))}
    return set((await conn.execute(_MANIFESTS_IN_REPOSITORY, params)).scalars())


async def blob_state(
    conn: SQLConnection, digest: str, exclusive: bool = True
) -> tuple[str, datetime | None] | None:
    """The blob row's (incarnation, deleting_since), locked; None when there is no row."""
    statement = _BLOB_FOR_UPDATE if exclusive else _BLOB_FOR_SHARE
    row = (await conn.execute(statement, {"digest": digest})).first()
    return (row[0], row[1]) if row is not None else None


def repository_and_digest(repository_id: int, digest: str) -> Any:
    """A WHERE clause for one manifest review entry."""
    return and_(
        gc_manifest_reviews.c.repository_id == repository_id,
        gc_manifest_reviews.c.digest == digest,
    )
