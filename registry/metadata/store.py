"""Every SQL statement the registry issues, behind methods named for what they answer.

Written for both SQLite and PostgreSQL: no dialect quirks beyond `INSERT ... ON CONFLICT`,
which both spell the same way through SQLAlchemy's dialect inserts.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, delete, exists, func, insert, or_, select, update

from registry.metadata import usage
from registry.metadata.db import Database, SQLConnection
from registry.metadata.reviews import (
    Reviews,
    blob_state,
    lock_live_blobs,
    lock_manifests,
    new_incarnation,
)
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
    hash_state: bytes | None = None
    storage_state: str | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """A blob row reserved for an upload's bytes (`reserve`)."""

    incarnation: str
    location: str | None  # where the row's bytes are, when not at the digest's key


@dataclass(frozen=True, slots=True)
class Finished:
    """What `finish_upload` did: true when the blob was linked into the repository."""

    linked: bool
    location: str | None = None  # the row's location then: the blob's bytes

    def __bool__(self) -> bool:
        return self.linked


class _SessionGone(Exception):
    """The upload session ended (expired) before its finish committed: roll it back."""


class PushCheck(Protocol):
    """What a manifest push must pass inside its own transaction, before anything is
    stored (registry/policies/service.py: immutable tags, quotas); it raises to refuse."""

    async def __call__(self, conn: SQLConnection, repository_id: int) -> None: ...


@dataclass(frozen=True, slots=True)
class MissingReferences:
    """What a manifest names that its repository does not hold (nothing was stored)."""

    blobs: list[str]
    manifests: list[str]


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    content: bytes


# The statements on the hot paths (every pull, push and upload), built once with named
# parameters: building and keying a statement costs SQLAlchemy several times what running it
# on SQLite does, and a statement object caches its own key.
_LINKS_OF_REPOSITORY = repository_blobs.join(
    repositories, repositories.c.id == repository_blobs.c.repository_id
)
_REPOSITORY_ID = select(repositories.c.id).where(repositories.c.name == bindparam("name"))
_BLOB_IN_REPOSITORY = (
    select(blobs.c.size, blobs.c.location)
    .select_from(_LINKS_OF_REPOSITORY.join(blobs, blobs.c.digest == repository_blobs.c.digest))
    .where(
        repositories.c.name == bindparam("repository"),
        repository_blobs.c.digest == bindparam("digest"),
    )
)
_BLOB_LOCATION = select(blobs.c.location).where(blobs.c.digest == bindparam("digest"))
_SET_BLOB_LOCATION = (
    update(blobs).where(blobs.c.digest == bindparam("blob")).values(location=bindparam("to"))
)
_UPLOAD_COLUMNS = (
    uploads.c.id,
    uploads.c.repository_id,
    uploads.c.size,
    uploads.c.created_at,
    uploads.c.hash_state,
    uploads.c.storage_state,
)
_UPLOAD = (
    select(*_UPLOAD_COLUMNS)
    .select_from(uploads.join(repositories, repositories.c.id == uploads.c.repository_id))
    .where(uploads.c.id == bindparam("upload"), repositories.c.name == bindparam("repository"))
)
_CLAIM_UPLOAD = (
    update(uploads)
    .where(
        uploads.c.id == bindparam("upload"),
        or_(
            uploads.c.writer.is_(None),
            uploads.c.writer == bindparam("claimant"),
            uploads.c.writer_until < bindparam("stamp"),
        ),
    )
    .values(writer=bindparam("claimant"), writer_until=bindparam("until"))
    .returning(*_UPLOAD_COLUMNS)
)
_ADVANCE_UPLOAD = (
    update(uploads)
    .where(uploads.c.id == bindparam("upload"), uploads.c.size == bindparam("old_size"))
    .values(
        size=bindparam("new_size"),
        updated_at=bindparam("stamp"),
        hash_state=bindparam("hash_state"),
        storage_state=bindparam("storage_state"),
    )
)
_ADVANCE_CLAIMED_UPLOAD = _ADVANCE_UPLOAD.where(uploads.c.writer == bindparam("claimant"))
# The same, ending the claim in that one write (a PATCH done: one transaction less each).
_ADVANCE_AND_RELEASE = _ADVANCE_CLAIMED_UPLOAD.values(writer=None, writer_until=None)
_INSERT_UPLOAD = insert(uploads)
_DELETE_UPLOAD = delete(uploads).where(uploads.c.id == bindparam("upload"))
_BLOB_TOTALS = select(func.count(), func.coalesce(func.sum(blobs.c.size), 0)).select_from(blobs)
_UPLOAD_COUNT = select(func.count()).select_from(uploads)
_RELEASE_UPLOAD = (
    update(uploads)
    .where(uploads.c.id == bindparam("upload"), uploads.c.writer == bindparam("claimant"))
    .values(writer=None, writer_until=None)
)
_MANIFEST_COLUMNS = (manifests.c.digest, manifests.c.media_type, manifests.c.content)
_MANIFESTS_OF_REPOSITORY = manifests.join(
    repositories, repositories.c.id == manifests.c.repository_id
)
_MANIFEST_BY_DIGEST = (
    select(*_MANIFEST_COLUMNS)
    .select_from(_MANIFESTS_OF_REPOSITORY)
    .where(repositories.c.name == bindparam("repository"), manifests.c.digest == bindparam("ref"))
)
_MANIFEST_BY_TAG = (
    select(*_MANIFEST_COLUMNS)
    .select_from(
        _MANIFESTS_OF_REPOSITORY.join(
            tags,
            and_(
                tags.c.repository_id == manifests.c.repository_id,
                tags.c.manifest_digest == manifests.c.digest,
            ),
        )
    )
    .where(repositories.c.name == bindparam("repository"), tags.c.name == bindparam("ref"))
)


def _digests_present(digest: Any, joined: Any) -> Any:
    """Which of the `digests` parameter `digest` (a column of `joined`) holds in the
    `repository` parameter."""
    return (
        select(digest)
        .select_from(joined)
        .where(
            repositories.c.name == bindparam("repository"),
            digest.in_(bindparam("digests", expanding=True)),
        )
    )


_BLOBS_PRESENT = _digests_present(repository_blobs.c.digest, _LINKS_OF_REPOSITORY)
_MANIFESTS_PRESENT = _digests_present(manifests.c.digest, _MANIFESTS_OF_REPOSITORY)


class MetadataStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # INSERTs with ON CONFLICT are the dialect's own; their values come at execution.
        self._insert_repository = db.insert_ignore(repositories)
        self._insert_blob = db.insert_ignore(blobs)
        self._insert_link = db.insert_ignore(repository_blobs)
        self._insert_manifest = db.insert_ignore(manifests).returning(manifests.c.id)
        self.reviews = Reviews(db)
        upsert = db.insert(tags)
        self._upsert_tag = upsert.on_conflict_do_update(
            index_elements=[tags.c.repository_id, tags.c.name],
            set_={
                "manifest_digest": upsert.excluded.manifest_digest,
                "updated_at": upsert.excluded.updated_at,
            },
        )

    # Repositories -------------------------------------------------------------------------

    async def repository_id(self, name: str, conn: SQLConnection | None = None) -> int | None:
        if conn is not None:
            return (await conn.execute(_REPOSITORY_ID, {"name": name})).scalar()
        async with self.db.read() as c:
            return (await c.execute(_REPOSITORY_ID, {"name": name})).scalar()

    async def ensure_repository(self, conn: SQLConnection, name: str) -> int:
        repo_id = await self.repository_id(name, conn)
        if repo_id is not None:  # nearly always: one statement, not two
            return repo_id
        await conn.execute(self._insert_repository, {"name": name, "created_at": now()})
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
        found = await self.blob_in_repository(repository, digest)
        return found[0] if found is not None else None

    async def blob_in_repository(
        self, repository: str, digest: str
    ) -> tuple[int, str | None] | None:
        """The blob's size and location (None: at the digest's key) when `repository` may
        serve it, else None."""
        params = {"repository": repository, "digest": digest}
        async with self.db.read() as conn:
            row = (await conn.execute(_BLOB_IN_REPOSITORY, params)).first()
        return (int(row[0]), row[1]) if row is not None else None

    async def repositories_with_blob(self, digest: str, limit: int = 1000) -> list[str]:
        """Names of repositories that may serve the blob (to check a mount without `from`)."""
        query = (
            select(repositories.c.name)
            .select_from(_LINKS_OF_REPOSITORY)
            .where(repository_blobs.c.digest == digest)
            .order_by(repositories.c.name)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return list((await conn.execute(query)).scalars())

    async def link_blob(self, repository: str, digest: str, size: int) -> bool:
        """Record the blob (once, whoever pushed it) and let `repository` serve it; its bytes
        must be in place already. False when a collector is deleting the blob."""
        async with self.db.write() as conn:
            return await self._record_and_link(conn, repository, digest, size)

    async def _record_and_link(
        self, conn: SQLConnection, repository: str, digest: str, size: int
    ) -> bool:
        repo_id = await self.ensure_repository(conn, repository)
        stamp = now()
        state = await blob_state(conn, digest, exclusive=False)
        if state is None:
            values = {"digest": digest, "size": size, "incarnation": new_incarnation()}
            await conn.execute(self._insert_blob, {**values, "created_at": stamp})
        elif state[1] is not None:
            return False
        await conn.execute(
            self._insert_link, {"repository_id": repo_id, "digest": digest, "created_at": stamp}
        )
        await self.reviews.queue_blobs(conn, [digest], stamp)
        return True

    async def mount_blob(self, repository: str, digest: str) -> bool:
        """Let `repository` serve a blob that is stored and live (a cross-repository mount);
        False when there is no such blob, or a collector is deleting it. The grace period
        starts again: the client is about to push a manifest that names it."""
        async with self.db.write() as conn:
            state = await blob_state(conn, digest, exclusive=False)
            if state is None or state[1] is not None:
                return False
            repo_id = await self.ensure_repository(conn, repository)
            stamp = now()
            await conn.execute(
                self._insert_link, {"repository_id": repo_id, "digest": digest, "created_at": stamp}
            )
            await self.reviews.queue_blobs(conn, [digest], stamp)
            return True

    async def unlink_blob(self, repository: str, digest: str) -> bool:
        async with self.db.write() as conn:
            repo_id = await self.repository_id(repository, conn)
            if repo_id is None:
                return False
            await blob_state(conn, digest, exclusive=False)  # the lock order of the collector
            result = await conn.execute(
                delete(repository_blobs).where(
                    repository_blobs.c.repository_id == repo_id, repository_blobs.c.digest == digest
                )
            )
            if result.rowcount:
                await self.reviews.queue_blobs(conn, [digest], now())
            return bool(result.rowcount)

    # Uploads ------------------------------------------------------------------------------

    async def create_upload(self, repository: str) -> Upload:
        upload_id = secrets.token_hex(16)
        stamp = now()
        async with self.db.write() as conn:
            repo_id = await self.ensure_repository(conn, repository)
            values = {"id": upload_id, "repository_id": repo_id, "size": 0}
            await conn.execute(_INSERT_UPLOAD, {**values, "created_at": stamp, "updated_at": stamp})
        return Upload(upload_id, repo_id, 0, stamp)

    async def get_upload(self, repository: str, upload_id: str) -> Upload | None:
        params = {"upload": upload_id, "repository": repository}
        async with self.db.read() as conn:
            row = (await conn.execute(_UPLOAD, params)).first()
        return Upload(*row) if row else None

    async def claim_upload(self, upload_id: str, writer: str, seconds: float) -> Upload | None:
        """Make `writer` the upload's only writer for `seconds`, unless another holds it;
        the session as it is once held, or None (held by another, or gone)."""
        stamp = now()
        params = {
            "upload": upload_id,
            "claimant": writer,
            "stamp": stamp,
            "until": stamp + timedelta(seconds=seconds),
        }
        async with self.db.write() as conn:
            row = (await conn.execute(_CLAIM_UPLOAD, params)).first()
        return Upload(*row) if row else None

    async def release_upload(self, upload_id: str, writer: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(_RELEASE_UPLOAD, {"upload": upload_id, "claimant": writer})

    async def advance_upload(
        self,
        upload_id: str,
        old_size: int,
        new_size: int,
        writer: str | None = None,
        hash_state: bytes | None = None,
        storage_state: str | None = None,
        release: bool = False,
    ) -> bool:
        """Move the upload's recorded size from `old_size`, with the states that go with the
        new size; False if someone else moved it (or, given a `writer`, if that writer no
        longer holds the upload). With `release`, the writer's claim ends with it."""
        params: dict[str, Any] = {
            "upload": upload_id,
            "old_size": old_size,
            "new_size": new_size,
            "stamp": now(),
            "hash_state": hash_state,
            "storage_state": storage_state,
        }
        statement = _ADVANCE_UPLOAD
        if writer is not None:
            statement = _ADVANCE_AND_RELEASE if release else _ADVANCE_CLAIMED_UPLOAD
            params["claimant"] = writer
        async with self.db.write() as conn:
            return bool((await conn.execute(statement, params)).rowcount)

    async def delete_upload(self, upload_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(_DELETE_UPLOAD, {"upload": upload_id})

    async def reserve_blob(self, digest: str, size: int) -> str | None:
        """`reserve`, for callers that need only the incarnation."""
        reservation = await self.reserve(digest, size)
        return reservation.incarnation if reservation is not None else None

    async def reserve(self, digest: str, size: int) -> Reservation | None:
        """Before an upload's verified bytes go to the blob's key: make sure no collector can
        delete that key until the grace period has passed, and return the blob row's
        incarnation for `finish_upload`, with where its bytes are if it has some. None while
        a collector is deleting the blob's bytes (the caller waits and tries again). A new
        row stays invisible (no repository links it) until `finish_upload`."""
        stamp = now()
        async with self.db.write() as conn:
            state = await blob_state(conn, digest)
            if state is None:
                values = {"digest": digest, "size": size, "incarnation": new_incarnation()}
                await conn.execute(self._insert_blob, {**values, "created_at": stamp})
                # Ours, or the row of a concurrent upload that inserted first.
                state = await blob_state(conn, digest)
            if state is None or state[1] is not None:
                return None
            await self.reviews.queue_blobs(conn, [digest], stamp)
            location = (await conn.execute(_BLOB_LOCATION, {"digest": digest})).scalar()
            return Reservation(state[0], location)

    async def finish_upload(
        self,
        upload_id: str,
        repository: str,
        digest: str,
        size: int,
        incarnation: str | None = None,
        location: str | None = None,
    ) -> Finished:
        """In one transaction: record the blob, link it, drop the upload session.

        Given the `incarnation` that `reserve` returned, only if the blob row is still that
        one: not linked (nothing done) when it was collected since, so that the bytes the
        caller moved may have gone with it. Given the `location` of the bytes the upload
        left in place, the row takes it unless it has one already (then the result's
        location differs: those bytes are the blob's, the caller's a duplicate); and only
        while the session lasts (an expired one's bytes are being deleted)."""
        try:
            async with self.db.write() as conn:
                if incarnation is None:
                    linked = await self._record_and_link(conn, repository, digest, size)
                    if not linked:
                        return Finished(False)
                    current = None
                else:
                    # (reserve queued the review already: the grace period runs from there)
                    if await blob_state(conn, digest) != (incarnation, None):
                        return Finished(False)
                    current = (await conn.execute(_BLOB_LOCATION, {"digest": digest})).scalar()
                    if location is not None and current is None:
                        await conn.execute(_SET_BLOB_LOCATION, {"blob": digest, "to": location})
                        current = location
                    repo_id = await self.ensure_repository(conn, repository)
                    link = {"repository_id": repo_id, "digest": digest, "created_at": now()}
                    await conn.execute(self._insert_link, link)
                ended = await conn.execute(_DELETE_UPLOAD, {"upload": upload_id})
                if location is not None and ended.rowcount != 1:
                    raise _SessionGone
                return Finished(True, current)
        except _SessionGone:
            return Finished(False)

    async def move_blob(
        self, digest: str, incarnation: str, old: str | None, new: str | None
    ) -> bool:
        """Point a live blob row at bytes in `new` instead of `old` (missing or damaged there),
        unless it changed meanwhile."""
        async with self.db.write() as conn:
            if await blob_state(conn, digest) != (incarnation, None):
                return False
            if (await conn.execute(_BLOB_LOCATION, {"digest": digest})).scalar() != old:
                return False
            await conn.execute(_SET_BLOB_LOCATION, {"blob": digest, "to": new})
            return True

    async def stale_uploads(self, older_than: datetime) -> list[str]:
        async with self.db.read() as conn:
            query = select(uploads.c.id).where(uploads.c.updated_at < older_than)
            return list((await conn.execute(query)).scalars())

    async def totals(self) -> tuple[int, int, int]:
        """(blobs stored, their bytes, upload sessions open), for the metrics."""
        async with self.db.read() as conn:
            count, size = (await conn.execute(_BLOB_TOTALS)).one()
            sessions = (await conn.execute(_UPLOAD_COUNT)).scalar_one()
        return int(count), int(size or 0), int(sessions)

    # Manifests and tags -------------------------------------------------------------------

    async def get_manifest(self, repository: str, reference: str) -> StoredManifest | None:
        """A manifest by digest (when `reference` has a colon) or by tag."""
        query = _MANIFEST_BY_DIGEST if ":" in reference else _MANIFEST_BY_TAG
        async with self.db.read() as conn:
            row = (await conn.execute(query, {"repository": repository, "ref": reference})).first()
        return StoredManifest(row[0], row[1], bytes(row[2])) if row else None

    async def missing_blobs(self, repository: str, digests: Sequence[str]) -> list[str]:
        return await self._missing(_BLOBS_PRESENT, repository, digests)

    async def missing_manifests(self, repository: str, digests: Sequence[str]) -> list[str]:
        return await self._missing(_MANIFESTS_PRESENT, repository, digests)

    async def _missing(self, present: Any, repository: str, digests: Sequence[str]) -> list[str]:
        """Those of `digests` that `present` does not find in `repository`, in order, once."""
        if not digests:
            return []
        wanted = list(dict.fromkeys(digests))
        async with self.db.read() as conn:
            params = {"repository": repository, "digests": wanted}
            found = set((await conn.execute(present, params)).scalars())
        return [d for d in wanted if d not in found]

    async def put_manifest(
        self,
        repository: str,
        digest: str,
        content: bytes,
        manifest: Manifest,
        tag_names: Sequence[str],
        *,
        required_blobs: Sequence[str] = (),
        required_manifests: Sequence[str] = (),
        check: PushCheck | None = None,
    ) -> MissingReferences | None:
        """Store the manifest (idempotent per repository and digest) and point `tag_names` at it.

        `required_blobs` and `required_manifests` must be in the repository (and not being
        collected): they are checked, and share-locked, in the same transaction as the
        manifest is stored, so a collector cannot take them in between. What is missing is
        returned, and then nothing was stored. `check` (lifecycle policies) runs once they
        are all there, before anything is stored, and raises to refuse."""
        stamp = now()
        subject = manifest.subject.digest if manifest.subject else None
        async with self.db.write() as conn:
            repo_id = await self.repository_id(repository, conn)
            if repo_id is None:
                if required_blobs or required_manifests:  # (no empty repository left behind)
                    return MissingReferences(
                        list(dict.fromkeys(required_blobs)), list(dict.fromkeys(required_manifests))
                    )
                repo_id = await self.ensure_repository(conn, repository)
            found = await lock_live_blobs(conn, repo_id, required_blobs)
            missing_blobs = [d for d in dict.fromkeys(required_blobs) if d not in found]
            # The children, the subject (a kept referrer keeps it) and the manifest itself.
            wanted = [*required_manifests, digest, *([subject] if subject else [])]
            found = await lock_manifests(conn, repo_id, wanted)
            missing_manifests = [d for d in dict.fromkeys(required_manifests) if d not in found]
            if missing_blobs or missing_manifests:
                return MissingReferences(missing_blobs, missing_manifests)
            if check is not None:
                await check(conn, repo_id)
            if digest not in found:
                await self._insert_manifest_row(
                    conn, repository, repo_id, digest, content, manifest, stamp
                )
            await self._set_tags(conn, repo_id, tag_names, digest, stamp)
            if not tag_names:  # untagged (so far): its grace period starts again
                await self.reviews.queue_manifests(conn, repo_id, [digest], stamp)
        return None

    async def _insert_manifest_row(
        self,
        conn: SQLConnection,
        repository: str,
        repo_id: int,
        digest: str,
        content: bytes,
        manifest: Manifest,
        stamp: datetime,
    ) -> None:
        """Insert the manifest and what it refers to; or, when a concurrent push inserted it
        first, share-lock that one."""
        values = {
            "repository_id": repo_id,
            "digest": digest,
            "media_type": manifest.media_type,
            "artifact_type": manifest.referrer_artifact_type,
            "subject_digest": manifest.subject.digest if manifest.subject else None,
            "annotations": json.dumps(manifest.annotations) if manifest.annotations else None,
            "size": len(content),
            "content": content,
            "created_at": stamp,
        }
        for _attempt in range(3):
            manifest_id = (await conn.execute(self._insert_manifest, values)).scalar()
            if manifest_id is None:  # a concurrent push stored it: rely on that one
                if await lock_manifests(conn, repo_id, [digest]):
                    return
                continue  # and it was deleted since: insert again
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
            blob_digests = [d for kind, d in references if kind != "manifest"]
            await usage.add_manifest(conn, repository, digest, len(content), blob_digests)
            return
        raise RuntimeError(f"manifest {digest} kept appearing and vanishing")

    async def _set_tags(
        self,
        conn: SQLConnection,
        repo_id: int,
        tag_names: Sequence[str],
        digest: str,
        stamp: datetime,
    ) -> None:
        if not tag_names:
            return
        moved = select(tags.c.manifest_digest).where(
            tags.c.repository_id == repo_id,
            tags.c.name.in_(tag_names),
            tags.c.manifest_digest != digest,
        )
        previous = set((await conn.execute(moved)).scalars())
        for tag in tag_names:
            await self._set_tag(conn, repo_id, tag, digest, stamp)
        # A manifest a tag moved away from may be untagged now.
        await self.reviews.queue_manifests(conn, repo_id, previous, stamp)

    async def _set_tag(
        self, conn: SQLConnection, repo_id: int, tag: str, digest: str, stamp: datetime
    ) -> None:
        values = {"repository_id": repo_id, "name": tag, "manifest_digest": digest}
        await conn.execute(self._upsert_tag, {**values, "updated_at": stamp})

    async def delete_manifest(
        self,
        repository: str,
        digest: str,
        guard: Callable[[list[str]], None] | None = None,
    ) -> bool:
        """Delete a manifest and every tag pointing at it; what it referred to is queued for
        garbage collection. `guard`, given those tags once the manifest's row is locked, may
        raise to refuse (immutable tags): nothing is deleted then."""
        stamp = now()
        async with self.db.write() as conn:
            repo_id = await self.repository_id(repository, conn)
            if repo_id is None:
                return False
            target = (
                await conn.execute(
                    select(manifests.c.id, manifests.c.subject_digest)
                    .where(manifests.c.repository_id == repo_id, manifests.c.digest == digest)
                    .with_for_update()
                )
            ).first()
            if target is None:
                return False
            if guard is not None:
                at_digest = (
                    select(tags.c.name)
                    .where(tags.c.repository_id == repo_id, tags.c.manifest_digest == digest)
                    .order_by(tags.c.name)
                )
                guard(list((await conn.execute(at_digest)).scalars()))
            references = (
                await conn.execute(
                    select(manifest_references.c.kind, manifest_references.c.digest).where(
                        manifest_references.c.manifest_id == target[0]
                    )
                )
            ).all()
            referrers = await conn.execute(
                select(manifests.c.digest).where(
                    manifests.c.repository_id == repo_id, manifests.c.subject_digest == digest
                )
            )
            related = [d for kind, d in references if kind == "manifest"]
            related += [target[1]] if target[1] else []  # the subject of a deleted referrer
            related += referrers.scalars()
            # (the namespace's turn after the row lock: the order of pushes and collections)
            await usage.remove_manifests(conn, [target[0]])
            await conn.execute(delete(manifests).where(manifests.c.id == target[0]))
            await conn.execute(
                delete(tags).where(
                    tags.c.repository_id == repo_id, tags.c.manifest_digest == digest
                )
            )
            # Manifest entries before blob entries, in every transaction (no lock cycles).
            await self.reviews.queue_manifests(conn, repo_id, related, stamp)
            blob_digests = [d for kind, d in references if kind != "manifest"]
            await self.reviews.queue_blobs(conn, blob_digests, stamp)
            return True

    async def delete_tag(self, repository: str, tag: str) -> bool:
        async with self.db.write() as conn:
            repo_id = await self.repository_id(repository, conn)
            if repo_id is None:
                return False
            untagged = (
                await conn.execute(
                    delete(tags)
                    .where(tags.c.repository_id == repo_id, tags.c.name == tag)
                    .returning(tags.c.manifest_digest)
                )
            ).scalar()
            if untagged is None:
                return False
            await self.reviews.queue_manifests(conn, repo_id, [untagged], now())
            return True

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
