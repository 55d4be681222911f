"""The metadata database: connections for reads and for write transactions, and migrations.

On PostgreSQL both go through one async engine (asyncpg), a round trip per statement.

SQLite is a file in this process, so a query is a function call of tens of microseconds:
cheaper than handing it to a worker thread, which is what an async driver does for every
step of every query (and under load each hop waits for the GIL). Statements therefore run
directly on the event loop, on two connections: one for reads, one for writes, whose
transactions start with `BEGIN IMMEDIATE` so that a transaction never has to upgrade its
lock halfway. A block never awaits anything but its own statements, so blocks cannot
interleave; a lock per connection guards that all the same. WAL mode keeps readers and the
writer (of this or another worker process) out of each other's way.

A full disk is told apart here, once for both databases: SQLite's SQLITE_FULL and
PostgreSQL's SQLSTATE 53100 (disk_full) become `DiskFull`, which the API answers with 503.
The transaction was rolled back, so nothing of it was kept.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, overload

from sqlalchemy import create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, CursorResult, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.base import Executable
from sqlalchemy.util.typing import TupleAny

from registry.errors import DiskFull
from registry.filemodes import FILE_MODE, make_private_folder, sqlite_files
from registry.metadata.checkpoint import FALLBACK_PAGES, Checkpointer

if TYPE_CHECKING:
    from sqlalchemy.sql.selectable import TypedReturnsRows


_Ts = TypeVarTuple("_Ts")
_T = TypeVar("_T")


class _DirectConnection:
    """A synchronous SQLAlchemy connection behind an awaitable `execute`, like AsyncConnection's."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @overload
    async def execute(
        self, statement: TypedReturnsRows[*_Ts], parameters: Any = None, /
    ) -> CursorResult[*_Ts]: ...

    @overload
    async def execute(
        self, statement: Executable, parameters: Any = None, /
    ) -> CursorResult[*TupleAny]: ...

    async def execute(
        self, statement: Executable, parameters: Any = None, /
    ) -> CursorResult[*TupleAny]:
        return self._conn.execute(statement, parameters)


# What the metadata modules get in a read or write block: they only `await conn.execute(...)`.
SQLConnection = AsyncConnection | _DirectConnection


class _SQLiteSide:
    """One SQLite connection on the event loop's thread, and the lock that keeps it to one
    block at a time."""

    def __init__(self, url: str, immediate: bool) -> None:
        sync_url = make_url(url).set(drivername="sqlite")
        self.engine: Engine = create_engine(
            sync_url, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
        _configure_sqlite(self.engine, immediate)
        self.lock = asyncio.Lock()
        self._conn: Connection | None = None

    @contextmanager
    def transaction(self) -> Iterator[_DirectConnection]:
        if self._conn is None:
            self._conn = self.engine.connect()
        with self._conn.begin():
            yield _DirectConnection(self._conn)

    def dispose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.engine.dispose()


class Database:
    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        self._checkpointer: Checkpointer | None = None
        if self.dialect == "sqlite":
            _ensure_sqlite_folder(url)
            self._sqlite_reader = _SQLiteSide(url, immediate=False)
            self._sqlite_writer = _SQLiteSide(url, immediate=True)
            files = sqlite_files(url)
            if files:  # (checkpoints off the event loop: checkpoint.py)
                self._checkpointer = Checkpointer(files[0])
                self._checkpointer.start()
        else:
            self._engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[SQLConnection]:
        """A read-only block (its statements see one snapshot)."""
        with _disk_full_as_error():
            if self.dialect == "sqlite":
                async with self._sqlite_reader.lock:
                    with self._sqlite_reader.transaction() as conn:
                        yield conn
                return
            async with self._engine.connect() as aconn:
                yield aconn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[SQLConnection]:
        """A transaction, committed when the block ends without error (DiskFull when the
        database's disk is full)."""
        with _disk_full_as_error():
            if self.dialect == "sqlite":
                async with self._sqlite_writer.lock:
                    with self._sqlite_writer.transaction() as conn:
                        yield conn
                return
            async with self._engine.begin() as aconn:
                yield aconn

    def insert(self, table: Any) -> Any:
        """An INSERT with this database's `ON CONFLICT` clauses (SQLite and PostgreSQL spell
        them alike, through their own dialect's insert)."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def insert_ignore(self, table: Any) -> Any:
        """An INSERT that leaves an existing row (same key) alone: `ON CONFLICT DO NOTHING`."""
        return self.insert(table).on_conflict_do_nothing()

    def connections_in_use(self) -> int:
        """Connections serving a block right now (for the metrics)."""
        if self.dialect == "sqlite":
            return int(self._sqlite_reader.lock.locked()) + int(self._sqlite_writer.lock.locked())
        return int(self._engine.sync_engine.pool.checkedout())  # type: ignore[attr-defined]

    def pool_capacity(self) -> int:
        """Connections that may be open at once: SQLite's two, or the pool and its overflow."""
        if self.dialect == "sqlite":
            return 2
        pool = self._engine.sync_engine.pool
        return int(pool.size() + getattr(pool, "_max_overflow", 0))  # type: ignore[attr-defined]

    async def dispose(self) -> None:
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
        if self.dialect == "sqlite":
            self._sqlite_reader.dispose()
            self._sqlite_writer.dispose()
        else:
            await self._engine.dispose()


_POSTGRES_DISK_FULL = "53100"


def is_disk_full(exc: BaseException) -> bool:
    """Whether a database error says the disk under the database is full."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, sqlite3.Error):
        return (getattr(orig, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
    return getattr(orig, "sqlstate", None) == _POSTGRES_DISK_FULL


@contextmanager
def _disk_full_as_error() -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:
        if is_disk_full(exc):
            raise DiskFull(detail={"where": "database"}) from exc
        raise


def _ensure_sqlite_folder(url: str) -> None:
    """The database's folder (0700) and its file (0600), created before SQLite opens it:
    SQLite would create the file with the umask's mode, and gives its side files (`-wal`,
    `-shm`) the main file's mode."""
    files = sqlite_files(url)
    if files:
        make_private_folder(files[0].parent)
        os.close(os.open(files[0], os.O_WRONLY | os.O_CREAT, FILE_MODE))


def _configure_sqlite(engine: Engine, immediate: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def migrations_path() -> Path:
    return Path(str(resources.files("migrations")))


def run_on_database(
    url: str, migrate: bool, body: Callable[[Database], Awaitable[_T]], pool_size: int = 2
) -> _T:
    """`body`'s result on the database at `url` (its schema brought up to date first when
    `migrate`), from synchronous code: the management commands of the CLI."""
    if migrate:
        upgrade_schema(url)

    async def main() -> _T:
        db = Database(url, pool_size=pool_size)
        try:
            return await body(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


def upgrade_schema(url: str, revision: str = "head") -> None:
    """Bring the schema up to the newest migration, or to `revision` (idempotent)."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_path()))
    cfg.attributes["database_url"] = url
    with _sqlite_migration_lock(url):
        command.upgrade(cfg, revision)


@contextmanager
def _sqlite_migration_lock(url: str) -> Iterator[None]:
    """Processes sharing one SQLite file migrate one at a time (flock on a file beside it);
    PostgreSQL takes an advisory lock in the migration itself (migrations/env.py)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        yield
        return
    _ensure_sqlite_folder(url)
    fd = os.open(f"{parsed.database}.migrate-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


async def upgrade_schema_async(url: str) -> None:
    await asyncio.to_thread(upgrade_schema, url)
