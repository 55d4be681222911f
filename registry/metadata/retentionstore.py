"""The SQL of retention runs (registry/policies/runner.py): repositories page by page, their
tags with what the rules look at, and removing tags by policy.

A tag is removed only if it still points at the digest the policy judged (a push that moved
it since wins), one statement per tag name: never by digest, so other tags of the same image
stay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select

from registry.metadata.db import Database
from registry.metadata.identity import aware
from registry.metadata.tables import repositories, tags
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
        self, repository_id: int, doomed: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """Remove each (tag, digest) whose tag still points at that digest; those removed."""
        removed = []
        async with self.db.write() as conn:
            for tag, digest in doomed:
                params = {"repository_id": repository_id, "tag": tag, "digest": digest}
                if (await conn.execute(_REMOVE_TAG, params)).first() is not None:
                    removed.append((tag, digest))
        return removed
