"""The SQL of lifecycle policies (registry/policies/): the policy tables, what a manifest push
checks inside its own transaction (immutable tags, quota), namespace usage, pull statistics.

Namespace usage is kept by registry/metadata/usage.py, which manifest writes call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, delete, insert, or_, select, update

from registry.metadata import usage
from registry.metadata.db import Database, SQLConnection
from registry.metadata.identity import aware, now
from registry.metadata.tables import (
    immutable_tag_rules,
    namespace_quotas,
    repositories,
    retention_policies,
    tags,
)


class PolicyNotFound(Exception):
    """No such policy, rule or quota."""


class PolicyConflict(Exception):
    """The rule exists already."""


@dataclass(frozen=True, slots=True)
class RetentionRow:
    pattern: str
    keep_last: int | None
    keep_tags: str | None
    keep_pulled_within: int | None
    keep_pushed_within: int | None
    untagged_after: int | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ImmutableRow:
    id: int
    pattern: str
    tags: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TagStats:
    name: str
    digest: str
    pushed_at: datetime
    last_pulled_at: datetime | None
    pull_count: int


class PolicyStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        upsert = db.insert(retention_policies)
        columns = [c.name for c in retention_policies.c if c.name != "pattern"]
        self._upsert_retention = upsert.on_conflict_do_update(
            index_elements=[retention_policies.c.pattern],
            set_={name: upsert.excluded[name] for name in columns},
        )
        quota = db.insert(namespace_quotas)
        self._upsert_quota = quota.on_conflict_do_update(
            index_elements=[namespace_quotas.c.namespace],
            set_={
                "limit_bytes": quota.excluded.limit_bytes,
                "updated_at": quota.excluded.updated_at,
            },
        )
        self._insert_tag = db.insert_ignore(tags)

    # Retention policies ---------------------------------------------------------------------

    async def set_retention(self, row: RetentionRow) -> None:
        async with self.db.write() as conn:
            values = {f: getattr(row, f) for f in RetentionRow.__dataclass_fields__}
            await conn.execute(self._upsert_retention, values)

    async def retention_policies(self) -> list[RetentionRow]:
        query = select(*retention_policies.c).order_by(retention_policies.c.pattern)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            RetentionRow(**{**row._mapping, "updated_at": aware(row.updated_at)}) for row in rows
        ]

    async def delete_retention(self, pattern: str) -> None:
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(retention_policies).where(retention_policies.c.pattern == pattern)
            )
        if not result.rowcount:
            raise PolicyNotFound(f"no retention policy for {pattern}")

    # Immutable tag rules --------------------------------------------------------------------

    async def add_immutable(self, pattern: str, tag_globs: str) -> int:
        async with self.db.write() as conn:
            found = await conn.execute(
                select(immutable_tag_rules.c.id).where(
                    immutable_tag_rules.c.pattern == pattern,
                    immutable_tag_rules.c.tags == tag_globs,
                )
            )
            if found.first() is not None:
                raise PolicyConflict(f"tags {tag_globs} of {pattern} are immutable already")
            result = await conn.execute(
                insert(immutable_tag_rules)
                .values(pattern=pattern, tags=tag_globs, created_at=now())
                .returning(immutable_tag_rules.c.id)
            )
            return int(result.scalar_one())

    async def immutable_rules(self, conn: SQLConnection | None = None) -> list[ImmutableRow]:
        query = select(*immutable_tag_rules.c).order_by(immutable_tag_rules.c.id)
        if conn is None:
            async with self.db.read() as c:
                rows = (await c.execute(query)).all()
        else:
            rows = (await conn.execute(query)).all()
        return [ImmutableRow(r.id, r.pattern, r.tags, aware(r.created_at)) for r in rows]  # type: ignore[arg-type]

    async def delete_immutable(self, rule_id: int) -> None:
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(immutable_tag_rules).where(immutable_tag_rules.c.id == rule_id)
            )
        if not result.rowcount:
            raise PolicyNotFound(f"no immutable tag rule {rule_id}")

    # Quotas ---------------------------------------------------------------------------------

    async def set_quota(self, namespace: str, limit_bytes: int) -> None:
        values = {"namespace": namespace, "limit_bytes": limit_bytes, "updated_at": now()}
        async with self.db.write() as conn:
            await conn.execute(self._upsert_quota, values)

    async def quotas(self) -> dict[str, int]:
        query = select(namespace_quotas.c.namespace, namespace_quotas.c.limit_bytes)
        async with self.db.read() as conn:
            return {row[0]: int(row[1]) for row in await conn.execute(query)}

    async def quota(self, namespace: str, conn: SQLConnection | None = None) -> int | None:
        query = select(namespace_quotas.c.limit_bytes).where(
            namespace_quotas.c.namespace == namespace
        )
        if conn is not None:
            return (await conn.execute(query)).scalar()
        async with self.db.read() as c:
            return (await c.execute(query)).scalar()

    async def delete_quota(self, namespace: str) -> None:
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(namespace_quotas).where(namespace_quotas.c.namespace == namespace)
            )
        if not result.rowcount:
            raise PolicyNotFound(f"no quota for namespace {namespace}")

    # Usage ----------------------------------------------------------------------------------

    async def namespaces(self) -> list[str]:
        """Every namespace storing anything, in byte order."""
        async with self.db.read() as conn:
            return await usage.namespaces(conn)

    async def usage(self, namespace: str, conn: SQLConnection | None = None) -> int:
        if conn is not None:
            return await usage.usage(conn, namespace)
        async with self.db.read() as c:
            return await usage.usage(c, namespace)

    async def measured_usage(self, namespace: str) -> int:
        async with self.db.read() as conn:
            return await usage.measure(conn, namespace)

    async def added_bytes(
        self,
        conn: SQLConnection,
        namespace: str,
        blob_digests: Sequence[str],
        manifest_digest: str,
        manifest_size: int,
    ) -> int:
        """What storing this manifest would add to the namespace's usage (taking the
        namespace's turn first): its blobs and itself, unless the namespace holds them."""
        await usage.lock_namespace(conn, namespace)
        sizes = await usage.blob_sizes(conn, blob_digests)
        sizes[manifest_digest] = manifest_size
        return await usage.missing_bytes(conn, namespace, sizes)

    # Immutable tags on push -----------------------------------------------------------------

    async def claim_tag(
        self, conn: SQLConnection, repository_id: int, tag: str, digest: str
    ) -> str | None:
        """Create the tag at `digest` unless it exists; the digest it points at otherwise,
        row-locked (two racing first pushes: the second waits for the first, then sees it)."""
        values = {"repository_id": repository_id, "name": tag, "manifest_digest": digest}
        inserted = await conn.execute(self._insert_tag, {**values, "updated_at": now()})
        if inserted.rowcount:
            return None
        current = select(tags.c.manifest_digest).where(
            tags.c.repository_id == repository_id, tags.c.name == tag
        )
        return (await conn.execute(current.with_for_update())).scalar()

    # Pull statistics ------------------------------------------------------------------------

    async def add_pulls(
        self, by_tag: Sequence[dict[str, Any]], by_digest: Sequence[dict[str, Any]]
    ) -> None:
        """Add counted pulls and move last-pull times forward, in one transaction: each
        entry is {repository, ref, count, at}; a digest's pulls go to every tag on it."""
        repo = select(repositories.c.id).where(repositories.c.name == bindparam("repository"))
        later = case(
            (
                or_(tags.c.last_pulled_at.is_(None), tags.c.last_pulled_at < bindparam("at")),
                bindparam("at"),
            ),
            else_=tags.c.last_pulled_at,
        )
        values = {"pull_count": tags.c.pull_count + bindparam("count"), "last_pulled_at": later}
        async with self.db.write() as conn:
            for entries, column in ((by_tag, tags.c.name), (by_digest, tags.c.manifest_digest)):
                if entries:
                    statement = (
                        update(tags)
                        .where(
                            tags.c.repository_id == repo.scalar_subquery(),
                            column == bindparam("ref"),
                        )
                        .values(values)
                    )
                    await conn.execute(statement, list(entries))

    async def tag_stats(self, repository: str) -> list[TagStats] | None:
        """Every tag of `repository` with its pull statistics; None for no such repository."""
        async with self.db.read() as conn:
            repo_id = (
                await conn.execute(
                    select(repositories.c.id).where(repositories.c.name == repository)
                )
            ).scalar()
            if repo_id is None:
                return None
            rows = await conn.execute(
                select(
                    tags.c.name, tags.c.manifest_digest, tags.c.updated_at,
                    tags.c.last_pulled_at, tags.c.pull_count,
                ).where(tags.c.repository_id == repo_id).order_by(tags.c.name)
            )  # fmt: skip
            return [
                TagStats(r[0], r[1], aware(r[2]), aware(r[3]), int(r[4]))  # type: ignore[arg-type]
                for r in rows
            ]
