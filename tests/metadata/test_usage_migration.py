"""Migration 0008 counts what each namespace already stores, so that the kept usage of a
registry upgraded with content equals the usage summed from its manifests."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert, select

from registry.metadata import usage
from registry.metadata.db import Database, upgrade_schema
from registry.metadata.tables import (
    blobs,
    manifest_references,
    manifests,
    namespace_blobs,
    repositories,
)

from support.postgres import PostgresServer

BEFORE = "0007"  # the revision before lifecycle policies (garbage collection)


def _digest(n: int) -> str:
    return f"sha256:{n:064x}"


async def _fill(url: str) -> None:
    now = datetime.now(UTC)
    names = ["team/a", "team/b/c", "team", "other/x", "teamster/y"]
    db = Database(url)
    async with db.write() as conn:
        await conn.execute(
            insert(repositories),
            [{"id": i + 1, "name": n, "created_at": now} for i, n in enumerate(names)],
        )
        await conn.execute(
            insert(blobs),
            [
                {"digest": _digest(n), "size": 1000 * n, "created_at": now, "incarnation": "x"}
                for n in range(1, 8)
            ],
        )
        # (id, repository id, digest number, size, [(kind, digest number)])
        rows = [
            (1, 1, 101, 50, [("config", 1), ("layer", 2), ("layer", 3), ("layer", 3)]),
            (2, 2, 101, 50, [("config", 1), ("layer", 2), ("layer", 3)]),  # same, other repo
            (3, 2, 102, 60, [("config", 4), ("layer", 2)]),
            (4, 3, 103, 70, [("manifest", 101), ("manifest", 102)]),  # an index in "team"
            (5, 4, 101, 50, [("config", 1), ("layer", 2), ("layer", 3)]),  # another namespace
            (6, 5, 104, 80, [("config", 5), ("layer", 6)]),  # "teamster" is not "team"
        ]
        await conn.execute(
            insert(manifests),
            [
                {
                    "id": i, "repository_id": repo, "digest": _digest(d), "media_type": "x",
                    "size": size, "content": b"{}", "created_at": now,
                }
                for i, repo, d, size, _refs in rows
            ],
        )  # fmt: skip
        await conn.execute(
            insert(manifest_references),
            [
                {"manifest_id": i, "position": p, "kind": kind, "digest": _digest(d)}
                for i, _repo, _d, _size, refs in rows
                for p, (kind, d) in enumerate(refs)
            ],
        )
    await db.dispose()


async def _check(url: str) -> None:
    db = Database(url)
    try:
        async with db.read() as conn:
            expected = {
                "team": 1000 + 2000 + 3000 + 4000 + 50 + 60 + 70,
                "other": 1000 + 2000 + 3000 + 50,
                "teamster": 5000 + 6000 + 80,
            }
            for ns, total in expected.items():
                assert await usage.usage(conn, ns) == total, ns
                assert await usage.measure(conn, ns) == total, ns
            refs = dict(
                (
                    await conn.execute(
                        select(namespace_blobs.c.digest, namespace_blobs.c.refs).where(
                            namespace_blobs.c.namespace == "team"
                        )
                    )
                ).all()
            )
            assert refs[_digest(2)] == 3 and refs[_digest(3)] == 2 and refs[_digest(101)] == 2
    finally:
        await db.dispose()


def test_sqlite_upgrade_counts_existing_usage(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade_schema(url, BEFORE)
    asyncio.run(_fill(url))
    upgrade_schema(url)
    asyncio.run(_check(url))


def test_postgres_upgrade_counts_existing_usage(postgres: PostgresServer) -> None:
    url = postgres.create_database("usage_backfill")
    upgrade_schema(url, BEFORE)
    asyncio.run(_fill(url))
    upgrade_schema(url)
    asyncio.run(_check(url))
