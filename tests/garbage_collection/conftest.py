"""In-process garbage collection tests: a migrated database (SQLite, and PostgreSQL when its
binaries are installed), the metadata store, a filesystem BlobStore, and a collector, all
the real ones. Pushes go through the same steps the API takes (reserve, place, finish)."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text, update

from registry.config import GCConfig
from registry.gc.collector import Collector
from registry.metadata.db import Database, upgrade_schema
from registry.metadata.gcstore import GCStore
from registry.metadata.store import MetadataStore, now
from registry.metadata.tables import gc_blob_reviews, gc_manifest_reviews
from registry.oci import mediatypes as mt
from registry.oci.digest import Digest
from registry.oci.manifest import parse_manifest
from registry.storage import layout
from registry.storage.blobstore import BlobStore
from registry.storage.filesystem import FilesystemDriver

from support.postgres import PostgresServer


def migrate(url: str) -> None:
    with ThreadPoolExecutor(1) as pool:  # alembic's env calls asyncio.run: not on this loop
        pool.submit(upgrade_schema, url).result()


@pytest.fixture(scope="session")
def gc_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gc-metadata") / "template.db"
    migrate(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def gc_postgres_database(postgres: PostgresServer) -> str:
    url = postgres.create_database("gc_tests")
    migrate(url)
    return url


async def _emptied(url: str) -> str:
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


@dataclass
class Stack:
    db: Database
    metadata: MetadataStore
    gc: GCStore
    blobs: BlobStore
    root: Path
    settings: GCConfig = field(default_factory=GCConfig)

    def collector(self, **settings: Any) -> Collector:
        values = {**vars(self.settings), **settings}
        return Collector(self.gc, self.blobs, GCConfig(**values), upload_expiry_seconds=3600)

    def path(self, digest: str) -> Path:
        return self.root / layout.blob_key(Digest.parse(digest))

    def stored(self, digest: str) -> bool:
        return self.path(digest).exists()

    async def upload(self, repository: str, data: bytes) -> str:
        """A blob pushed as the API does it: verify, reserve, place, finish."""
        digest = Digest.of(data)
        session = await self.metadata.create_upload(repository)
        await self.blobs.verify_data(data, digest)
        incarnation = await self.metadata.reserve_blob(str(digest), len(data))
        assert incarnation is not None
        await self.blobs.place_data(data, digest)
        assert await self.metadata.finish_upload(
            session.id, repository, str(digest), len(data), incarnation
        )
        return str(digest)

    async def push(
        self, repository: str, tag: str | None, layers: list[bytes], config: bytes = b"{}"
    ) -> str:
        """An image: its blobs, then its manifest (by tag, or by digest when `tag` is None)."""
        descriptors = [
            {"mediaType": mt.OCI_LAYER, "digest": await self.upload(repository, layer),
             "size": len(layer)}
            for layer in layers
        ]  # fmt: skip
        config_digest = await self.upload(repository, config)
        doc = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": descriptors,
        }
        return await self.put_manifest(repository, tag, json.dumps(doc).encode())

    async def put_manifest(self, repository: str, tag: str | None, content: bytes) -> str:
        manifest = parse_manifest(content)
        digest = str(Digest.of(content))
        blobs = [manifest.config.digest] if manifest.config else []
        blobs += [layer.digest for layer in manifest.layers]
        children = [child.digest for child in manifest.manifests]
        missing = await self.metadata.put_manifest(
            repository, digest, content, manifest, [tag] if tag else [],
            required_blobs=blobs, required_manifests=children,
        )  # fmt: skip
        assert missing is None, missing
        return digest

    async def age(self, seconds: float) -> None:
        """Date every review entry `seconds` back: a grace period passing, without waiting."""
        at = now() - timedelta(seconds=seconds)
        async with self.db.write() as conn:
            for table in (gc_blob_reviews, gc_manifest_reviews):
                await conn.execute(update(table).values(event_at=at))

    async def count(self, table: str) -> int:
        async with self.db.read() as conn:
            return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())

    async def rows(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        async with self.db.read() as conn:
            return [tuple(r) for r in await conn.execute(text(query), params)]


@pytest.fixture(params=["sqlite", "postgresql"])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    if request.param == "sqlite":
        path = tmp_path / "registry.db"
        shutil.copyfile(request.getfixturevalue("gc_sqlite_template"), path)
        url = f"sqlite+aiosqlite:///{path}"
    else:
        url = await _emptied(request.getfixturevalue("gc_postgres_database"))
    db = Database(url, pool_size=4)
    root = tmp_path / "storage"
    blobs = BlobStore(FilesystemDriver(root, fsync=False))
    yield Stack(db, MetadataStore(db), GCStore(db), blobs, root)
    await db.dispose()
