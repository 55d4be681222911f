"""The Alembic migrations build exactly the schema in `registry/metadata/tables.py`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from registry.metadata.db import upgrade_schema
from registry.metadata.tables import metadata

from support.postgres import PostgresServer


def _differences(url: str) -> list[Any]:
    async def compare() -> list[Any]:
        engine = create_async_engine(url)
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
        await engine.dispose()
        return list(diff)

    return asyncio.run(compare())


def test_sqlite_schema_matches_the_tables(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    upgrade_schema(url)
    assert _differences(url) == []
    upgrade_schema(url)  # idempotent


def test_postgres_schema_matches_the_tables(postgres: PostgresServer) -> None:
    url = postgres.create_database("migrations_check")
    upgrade_schema(url)
    assert _differences(url) == []
