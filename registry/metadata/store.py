"""Every SQL statement the registry issues, behind methods named for what they answer.

Written for both SQLite and PostgreSQL: no dialect quirks beyond `INSERT ... ON CONFLICT`,
which both spell the same way through SQLAlchemy's dialect inserts.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, insert, or_, select, update

from registry.metadata.db import Database, SQLConnection
from registry.metadata.tables import (
    blobs,
    manifest_references,
    manifests,
    repositories,
    repository_blobs,
    tags,
    uploads,
)
from registry.oci.manifest import Descriptor, Manifest


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Upload:
    id: str
    repository_id: int
    size: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    content: bytes


class MetadataStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _insert_ignore(self, table: Any, **values: Any) -> Any:
        return self.db.insert(table).values(**values).on_conflict_do_nothing()

    # Repositories -------------------------------------------------------------------------

    async def repository_id(self, name: str, conn: SQLConnection | None = None) -> int | None:
        query = select(repositories.c.id).where(repositories.c.name == name)
        if conn is not None:
            return (await conn.execute(query)).scalar()
        async with self.db.read() as c:
            return (await c.execute(query)).scalar()

    async def ensure_repository(self, conn: SQLConnection, name: str) -> int:
        repo_id = await self.repository_id(name, conn)
        if repo_id is not None:  # nearly always: one statement, not two
            return repo_id
        await conn.execute(self._insert_ignore(repositories, name=name, created_at=now()))
        repo_id = await self.repository_id(name, conn)
        assert repo_id is not None
        return repo_id

    async def list_repositories(self, limit: int, last: str | None) -> list[str]:
        """Repositories with any content, after `last`, in byte order (keyset pagination)."""
        has_content = or_(
            exists().where(manifests.c.repository_id == repositories.c.id),
            exists().where(repository_blobs.c.repository_id == repositories.c.id),
        )
        query = select(repositories.c.name).where(has_content)
        if last is not None:
            query = query.where(repositories.c.name > last)
        query = query.order_by(repositories.c.name).limit(limit)
        async with self.db.read() as conn:
            return list((await conn.execute(query)).scalars())

    # Blobs --------------------------------------------------------------------------------

    async def blob_size_in_repository(self, repository: str, digest: str) -> int | None:
        """The blob's size when `repository` may serve it, else None."""
        query = (
            select(blobs.c.size)
            .select_from(
                repository_blobs.join(blobs, blobs.c.digest == repository_blobs.c.digest).join(
                    repositories, repositories.c.id == repository_blobs.c.repository_id
                )
            )
            .where(repositories.c.name == repository, repository_blobs.c.digest == digest)
        )
        async with self.db.read() as conn:
            return (await conn.execute(query)).scalar()

    async def repositories_with_blob(self, digest: str, limit: int = 1000) -> list[str]:
        """Names of repositories that may serve the blob (to check a mount without `from`)."""
        query = (
            select(repositories.c.name)
            .select_from(
                repository_blobs.join(
                    repositories, repositories.c.id == repository_blobs.c.repository_id
                )
            )
            .where(repository_blobs.c.digest == digest)
            .order_by(repositories.c.name)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return list((await conn.execute(query)).scalars())

    async def link_blob(self, repository: str, digest: str, size: int) -> None:
        """Record the blob (once, whoever pushed it) and let `repository` serve it."""
        async with self.db.write() as conn:
            await self._record_and_link(conn, repository, digest, size)

    async def _record_and_link(
        self, conn: SQLConnection, repository: str, digest: str, size: int
    ) -> None:
        repo_id = await self.ensure_repository(conn, repository)
        stamp = now()
        await conn.execute(self._insert_ignore(blobs, digest=digest, size=size, created_at=stamp))
        await conn.execute(
            self._insert_ignore(
                repository_blobs, repository_id=repo_id, digest=digest, created_at=stamp
            )
        )

    async def unlink_blob(self, repository: str, digest: str) -> bool:
        async with self.db.write() as conn:
            repo_id = await self.repository_id(repository, conn)
            if repo_id is None:
                return False
            result = await conn.execute(
                delete(repository_blobs).where(
                    repository_blobs.c.repository_id == repo_id, repository_blobs.c.digest == digest
                )
            )
            return bool(result.rowcount)

    # Uploads ------------------------------------------------------------------------------

    async def create_upload(self, repository: str) -> Upload:
        upload_id = secrets.token_hex(16)
        stamp = now()
        async with self.db.write() as conn:
            repo_id = await self.ensure_repository(conn, repository)
            await conn.execute(
                insert(uploads).values(
                    id=upload_id, repository_id=repo_id, size=0, created_at=stamp, updated_at=stamp
                )
            )
        return Upload(upload_id, repo_id, 0, stamp)

    async def get_upload(self, repository: str, upload_id: str) -> Upload | None:
        query = (
            select(uploads.c.id, uploads.c.repository_id, uploads.c.size, uploads.c.created_at)
            .select_from(uploads.join(repositories, repositories.c.id == uploads.c.repository_id))
            .where(uploads.c.id == upload_id, repositories.c.name == repository)
        )
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        return Upload(*row) if row else None

    async def claim_upload(self, upload_id: str, writer: str, seconds: float) -> Upload | None:
        """Make `writer` the upload's only writer for `seconds`, unless another holds it;
        the session as it is once held, or None (held by another, or gone)."""
        stamp = now()
        async with self.db.write() as conn:
            result = await conn.execute(
                update(uploads)
                .where(
                    uploads.c.id == upload_id,
                    or_(
                        uploads.c.writer.is_(None),
                        uploads.c.writer == writer,
                        uploads.c.writer_until < stamp,
                    ),
                )
                .values(writer=writer, writer_until=stamp + timedelta(seconds=seconds))
                .returning(
                    uploads.c.id, uploads.c.repository_id, uploads.c.size, uploads.c.created_at
                )
            )
            row = result.first()
        return Upload(*row) if row else None

    async def release_upload(self, upload_id: str, writer: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(uploads)
                .where(uploads.c.id == upload_id, uploads.c.writer == writer)
                .values(writer=None, writer_until=None)
            )

    async def advance_upload(
        self, upload_id: str, old_size: int, new_size: int, writer: str | None = None
    ) -> bool:
        """Move the upload's recorded size from `old_size`; False if someone else moved it
        (or, given a `writer`, if that writer no longer holds the upload)."""
        conditions = [uploads.c.id == upload_id, uploads.c.size == old_size]
        if writer is not None:
            conditions.append(uploads.c.writer == writer)
        async with self.db.write() as conn:
            result = await conn.execute(
                update(uploads).where(*conditions).values(size=new_size, updated_at=now())
            )
            return bool(result.rowcount)

    async def delete_upload(self, upload_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(uploads).where(uploads.c.id == upload_id))

    async def finish_upload(self, upload_id: str, repository: str, digest: str, size: int) -> None:
        """In one transaction: record the blob, link it, drop the upload session."""
        async with self.db.write() as conn:
            await self._record_and_link(conn, repository, digest, size)
            await conn.execute(delete(uploads).where(uploads.c.id == upload_id))

    async def stale_uploads(self, older_than: datetime) -> list[str]:
        async with self.db.read() as conn:
            query = select(uploads.c.id).where(uploads.c.updated_at < older_than)
            return list((await conn.execute(query)).scalars())

    # Manifests and tags -------------------------------------------------------------------

    async def get_manifest(self, repository: str, reference: str) -> StoredManifest | None:
        """A manifest by digest (when `reference` has a colon) or by tag."""
        cols = (manifests.c.digest, manifests.c.media_type, manifests.c.content)
        joined = manifests.join(repositories, repositories.c.id == manifests.c.repository_id)
        if ":" in reference:
            query = (
                select(*cols)
                .select_from(joined)
                .where(repositories.c.name == repository, manifests.c.digest == reference)
            )
        else:
            query = (
                select(*cols)
                .select_from(
                    joined.join(
                        tags,
                        and_(
                            tags.c.repository_id == manifests.c.repository_id,
                            tags.c.manifest_digest == manifests.c.digest,
                        ),
                    )
                )
                .where(repositories.c.name == repository, tags.c.name == reference)
            )
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        return StoredManifest(row[0], row[1], bytes(row[2])) if row else None

    async def missing_blobs(self, repository: str, digests: Sequence[str]) -> list[str]:
        if not digests:
            return []
        query = (
            select(repository_blobs.c.digest)
            .select_from(
                repository_blobs.join(
                    repositories, repositories.c.id == repository_blobs.c.repository_id
                )
            )
            .where(repositories.c.name == repository, repository_blobs.c.digest.in_(set(digests)))
        )
        async with self.db.read() as conn:
            present = set((await conn.execute(query)).scalars())
        return [d for d in dict.fromkeys(digests) if d not in present]

    async def missing_manifests(self, repository: str, digests: Sequence[str]) -> list[str]:
        if not digests:
            return []
        query = (
            select(manifests.c.digest)
            .select_from(
                manifests.join(repositories, repositories.c.id == manifests.c.repository_id)
            )
            .where(repositories.c.name == repository, manifests.c.digest.in_(set(digests)))
        )
        async with self.db.read() as conn:
            present = set((await conn.execute(query)).scalars())
        return [d for d in dict.fromkeys(digests) if d not in present]

    async def put_manifest(
        self,
        repository: str,
        digest: str,
        content: bytes,
        manifest: Manifest,
        tag_names: Sequence[str],
    ) -> None:
        """Store the manifest (idempotent per repository and digest) and point `tag_names` at it."""
        stamp = now()
        async with self.db.write() as conn:
            repo_id = await self.ensure_repository(conn, repository)
            result = await conn.execute(
                self._insert_ignore(
                    manifests,
                    repository_id=repo_id,
                    digest=digest,
                    media_type=manifest.media_type,
                    artifact_type=manifest.referrer_artifact_type,
                    subject_digest=manifest.subject.digest if manifest.subject else None,
                    annotations=json.dumps(manifest.annotations) if manifest.annotations else None,
                    size=len(content),
                    content=content,
                    created_at=stamp,
                ).returning(manifests.c.id)
            )
            manifest_id = result.scalar()
            if manifest_id is not None:  # new here: record what it refers to
                references = [("config", manifest.config.digest)] if manifest.config else []
                references += [("layer", layer.digest) for layer in manifest.layers]
                references += [("manifest", child.digest) for child in manifest.manifests]
                if references:
                    await conn.execute(
                        insert(manifest_references),
                        [
                            {"manifest_id": manifest_id, "position": i, "kind": kind, "digest": d}
                            for i, (kind, d) in enumerate(references)
                        ],
                    )
            for tag in tag_names:
                await self._set_tag(conn, repo_id, tag, digest, stamp)

    async def _set_tag(
        self, conn: SQLConnection, repo_id: int, tag: str, digest: str, stamp: datetime
    ) -> None:
        statement = self.db.insert(tags).values(
            repository_id=repo_id, name=tag, manifest_digest=digest, updated_at=stamp
        )
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[tags.c.repository_id, tags.c.name],
                set_={"manifest_digest": digest, "updated_at": stamp},
            )
        )

    async def delete_manifest(self, repository: str, digest: str) -> bool:
        """Delete a manifest and every tag pointing at it."""
        async with self.db.write() as conn:
            repo_id = await self.repository_id(repository, conn)
            if repo_id is None:
                return False
            result = await conn.execute(
                delete(manifests).where(
                    manifests.c.repository_id == repo_id, manifests.c.digest == digest
                )
            )
            if not result.rowcount:
                return False
            await conn.execute(
                delete(tags).where(
                    tags.c.repository_id == repo_id, tags.c.manifest_digest == digest
                )
            )
            return True

    async def delete_tag(self, repository: str, tag: str) -> bool:
        async with self.db.write() as conn:
            repo_id = await self.repository_id(repository, conn)
            if repo_id is None:
                return False
            result = await conn.execute(
                delete(tags).where(tags.c.repository_id == repo_id, tags.c.name == tag)
            )
            return bool(result.rowcount)

    async def list_tags(self, repository: str, limit: int, last: str | None) -> list[str] | None:
        """Tags after `last` in byte order, or None when the repository is unknown."""
        async with self.db.read() as conn:
            repo_id = await self.repository_id(repository, conn)
            if repo_id is None:
                return None
            query = select(tags.c.name).where(tags.c.repository_id == repo_id)
            if last is not None:
                query = query.where(tags.c.name > last)
            query = query.order_by(tags.c.name).limit(limit)
            return list((await conn.execute(query)).scalars())

    async def referrers(
        self, repository: str, subject: str, artifact_type: str | None
    ) -> list[Descriptor]:
        """Descriptors of the manifests in `repository` whose subject is `subject`."""
        query = (
            select(
                manifests.c.digest,
                manifests.c.media_type,
                manifests.c.size,
                manifests.c.artifact_type,
                manifests.c.annotations,
            )
            .select_from(
                manifests.join(repositories, repositories.c.id == manifests.c.repository_id)
            )
            .where(repositories.c.name == repository, manifests.c.subject_digest == subject)
            .order_by(manifests.c.digest)
        )
        if artifact_type is not None:
            query = query.where(manifests.c.artifact_type == artifact_type)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            Descriptor(
                media_type=r[1],
                digest=r[0],
                size=r[2],
                artifact_type=r[3],
                annotations=json.loads(r[4]) if r[4] else {},
            )
            for r in rows
        ]
