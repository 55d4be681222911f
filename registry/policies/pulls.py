"""Pull statistics: per tag, when it was last pulled and how many times.

Never a write per pull: each process counts pulls in memory and writes them in one
transaction every `policies.pull_stats_flush_seconds` and at shutdown. Counts are added, so
any number of workers and replicas can flush the same tags. What is counted:

- a GET of a manifest by tag counts one pull of that tag;
- a GET by digest counts one pull of every tag then pointing at that digest (containerd
  resolves a tag with HEAD and then GETs by digest, so its pulls count once too);
- a HEAD by tag moves the tag's last pull time but counts no pull (a client checking for
  updates uses the tag without downloading it).

A flush that fails (the database is away) keeps its counts for the next one; at most
MAX_ENTRIES distinct references are held, beyond which new ones wait for the next flush.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from registry.metadata.identity import now
from registry.metadata.policystore import PolicyStore

log = logging.getLogger("registry.policies")
MAX_ENTRIES = 100_000


@dataclass
class _Pending:
    count: int
    at: datetime


class PullRecorder:
    def __init__(self, store: PolicyStore) -> None:
        self.store = store
        self._pending: dict[tuple[str, bool, str], _Pending] = {}
        self._flushing = asyncio.Lock()
        self.dropped = 0

    def record(self, repository: str, reference: str, counted: bool) -> None:
        """A pull of `reference` (a tag, or a digest: it has a colon) in `repository`."""
        key = (repository, ":" in reference, reference)
        entry = self._pending.get(key)
        if entry is None:
            if len(self._pending) >= MAX_ENTRIES:
                self.dropped += 1
                return
            self._pending[key] = _Pending(int(counted), now())
            return
        entry.count += int(counted)
        entry.at = now()

    async def flush(self) -> int:
        """Write what was counted since the last flush; the number of references written."""
        async with self._flushing:
            pending, self._pending = self._pending, {}
            if not pending:
                return 0
            by_tag: list[dict[str, Any]] = []
            by_digest: list[dict[str, Any]] = []
            for (repository, is_digest, ref), entry in sorted(pending.items()):
                row = {"repository": repository, "ref": ref, "count": entry.count, "at": entry.at}
                (by_digest if is_digest else by_tag).append(row)
            try:
                await self.store.add_pulls(by_tag, by_digest)
            except BaseException:
                self._merge_back(pending)
                raise
            return len(pending)

    def _merge_back(self, pending: dict[tuple[str, bool, str], _Pending]) -> None:
        for key, entry in pending.items():
            current = self._pending.get(key)
            if current is None:
                self._pending[key] = entry
            else:
                current.count += entry.count
                current.at = max(current.at, entry.at)

    async def run(self, interval_seconds: float) -> None:
        """Flush every `interval_seconds` until cancelled; then once more (shutdown)."""
        try:
            while True:
                await asyncio.sleep(interval_seconds)
                try:
                    await self.flush()
                except Exception:  # kept for the next flush; never take the server down
                    log.exception("writing pull statistics failed")
        finally:
            try:
                await asyncio.shield(self.flush())
            except Exception:
                log.exception("writing pull statistics at shutdown failed")
