"""SQLite's WAL checkpoints, in a thread of their own.

A checkpoint copies the write-ahead log back into the database file and flushes both to the
disk. Left to SQLite, it runs inside the commit that takes the log past
`wal_autocheckpoint` pages, and our commits run on the event loop (db.py): every request
then waits for two fsyncs, tens to hundreds of milliseconds on a busy disk. A long series of
small write transactions (a garbage collection run) crossed the threshold every few batches.

Here a daemon thread runs `PRAGMA wal_checkpoint(PASSIVE)` twice a second on a connection of
its own (PASSIVE: it copies what no reader still needs and never waits for, nor blocks,
readers or writers), with the GIL released for the I/O. The connections' own threshold is
raised to `FALLBACK_PAGES`, so that if this thread ever falls behind (or dies), SQLite's
checkpoint in the commit takes over and the log still cannot grow without bound.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("registry")

INTERVAL_SECONDS = 0.5
FALLBACK_PAGES = 10_000  # ~40 MiB of log


class Checkpointer:
    def __init__(self, database: Path, interval: float = INTERVAL_SECONDS) -> None:
        self.database = database
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int, int]:
        """One PASSIVE checkpoint: (busy, frames in the log, frames copied back)."""
        row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.database, timeout=1.0, check_same_thread=False)
        except sqlite3.Error as exc:
            log.error("sqlite checkpoints stay in commits: %s", exc)
            return
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.checkpoint(conn)
                except sqlite3.Error as exc:  # (busy: the next turn tries again)
                    log.debug("sqlite checkpoint skipped: %s", exc)
        finally:
            conn.close()
