"""The SQL of garbage collection (registry/gc/): review batches under row locks, upload
expiry, and the record of runs.

Each method is one short transaction over a bounded batch, so that a collection never holds
a lock for long (on SQLite, the one write lock every push needs). The protocol these
statements are part of, and why it is safe, is written down in `registry/gc/__init__.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, tuple_, update

from registry.metadata import usage
from registry.metadata.db import Database, SQLConnection
from registry.metadata.reachability import unreachable
from registry.metadata.reviews import Reviews
from registry.metadata.store import now
from registry.metadata.tables import (
    blobs,
    gc_blob_reviews,
    gc_manifest_reviews,
    gc_runs,
    manifest_references,
    manifests,
    repositories,
    repository_blobs,
    uploads,
)

# Manifest batches of several replicas take turns (PostgreSQL advisory lock, per
# transaction): each upserts review entries that another could be holding.
_MANIFEST_BATCH_LOCK = 0x67636D66
# Claims of the background run (`claim_scheduled_run`) take turns likewise.
_SCHEDULE_LOCK = 0x67637363


@dataclass(frozen=True, slots=True)
class Doomed:
    """A blob marked for deletion: its bytes go next, then its row."""

    digest: str
    size: int
    location: str | None = None  # where its bytes are, when not at the digest's key


@dataclass
class BlobBatch:
    examined: int = 0  # review entries taken
    doomed: list[Doomed] = field(default_factory=list)
    busy: int = 0  # rows a push held: left for the next run


@dataclass
class ManifestBatch:
    examined: int = 0
    deleted: list[tuple[str, str]] = field(default_factory=list)  # (repository, digest)
    busy: int = 0


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    started_at: datetime
    finished_at: datetime | None
    trigger: str
    dry_run: bool
    status: str
    host: str
    blobs_deleted: int
    bytes_reclaimed: int
    manifests_deleted: int
    uploads_expired: int
    detail: dict[str, Any]


_NOT_A_MANIFEST = manifest_references.c.kind != "manifest"


def _referenced(digest: Any) -> Any:
    """Some manifest names the blob `digest` as its config or a layer. EXISTS: it stops at
    the first of what may be a hundred thousand references (a base layer)."""
    return (
        select(manifest_references.c.digest)
        .where(manifest_references.c.digest == digest, _NOT_A_MANIFEST)
        .exists()
    )


# The statements of a blob batch, built once (on SQLite they run on the event loop, and
# building a statement costs more than running it): `digests` expands to the batch.
_DIGESTS: Any = bindparam("digests", expanding=True)
_DUE_BLOBS = (
    select(gc_blob_reviews.c.digest)
    .where(gc_blob_reviews.c.event_at <= bindparam("cutoff"))
    .order_by(gc_blob_reviews.c.event_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_LOCK_BLOBS = (
    select(blobs.c.digest, blobs.c.size, blobs.c.deleting_since, blobs.c.location)
    .where(blobs.c.digest.in_(_DIGESTS))
    .with_for_update(skip_locked=True)
)
_EXISTING_BLOBS = select(blobs.c.digest).where(blobs.c.digest.in_(_DIGESTS))
_REFERENCED_BLOBS = select(blobs.c.digest).where(
    blobs.c.digest.in_(_DIGESTS), _referenced(blobs.c.digest)
)
_MARK_BLOBS = (
    update(blobs).where(blobs.c.digest.in_(_DIGESTS)).values(deleting_since=bindparam("stamp"))
)
_UNLINK_BLOBS = delete(repository_blobs).where(repository_blobs.c.digest.in_(_DIGESTS))
_DROP_BLOB_REVIEWS = delete(gc_blob_reviews).where(gc_blob_reviews.c.digest.in_(_DIGESTS))
_FORGET_BLOBS = delete(blobs).where(
    blobs.c.digest.in_(_DIGESTS), blobs.c.deleting_since.is_not(None)
)


class GCStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.reviews = Reviews(db)

    # Blobs ----------------------------------------------------------------------------------

    async def mark_blobs(self, cutoff: datetime, limit: int) -> BlobBatch:
        """Take up to `limit` blob review entries due by `cutoff`; lock their rows; mark
        those still unreferenced as being deleted and unlink them everywhere. The caller
        then deletes their bytes and calls `forget_blobs`."""
        batch = BlobBatch()
        async with self.db.write() as conn:
            due = await conn.execute(_DUE_BLOBS, {"cutoff": cutoff, "limit": limit})
            entries = set(due.scalars())
            if not entries:
                return batch
            batch.examined = len(entries)
            doomed, busy = await _mark_unreferenced(conn, entries)
            batch.busy = len(busy)
            reviewed = sorted(entries - busy)
            await conn.execute(_DROP_BLOB_REVIEWS, {"digests": reviewed})
        batch.doomed = doomed
        return batch

    async def mark_unreferenced(self, digests: Iterable[str]) -> list[Doomed]:
        """For fsck --repair: those of `digests` no manifest refers to, marked like
        `mark_blobs` marks them, whatever their review entries say."""
        async with self.db.write() as conn:
            doomed, _busy = await _mark_unreferenced(conn, set(digests))
        return doomed

    async def mark_orphan(self, digest: str, size: int) -> bool:
        """For fsck --repair: bytes the database has no row for get a marked row, so that an
        upload of the same blob waits until they are deleted (then `forget_blobs`). False
        when a row exists (an upload recorded the blob since: not an orphan)."""
        values = {
            "digest": digest, "size": size, "created_at": now(), "incarnation": "orphan",
            "deleting_since": now(),
        }  # fmt: skip
        async with self.db.write() as conn:
            inserted = await conn.execute(
                self.db.insert_ignore(blobs).values(values).returning(blobs.c.digest)
            )
            return inserted.scalar() is not None

    async def forget_blobs(self, digests: Sequence[str]) -> None:
        """Remove the rows of blobs whose bytes are gone (marked by `mark_blobs`)."""
        if not digests:
            return
        params = {"digests": sorted(digests)}
        async with self.db.write() as conn:
            await conn.execute(_UNLINK_BLOBS, params)
            await conn.execute(_FORGET_BLOBS, params)

    async def claim_stale_deletions(self, older_than: datetime, limit: int) -> list[Doomed]:
        """Blobs marked for deletion before `older_than` and never finished (their collector
        died): mark them again as this collector's, to delete their bytes and rows."""
        async with self.db.write() as conn:
            rows = (
                await conn.execute(
                    select(blobs.c.digest, blobs.c.size, blobs.c.location)
                    .where(blobs.c.deleting_since < older_than)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            digests = [row[0] for row in rows]
            if digests:
                await conn.execute(
                    update(blobs).where(blobs.c.digest.in_(digests)).values(deleting_since=now())
                )
        return [Doomed(*row) for row in rows]

    async def preview_blobs(self, cutoff: datetime, after: str, limit: int) -> list[Doomed]:
        """For a dry run: blobs `mark_blobs` would take now, after digest `after`."""
        query = (
            select(blobs.c.digest, blobs.c.size, blobs.c.location)
            .select_from(gc_blob_reviews.join(blobs, blobs.c.digest == gc_blob_reviews.c.digest))
            .where(
                gc_blob_reviews.c.event_at <= cutoff,
                blobs.c.deleting_since.is_(None),
                blobs.c.digest > after,
                ~_referenced(blobs.c.digest),
            )
            .order_by(blobs.c.digest)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return [Doomed(*row) for row in await conn.execute(query)]

    async def count_stale_deletions(self, older_than: datetime) -> int:
        query = select(func.count()).where(blobs.c.deleting_since < older_than)
        async with self.db.read() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    # Manifests (gc.untagged_manifests) -----------------------------------------------------

    async def collect_manifests(
        self, cutoff: datetime, limit: int, dry_run: bool = False
    ) -> ManifestBatch:
        """Take up to `limit` manifest review entries due by `cutoff`; lock the manifests;
        delete those that no tag reaches (through indexes, subjects and referrers), queueing
        what they referred to. A dry run changes nothing: it looks at every due entry."""
        batch = ManifestBatch()
        async with self.db.read() if dry_run else self.db.write() as conn:
            if self.db.dialect == "postgresql" and not dry_run:
                await conn.execute(select(func.pg_advisory_xact_lock(_MANIFEST_BATCH_LOCK)))
            due = (
                select(gc_manifest_reviews.c.repository_id, gc_manifest_reviews.c.digest)
                .where(gc_manifest_reviews.c.event_at <= cutoff)
                .order_by(gc_manifest_reviews.c.event_at)
            )
            if not dry_run:
                due = due.limit(limit).with_for_update(skip_locked=True)
            entries = {(row[0], row[1]) for row in await conn.execute(due)}
            if not entries:
                return batch
            batch.examined = len(entries)
            keys = tuple_(manifests.c.repository_id, manifests.c.digest)
            candidates = select(
                manifests.c.id, manifests.c.repository_id, manifests.c.digest
            ).where(keys.in_(sorted(entries)))
            if not dry_run:
                candidates = candidates.with_for_update(skip_locked=True)
            locked = {(row[1], row[2]): row[0] for row in await conn.execute(candidates)}
            existing = {
                (row[0], row[1])
                for row in await conn.execute(
                    select(manifests.c.repository_id, manifests.c.digest).where(
                        keys.in_(sorted(entries))
                    )
                )
            }
            batch.busy = len(existing - locked.keys())
            doomed: list[tuple[int, str]] = []
            for repo_id in sorted({repo for repo, _ in locked}):
                lost = await unreachable(conn, repo_id)
                doomed += [(repo, d) for repo, d in locked if repo == repo_id and d in lost]
            names = await _repository_names(conn, {repo for repo, _ in doomed})
            batch.deleted = [(names[repo], d) for repo, d in sorted(doomed)]
            if dry_run:
                return batch
            await self.delete_manifests(conn, [locked[key] for key in doomed], cutoff)
            reviewed = sorted(entries - (existing - locked.keys()))
            await conn.execute(
                delete(gc_manifest_reviews).where(
                    tuple_(gc_manifest_reviews.c.repository_id, gc_manifest_reviews.c.digest).in_(
                        reviewed
                    )
                )
            )
        return batch

    async def delete_manifests(
        self, conn: SQLConnection, ids: Sequence[int], cutoff: datetime
    ) -> None:
        """Delete these manifests (locked by the caller); queue their children, subjects and
        referrers (due at once: they lost a relative that was already past its grace period)
        and their blobs (from now). Their namespaces' usage drops with them (usage.py). Also
        retention's way of deleting untagged manifests (metadata/retentionstore.py)."""
        if not ids:
            return
        gone = (
            await conn.execute(
                select(manifests.c.id, manifests.c.repository_id, manifests.c.digest,
                       manifests.c.subject_digest).where(manifests.c.id.in_(ids))
            )
        ).all()  # fmt: skip
        references = (
            await conn.execute(
                select(
                    manifest_references.c.manifest_id,
                    manifest_references.c.kind,
                    manifest_references.c.digest,
                ).where(manifest_references.c.manifest_id.in_(ids))
            )
        ).all()
        referrers = (
            await conn.execute(
                select(manifests.c.repository_id, manifests.c.digest).where(
                    tuple_(manifests.c.repository_id, manifests.c.subject_digest).in_(
                        sorted({(row[1], row[2]) for row in gone})
                    )
                )
            )
        ).all()
        await usage.remove_manifests(conn, ids)
        await conn.execute(delete(manifests).where(manifests.c.id.in_(ids)))
        repository_of = {row[0]: row[1] for row in gone}
        deleted = {(row[1], row[2]) for row in gone}
        related: dict[int, set[str]] = {}
        for row in gone:
            if row[3]:
                related.setdefault(row[1], set()).add(row[3])
        for repo_id, digest in referrers:
            related.setdefault(repo_id, set()).add(digest)
        for manifest_id, kind, digest in references:
            if kind == "manifest":
                related.setdefault(repository_of[manifest_id], set()).add(digest)
        # Manifest entries before blob entries, in every transaction (no lock cycles).
        for repo_id, digests in sorted(related.items()):
            fresh = [d for d in digests if (repo_id, d) not in deleted]
            await self.reviews.queue_manifests(conn, repo_id, fresh, cutoff)
        blob_digests = [digest for _, kind, digest in references if kind != "manifest"]
        await self.reviews.queue_blobs(conn, blob_digests, now())

    # Uploads --------------------------------------------------------------------------------

    async def expire_uploads(
        self, cutoff: datetime, limit: int, dry_run: bool = False
    ) -> list[str]:
        """Upload sessions untouched since `cutoff` and held by no writer: deleted (the
        caller removes their bytes next), or only listed in a dry run."""
        stamp = now()
        stale = and_(
            uploads.c.updated_at < cutoff,
            or_(uploads.c.writer.is_(None), uploads.c.writer_until < stamp),
        )
        query = select(uploads.c.id).where(stale).order_by(uploads.c.id).limit(limit)
        if dry_run:
            async with self.db.read() as conn:
                return list((await conn.execute(query)).scalars())
        async with self.db.write() as conn:
            ids = list((await conn.execute(query.with_for_update(skip_locked=True))).scalars())
            if ids:
                await conn.execute(delete(uploads).where(uploads.c.id.in_(ids), stale))
        return ids

    # Runs -----------------------------------------------------------------------------------

    async def start_run(self, trigger: str, dry_run: bool, host: str) -> int:
        values = {
            "started_at": now(), "trigger": trigger, "dry_run": dry_run, "status": "running",
            "host": host[:255], "blobs_deleted": 0, "bytes_reclaimed": 0,
            "manifests_deleted": 0, "uploads_expired": 0,
        }  # fmt: skip
        async with self.db.write() as conn:
            result = await conn.execute(insert(gc_runs).values(values).returning(gc_runs.c.id))
            return int(result.scalar_one())

    async def claim_scheduled_run(
        self, host: str, since: datetime, lease: datetime
    ) -> int | None:
        """Start a background run unless another one (of any replica or worker) started
        after `since`, or is still running and started after `lease`: then None. One
        collector at a time keeps a run's share of the database to one collector's."""
        c = gc_runs.c
        recent = select(c.id).where(
            c.trigger == "schedule",
            or_(c.started_at > since, and_(c.status == "running", c.started_at > lease)),
        )
        async with self.db.write() as conn:
            if self.db.dialect == "postgresql":  # (SQLite: BEGIN IMMEDIATE serializes these)
                await conn.execute(select(func.pg_advisory_xact_lock(_SCHEDULE_LOCK)))
            if (await conn.execute(recent.limit(1))).first() is not None:
                return None
            values = {
                "started_at": now(), "trigger": "schedule", "dry_run": False,
                "status": "running", "host": host[:255], "blobs_deleted": 0,
                "bytes_reclaimed": 0, "manifests_deleted": 0, "uploads_expired": 0,
            }  # fmt: skip
            result = await conn.execute(insert(gc_runs).values(values).returning(c.id))
            return int(result.scalar_one())

    async def finish_run(self, run_id: int, status: str, figures: dict[str, Any]) -> None:
        counts = {
            key: int(figures.get(key, 0))
            for key in ("blobs_deleted", "bytes_reclaimed", "manifests_deleted", "uploads_expired")
        }
        async with self.db.write() as conn:
            await conn.execute(
                update(gc_runs)
                .where(gc_runs.c.id == run_id)
                .values(finished_at=now(), status=status, detail=json.dumps(figures), **counts)
            )

    async def runs(self, limit: int) -> list[RunRecord]:
        query = select(*gc_runs.c).order_by(gc_runs.c.id.desc()).limit(limit)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_run_record(row._mapping) for row in rows]

    async def prune_runs(self, older_than: datetime) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(gc_runs).where(gc_runs.c.started_at < older_than))


async def _mark_unreferenced(
    conn: SQLConnection, digests: set[str]
) -> tuple[list[Doomed], set[str]]:
    """Lock the blob rows of `digests` (skipping rows others hold: returned as busy), then
    mark those that are live and unreferenced as being deleted and unlink them everywhere."""
    if not digests:
        return [], set()
    wanted = {"digests": sorted(digests)}
    locked = {row[0]: row for row in await conn.execute(_LOCK_BLOBS, wanted)}
    existing = set((await conn.execute(_EXISTING_BLOBS, wanted)).scalars())
    live = sorted(d for d, row in locked.items() if row[2] is None)
    # Rechecked under the locks, in a statement of its own: a manifest committed while this
    # transaction waited is seen (READ COMMITTED takes a new snapshot per statement).
    referenced = set((await conn.execute(_REFERENCED_BLOBS, {"digests": live})).scalars())
    doomed = [d for d in live if d not in referenced]
    if doomed:
        await conn.execute(_MARK_BLOBS, {"digests": doomed, "stamp": now()})
        await conn.execute(_UNLINK_BLOBS, {"digests": doomed})
    return [Doomed(d, locked[d][1], locked[d][3]) for d in doomed], existing - locked.keys()


def _run_record(row: Any) -> RunRecord:
    fields = {key: row[key] for key in RunRecord.__dataclass_fields__ if key != "detail"}
    return RunRecord(**fields, detail=json.loads(row["detail"]) if row["detail"] else {})


async def _repository_names(conn: SQLConnection, ids: Iterable[int]) -> dict[int, str]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    query = select(repositories.c.id, repositories.c.name).where(repositories.c.id.in_(wanted))
    return {row[0]: row[1] for row in await conn.execute(query)}
