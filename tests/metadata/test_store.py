"""`registry.metadata.store.MetadataStore` on a migrated database: SQLite, and PostgreSQL when
its server binaries are installed (the same tests for both, as for storage drivers)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import func, select

from registry.metadata.db import Database, upgrade_schema
from registry.metadata.store import MetadataStore, now
from registry.metadata.tables import blobs
from registry.oci import mediatypes as mt
from registry.oci.digest import Digest
from registry.oci.manifest import Manifest, parse_manifest

from support.postgres import PostgresServer


def digest(text: str) -> str:
    return str(Digest.of(text.encode()))


def migrate(url: str) -> None:
    """Alembic's environment calls asyncio.run: give it a thread without a running loop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(upgrade_schema, url).result()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (quicker than migrating each time)."""
    path = tmp_path_factory.mktemp("metadata") / "template.db"
    migrate(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database(postgres: PostgresServer) -> str:
    """One migrated PostgreSQL database for these tests, emptied before each."""
    url = postgres.create_database("store_tests")
    migrate(url)
    return url


async def _emptied_postgres(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("postgres_database")
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        names = await conn.fetch(
            "SELECT tablename FROM pg_tables"
            " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        listed = ", ".join(f'"{row[0]}"' for row in names)
        await conn.execute(f"TRUNCATE {listed} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MetadataStore]:
    if request.param == "sqlite":
        path = tmp_path / "registry.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite+aiosqlite:///{path}"
    else:
        url = await _emptied_postgres(request)
    db = Database(url, pool_size=2)
    yield MetadataStore(db)
    await db.dispose()


def utc(stamp: datetime) -> datetime:
    """SQLite hands back naive datetimes (in UTC); PostgreSQL aware ones."""
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp


def image(
    config: str = "config", layers: tuple[str, ...] = ("layer",), **fields: object
) -> tuple[bytes, Manifest]:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": digest(config), "size": 1},
        "layers": [{"mediaType": mt.OCI_LAYER, "digest": digest(x), "size": 1} for x in layers],
        **fields,
    }
    content = json.dumps(doc).encode()
    return content, parse_manifest(content)


async def put(store: MetadataStore, repo: str, tags: tuple[str, ...] = (), **kw: object) -> str:
    content, manifest = image(**kw)  # type: ignore[arg-type]
    manifest_digest = str(Digest.of(content))
    await store.put_manifest(repo, manifest_digest, content, manifest, list(tags))
    return manifest_digest


class TestRepositoriesAndBlobs:
    async def test_link_and_sizes(self, store: MetadataStore) -> None:
        assert await store.repository_id("a/b") is None
        await store.link_blob("a/b", digest("x"), 10)
        assert await store.repository_id("a/b") is not None
        assert await store.blob_size_in_repository("a/b", digest("x")) == 10
        assert await store.blob_size_in_repository("other", digest("x")) is None

    async def test_link_is_idempotent_and_shared(self, store: MetadataStore) -> None:
        for repo in ("r1", "r2", "r1"):
            await store.link_blob(repo, digest("x"), 10)
        assert await store.blob_size_in_repository("r2", digest("x")) == 10
        assert await store.missing_blobs("r1", [digest("x"), digest("y")]) == [digest("y")]

    async def test_concurrent_links_of_one_blob(self, store: MetadataStore) -> None:
        """Twenty pushes of one blob finishing at once: one blob row, twenty links."""
        uploads = [await store.create_upload(f"r{i}") for i in range(20)]
        await asyncio.gather(
            *(store.finish_upload(u.id, f"r{i}", digest("x"), 7) for i, u in enumerate(uploads))
        )
        for i in range(20):
            assert await store.blob_size_in_repository(f"r{i}", digest("x")) == 7
        async with store.db.read() as conn:
            count = (await conn.execute(select(func.count()).select_from(blobs))).scalar()
        assert count == 1

    async def test_unlink(self, store: MetadataStore) -> None:
        await store.link_blob("r1", digest("x"), 10)
        await store.link_blob("r2", digest("x"), 10)
        assert await store.unlink_blob("r1", digest("x"))
        assert not await store.unlink_blob("r1", digest("x"))
        assert not await store.unlink_blob("nope", digest("x"))
        assert await store.blob_size_in_repository("r1", digest("x")) is None
        assert await store.blob_size_in_repository("r2", digest("x")) == 10

    async def test_missing_blobs_keeps_order_and_drops_duplicates(
        self, store: MetadataStore
    ) -> None:
        await store.link_blob("r", digest("b"), 1)
        wanted = [digest("c"), digest("b"), digest("a"), digest("c")]
        assert await store.missing_blobs("r", wanted) == [digest("c"), digest("a")]
        assert await store.missing_blobs("r", []) == []
        assert await store.missing_blobs("unknown", [digest("b")]) == [digest("b")]

    async def test_list_repositories(self, store: MetadataStore) -> None:
        for name in ("b", "a/z", "a", "a-b", "c"):
            await store.link_blob(name, digest(name), 1)
        await store.create_upload("empty")  # a row without content is not listed
        assert await store.list_repositories(100, None) == ["a", "a-b", "a/z", "b", "c"]
        assert await store.list_repositories(2, None) == ["a", "a-b"]
        assert await store.list_repositories(2, "a-b") == ["a/z", "b"]
        assert await store.list_repositories(10, "c") == []


class TestUploads:
    async def test_lifecycle(self, store: MetadataStore) -> None:
        upload = await store.create_upload("r")
        assert len(upload.id) == 32 and upload.size == 0
        found = await store.get_upload("r", upload.id)
        assert found is not None
        assert (found.id, found.repository_id, found.size) == (upload.id, upload.repository_id, 0)
        assert utc(found.created_at) == upload.created_at
        assert await store.get_upload("other", upload.id) is None
        assert await store.advance_upload(upload.id, 0, 100)
        assert (await store.get_upload("r", upload.id)).size == 100  # type: ignore[union-attr]
        await store.delete_upload(upload.id)
        assert await store.get_upload("r", upload.id) is None

    async def test_advance_is_optimistic(self, store: MetadataStore) -> None:
        upload = await store.create_upload("r")
        assert await store.advance_upload(upload.id, 0, 10)
        assert not await store.advance_upload(upload.id, 0, 20)  # someone else moved it
        assert not await store.advance_upload("f" * 32, 0, 20)
        assert (await store.get_upload("r", upload.id)).size == 10  # type: ignore[union-attr]

    async def test_finish_records_links_and_drops_the_session(self, store: MetadataStore) -> None:
        upload = await store.create_upload("r")
        await store.finish_upload(upload.id, "r", digest("x"), 5)
        assert await store.get_upload("r", upload.id) is None
        assert await store.blob_size_in_repository("r", digest("x")) == 5

    async def test_ids_are_unique(self, store: MetadataStore) -> None:
        ids = {(await store.create_upload("r")).id for _ in range(20)}
        assert len(ids) == 20

    async def test_stale(self, store: MetadataStore) -> None:
        upload = await store.create_upload("r")
        assert await store.stale_uploads(now() - timedelta(hours=1)) == []
        assert await store.stale_uploads(now() + timedelta(seconds=1)) == [upload.id]


class TestManifests:
    async def test_put_and_get(self, store: MetadataStore) -> None:
        content, _ = image()
        manifest_digest = await put(store, "r", ("v1",))
        for reference in ("v1", manifest_digest):
            stored = await store.get_manifest("r", reference)
            assert stored is not None
            assert stored.content == content
            assert stored.digest == manifest_digest
            assert stored.media_type == mt.OCI_MANIFEST
        assert await store.get_manifest("r", "v2") is None
        assert await store.get_manifest("other", manifest_digest) is None

    async def test_tags_move_and_order(self, store: MetadataStore) -> None:
        first = await put(store, "r", ("latest", "b", "B", "a", "1"))
        second = await put(store, "r", ("latest",), config="other")
        assert (await store.get_manifest("r", "latest")).digest == second  # type: ignore[union-attr]
        assert (await store.get_manifest("r", "a")).digest == first  # type: ignore[union-attr]
        assert await store.list_tags("r", 100, None) == ["1", "B", "a", "b", "latest"]
        assert await store.list_tags("r", 2, "B") == ["a", "b"]
        assert await store.list_tags("r", 100, "latest") == []
        assert await store.list_tags("unknown", 100, None) is None

    async def test_put_is_idempotent(self, store: MetadataStore) -> None:
        d1 = await put(store, "r", ("a",))
        d2 = await put(store, "r", ("b",))
        assert d1 == d2
        assert await store.list_tags("r", 10, None) == ["a", "b"]

    async def test_missing_manifests(self, store: MetadataStore) -> None:
        present = await put(store, "r")
        absent = digest("absent")
        assert await store.missing_manifests("r", [present, absent, absent]) == [absent]
        assert await store.missing_manifests("other", [present]) == [present]
        assert await store.missing_manifests("r", []) == []

    async def test_delete_manifest_untags(self, store: MetadataStore) -> None:
        target = await put(store, "r", ("a", "b"))
        other = await put(store, "r", ("c",), config="other")
        assert await store.delete_manifest("r", target)
        assert not await store.delete_manifest("r", target)
        assert not await store.delete_manifest("unknown", target)
        assert await store.get_manifest("r", target) is None
        assert await store.get_manifest("r", "a") is None
        assert await store.list_tags("r", 10, None) == ["c"]
        assert (await store.get_manifest("r", "c")).digest == other  # type: ignore[union-attr]

    async def test_delete_tag_keeps_manifest(self, store: MetadataStore) -> None:
        target = await put(store, "r", ("a", "b"))
        assert await store.delete_tag("r", "a")
        assert not await store.delete_tag("r", "a")
        assert not await store.delete_tag("unknown", "a")
        assert await store.get_manifest("r", target) is not None
        assert await store.list_tags("r", 10, None) == ["b"]

    async def test_repush_after_delete(self, store: MetadataStore) -> None:
        target = await put(store, "r", ("a",))
        await store.delete_manifest("r", target)
        assert await put(store, "r", ("a",)) == target
        assert await store.get_manifest("r", "a") is not None


class TestReferrers:
    async def test_listing_and_filter(self, store: MetadataStore) -> None:
        subject = digest("subject")
        ref = {"mediaType": mt.OCI_MANIFEST, "digest": subject, "size": 1}
        sbom = await put(
            store, "r", subject=ref, artifactType="application/sbom", annotations={"k": "v"}
        )
        plain = await put(store, "r", config="c2", subject=ref)
        await put(store, "r", config="c3")  # no subject
        await put(store, "elsewhere", config="c4", subject=ref)
        found = await store.referrers("r", subject, None)
        assert sorted(r.digest for r in found) == sorted([sbom, plain])
        assert [r.digest for r in found] == sorted(r.digest for r in found)
        by_digest = {r.digest: r for r in found}
        assert by_digest[sbom].artifact_type == "application/sbom"
        assert by_digest[sbom].annotations == {"k": "v"}
        assert by_digest[plain].artifact_type == mt.OCI_CONFIG
        assert by_digest[plain].annotations == {}
        assert by_digest[plain].media_type == mt.OCI_MANIFEST
        filtered = await store.referrers("r", subject, "application/sbom")
        assert [r.digest for r in filtered] == [sbom]
        assert await store.referrers("r", digest("nothing"), None) == []


class TestBlobLocations:
    """Where a blob's bytes are when an upload left them in place (S3): the first upload to
    finish gives the row its location, later ones learn it (theirs are duplicates)."""

    async def test_the_first_finish_places_the_blob(self, store: MetadataStore) -> None:
        blob = digest("x")
        first, second = await store.create_upload("r1"), await store.create_upload("r2")
        a, b = await store.reserve(blob, 5), await store.reserve(blob, 5)
        assert a is not None and b is not None and a.location is None and b.location is None
        done = await store.finish_upload(first.id, "r1", blob, 5, a.incarnation, "uploaded/a/data")
        assert done and done.location == "uploaded/a/data"
        assert await store.blob_in_repository("r1", blob) == (5, "uploaded/a/data")
        done = await store.finish_upload(second.id, "r2", blob, 5, b.incarnation, "uploaded/b/data")
        assert done and done.location == "uploaded/a/data"  # the caller drops its own bytes
        assert await store.blob_in_repository("r2", blob) == (5, "uploaded/a/data")
        later = await store.reserve(blob, 5)
        assert later is not None and later.location == "uploaded/a/data"

    async def test_a_blob_moves_only_from_where_it_was_seen(self, store: MetadataStore) -> None:
        blob = digest("x")
        session = await store.create_upload("r")
        held = await store.reserve(blob, 5)
        assert held is not None
        await store.finish_upload(session.id, "r", blob, 5, held.incarnation, "uploaded/a/data")
        assert not await store.move_blob(blob, held.incarnation, "uploaded/z/data", "uploaded/b")
        assert not await store.move_blob(blob, "0" * 32, "uploaded/a/data", "uploaded/b")
        assert await store.move_blob(blob, held.incarnation, "uploaded/a/data", "uploaded/b")
        assert await store.blob_in_repository("r", blob) == (5, "uploaded/b")

    async def test_bytes_in_place_are_not_taken_after_the_session_ended(
        self, store: MetadataStore
    ) -> None:
        """An upload session that expired while its finish ran: its bytes are being deleted
        with it, so the blob must not be recorded there."""
        blob = digest("x")
        session = await store.create_upload("r")
        held = await store.reserve(blob, 5)
        assert held is not None
        await store.delete_upload(session.id)  # expiry
        done = await store.finish_upload(
            session.id, "r", blob, 5, held.incarnation, "uploaded/a/data"
        )
        assert not done
        assert await store.blob_in_repository("r", blob) is None
        again = await store.reserve(blob, 5)
        assert again is not None and again.location is None
