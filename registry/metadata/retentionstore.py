"""The SQL of retention runs (registry/policies/runner.py): repositories page by page, their
tags with what the rules look at, removing tags and deleting untagged manifests by policy.

A tag is removed only if it still points at the digest the policy judged (a push that moved
it since wins), one statement per tag name: never by digest, so other tags of the same image
stay. The manifest it pointed at is queued for review, as any untagging is (gc/__init__.py).

Untagged manifests are found through the collector's review queue: an entry's time is the
manifest's latest untagging (or its push without a tag), so "untagged for `untagged_after`"
is an entry older than that whose manifest no tag reaches (metadata/reachability.py: not
through a kept index, nor as a referrer or subject of a kept manifest). They are deleted the
collector's way (GCStore.delete_manifests: their blobs are queued, and the collector frees
the bytes once nothing else refers to them), under its locks.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, func, select

from registry.metadata.db import Database
from registry.metadata.gcstore import _MANIFEST_BATCH_LOCK, GCStore
from registry.metadata.identity import aware
from registry.metadata.reachability import unreachable
from registry.metadata.reviews import Reviews
from registry.metadata.tables import gc_manifest_reviews, manifests, repositories, tags
from registry.policies.retention import TagFacts


@dataclass(frozen=True, slots=True)
class RepositoryRow:
    id: int
    name: str


_PAGE = (
    select(repositories.c.id, repositories.c.name)
    .where(repositories.c.name > bindparam("after"))
    .order_by(repositories.c.name)
    .limit(bindparam("limit"))
)
_TAGS = select(tags.c.name, tags.c.manifest_digest, tags.c.updated_at, tags.c.last_pulled_at).where(
    tags.c.repository_id == bindparam("repository_id")
)
_REMOVE_TAG = (
    delete(tags)
    .where(
        tags.c.repository_id == bindparam("repository_id"),
        tags.c.name == bindparam("tag"),
        tags.c.manifest_digest == bindparam("digest"),
    )
    .returning(tags.c.name)
)


class RetentionStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.reviews = Reviews(db)
        self.gc = GCStore(db)

    async def repositories(self, after: str, limit: int) -> list[RepositoryRow]:
        async with self.db.read() as conn:
            rows = await conn.execute(_PAGE, {"after": after, "limit": limit})
            return [RepositoryRow(row[0], row[1]) for row in rows]

    async def tag_facts(self, repository_id: int) -> list[TagFacts]:
        async with self.db.read() as conn:
            rows = (await conn.execute(_TAGS, {"repository_id": repository_id})).all()
        return [
            TagFacts(row[0], row[1], aware(row[2]), aware(row[3]))  # type: ignore[arg-type]
            for row in rows
        ]

    async def remove_tags(
        self, repository_id: int, doomed: Sequence[tuple[str, str]], stamp: datetime
    ) -> list[tuple[str, str]]:
        """Remove each (tag, digest) whose tag still points at that digest; those removed.
        What they pointed at counts as untagged from `stamp` (the run's time)."""
        removed = []
        async with self.db.write() as conn:
            for tag, digest in doomed:
                params = {"repository_id": repository_id, "tag": tag, "digest": digest}
                if (await conn.execute(_REMOVE_TAG, params)).first() is not None:
                    removed.append((tag, digest))
            untagged = {digest for _tag, digest in removed}
            await self.reviews.queue_manifests(conn, repository_id, untagged, stamp)
        return removed

    async def delete_untagged(
        self,
        repository_id: int,
        cutoff: datetime,
        dry_run: bool = False,
        removed_tags: Collection[tuple[str, str]] = (),
        untagged_now_counts: bool = False,
    ) -> list[str]:
        """Delete the repository's manifests that no tag reaches and that have had no tag
        since before `cutoff`; their digests. A dry run deletes nothing, and counts the tags
        `removed_tags` ((tag, digest)) would remove as removed already (and what they
        untag as untagged long enough when `untagged_now_counts`: untagged_after 0)."""
        async with self.db.read() if dry_run else self.db.write() as conn:
            if self.db.dialect == "postgresql" and not dry_run:  # the collector's turn too
                await conn.execute(select(func.pg_advisory_xact_lock(_MANIFEST_BATCH_LOCK)))
            due = select(gc_manifest_reviews.c.digest).where(
                gc_manifest_reviews.c.repository_id == repository_id,
                gc_manifest_reviews.c.event_at <= cutoff,
            )
            if not dry_run:
                due = due.with_for_update(skip_locked=True)
            entries = set((await conn.execute(due)).scalars())
            if dry_run and untagged_now_counts:
                entries |= {digest for _tag, digest in removed_tags}
            if not entries:
                return []
            candidates = select(manifests.c.id, manifests.c.digest).where(
                manifests.c.repository_id == repository_id,
                manifests.c.digest.in_(sorted(entries)),
            )
            if not dry_run:
                candidates = candidates.with_for_update(skip_locked=True)
            locked = {row[1]: row[0] for row in await conn.execute(candidates)}
            gone_tags = {tag for tag, _digest in removed_tags} if dry_run else set()
            lost = await unreachable(conn, repository_id, gone_tags)
            doomed = sorted(d for d in locked if d in lost)
            if dry_run or not doomed:
                return doomed
            await self.gc.delete_manifests(conn, [locked[d] for d in doomed], cutoff)
            await conn.execute(
                delete(gc_manifest_reviews).where(
                    gc_manifest_reviews.c.repository_id == repository_id,
                    gc_manifest_reviews.c.digest.in_(doomed),
                )
            )
            return doomed
