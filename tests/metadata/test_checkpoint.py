"""SQLite's WAL goes back into the database file from the checkpoint thread, not from commits
on the event loop."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlalchemy import text

from registry.metadata.checkpoint import FALLBACK_PAGES
from registry.metadata.db import Database


async def test_the_log_is_checkpointed_by_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        async with db.write() as conn:
            pages = (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar()
            assert pages == FALLBACK_PAGES  # commits on the loop leave checkpoints alone
            await conn.execute(text("CREATE TABLE t (x BLOB)"))
        for _ in range(50):  # ~200 pages of log: below the commits' own threshold
            async with db.write() as conn:
                await conn.execute(text("INSERT INTO t VALUES (randomblob(4000))"))
        before = path.stat().st_size
        deadline = time.monotonic() + 30
        while path.stat().st_size < before + 50 * 4000:  # copied back into the file
            assert time.monotonic() < deadline, "no checkpoint came"
            time.sleep(0.05)
    finally:
        await db.dispose()
    assert db._checkpointer is not None and not db._checkpointer._thread.is_alive()
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT count(*) FROM t").fetchone() == (50,)
