"""Engines for the metadata database, and schema migrations with Alembic.

SQLite serialises writers; to avoid "database is locked" errors when a read transaction
later wants to write, writes there go through a second engine whose transactions start
with `BEGIN IMMEDIATE`. On PostgreSQL one engine does both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


class Database:
    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        if self.dialect == "sqlite":
            _ensure_sqlite_folder(url)
            self._reader = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size)
            self._writer = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=60)
            _configure_sqlite(self._reader, immediate=False)
            _configure_sqlite(self._writer, immediate=True)
        else:
            self._reader = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
            self._writer = self._reader

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self._reader.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction, committed when the block ends without error."""
        async with self._writer.begin() as conn:
            yield conn

    async def dispose(self) -> None:
        await self._reader.dispose()
        if self._writer is not self._reader:
            await self._writer.dispose()


def _ensure_sqlite_folder(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: AsyncEngine, immediate: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def migrations_path() -> Path:
    return Path(str(resources.files("migrations")))


def upgrade_schema(url: str) -> None:
    """Bring the schema up to the newest migration (idempotent)."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    _ensure_sqlite_folder(url) if make_url(url).get_backend_name() == "sqlite" else None
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_path()))
    cfg.attributes["database_url"] = url
    command.upgrade(cfg, "head")


async def upgrade_schema_async(url: str) -> None:
    await asyncio.to_thread(upgrade_schema, url)
