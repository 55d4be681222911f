"""One garbage collection run: finish abandoned deletions, expire uploads, apply the retention
policies (registry/policies/runner.py), collect untagged manifests (by policy), then
unreferenced blobs; recorded in `gc_runs`.

The rules that make this safe beside pushes are in the package docstring. Here: batches,
the pauses between them, what a run reports, and one run at a time per process (replicas
may run at once: their batches skip each other's locked rows).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from registry.config import Config, ConfigError, GCConfig
from registry.metadata.db import Database
from registry.metadata.gcstore import Doomed, GCStore
from registry.metadata.policystore import PolicyStore
from registry.metadata.retentionstore import RetentionStore
from registry.metadata.store import now
from registry.oci.digest import Digest
from registry.policies.runner import Retention
from registry.policies.service import Policies
from registry.storage.blobstore import BlobStore
from registry.storage.driver import StorageError

log = logging.getLogger("registry.gc")
T = TypeVar("T")

# A collector that marked blobs and did not finish within this time is taken to have died:
# another run deletes their bytes and rows. (Deleting one batch takes well under a second.)
DELETE_LEASE = timedelta(minutes=10)
RUN_HISTORY = timedelta(days=90)
PAUSE_FACTOR = 3.0
MAX_PAUSE_SECONDS = 1.0
SAMPLE = 100  # digests listed in a report, at most


@dataclass
class Report:
    """What a run found and did (a dry run: what it would have done)."""

    trigger: str
    dry_run: bool
    run_id: int | None = None
    status: str = "running"
    started_at: datetime = field(default_factory=now)
    finished_at: datetime | None = None
    seconds: float = 0.0
    blobs_examined: int = 0
    blobs_deleted: int = 0
    bytes_reclaimed: int = 0
    blobs_busy: int = 0  # held by a push at that moment: looked at again next run
    manifests_examined: int = 0
    manifests_deleted: int = 0
    uploads_expired: int = 0
    deletions_resumed: int = 0  # blobs a dead collector had marked
    errors: list[str] = field(default_factory=list)
    deleted_blobs: list[str] = field(default_factory=list)  # the first SAMPLE
    deleted_manifests: list[str] = field(default_factory=list)  # "repository@digest"
    tags_removed: int = 0  # by retention policies (registry/policies/)
    retention: dict[str, Any] = field(default_factory=dict)  # its report, lists cut to SAMPLE

    def figures(self) -> dict[str, Any]:
        figures = asdict(self)
        for key in ("started_at", "finished_at"):
            value = figures[key]
            figures[key] = value.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None
        return figures


def check_settings(settings: GCConfig) -> None:
    for name in ("interval_seconds", "batch_size"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"gc.{name} must be at least 1")
    for name in ("blob_grace_seconds", "manifest_grace_seconds"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"gc.{name} must not be negative")


def _bytes_of(doomed: Doomed) -> tuple[Digest, str | None]:
    return Digest.parse(doomed.digest), doomed.location


class Collector:
    def __init__(
        self,
        store: GCStore,
        blobs: BlobStore,
        settings: GCConfig,
        upload_expiry_seconds: int,
        retention: Retention | None = None,
    ) -> None:
        check_settings(settings)
        self.retention = retention
        self.store = store
        self.blobs = blobs
        self.settings = settings
        self.upload_expiry = timedelta(seconds=upload_expiry_seconds)
        self.batch = min(settings.batch_size, 1000)
        self.host = f"{socket.gethostname()}:{os.getpid()}"
        self._running = asyncio.Lock()
        self._holding = 0.0  # seconds the current batch's steps took

    @property
    def running(self) -> bool:
        return self._running.locked()

    async def run(self, trigger: str, dry_run: bool = False) -> Report:
        """One whole run; waits for a run of this process already going."""
        async with self._running:
            report = Report(trigger, dry_run)
            report.run_id = await self.store.start_run(trigger, dry_run, self.host)
            return await self._go(report)

    async def run_scheduled(self) -> Report | None:
        """The background run, unless another replica's or worker's started within the
        interval or is still going (`gc.exclusive`): then None. Runs asked for by hand
        (`registry gc`, the admin API) are never skipped."""
        if not self.settings.exclusive:
            return await self.run("schedule")
        async with self._running:
            since = now() - timedelta(seconds=self.settings.interval_seconds * 0.9)
            run_id = await self.store.claim_scheduled_run(self.host, since, now() - DELETE_LEASE)
            if run_id is None:
                return None
            report = Report("schedule", dry_run=False)
            report.run_id = run_id
            return await self._go(report)

    async def _go(self, report: Report) -> Report:
        """The body of a run whose record is started: its steps, then its record finished."""
        started = time.monotonic()
        try:
            await self._resume_deletions(report)
            await self._expire_uploads(report)
            if self.retention is not None:
                await self._retain(report)
            if self.settings.untagged_manifests:
                await self._manifests(report)
            await self._blobs(report)
            report.status = "ok" if not report.errors else "failed"
        except Exception as exc:
            log.exception("garbage collection failed")
            report.status = "failed"
            report.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            report.finished_at = now()
            report.seconds = round(time.monotonic() - started, 3)
            await asyncio.shield(self._record(report))
        return report

    async def _record(self, report: Report) -> None:
        assert report.run_id is not None
        await self.store.finish_run(report.run_id, report.status, report.figures())
        await self.store.prune_runs(now() - RUN_HISTORY)
        if report.blobs_deleted or report.manifests_deleted or report.uploads_expired:
            log.info(
                "garbage collection %s: %d blobs (%d bytes), %d manifests, %d uploads%s",
                report.run_id, report.blobs_deleted, report.bytes_reclaimed,
                report.manifests_deleted, report.uploads_expired,
                " (dry run)" if report.dry_run else "",
            )  # fmt: skip

    async def _held(self, work: Awaitable[T]) -> T:
        """Run one step of a batch (a transaction, a storage batch delete), counting its time."""
        started = time.monotonic()
        try:
            return await work
        finally:
            self._holding += time.monotonic() - started

    async def _pause(self) -> None:
        """Between batches: PAUSE_FACTOR times as long as the batch's steps took, so that a
        run takes at most a quarter of the database's time, of the event loop's (SQLite's
        transactions run on it) and of the machine's (deleting files costs CPU too)."""
        await asyncio.sleep(min(PAUSE_FACTOR * self._holding, MAX_PAUSE_SECONDS))
        self._holding = 0.0

    async def _resume_deletions(self, report: Report) -> None:
        older = now() - DELETE_LEASE
        if report.dry_run:
            report.deletions_resumed = await self.store.count_stale_deletions(older)
            return
        while doomed := await self._held(self.store.claim_stale_deletions(older, self.batch)):
            if not await self._delete(doomed, report):
                return
            report.deletions_resumed += len(doomed)
            await self._pause()

    async def _delete(self, doomed: list[Doomed], report: Report) -> bool:
        """Bytes first, then rows; False (rows left marked, for a later run) when storage
        failed."""
        try:
            await self._held(self.blobs.delete_blobs([_bytes_of(d) for d in doomed]))
        except StorageError as exc:
            log.error("garbage collection: deleting %d blobs failed: %s", len(doomed), exc)
            report.errors.append(f"storage: {exc}")
            return False
        await self._held(self.store.forget_blobs([d.digest for d in doomed]))
        return True

    async def _retain(self, report: Report) -> None:
        """Retention first: the tags it removes and the manifests it deletes queue what they
        held, which the phases after (and later runs, after the grace periods) collect."""
        assert self.retention is not None
        result = await self.retention.run(report.dry_run)
        report.tags_removed = result.tags_removed
        report.manifests_deleted += result.manifests_deleted
        room = SAMPLE - len(report.deleted_manifests)
        report.deleted_manifests += [f"{e['repository']}@{e['digest']}" for e in result.deleted][
            :room
        ]
        report.errors += result.errors
        figures = result.figures()
        figures["removed"], figures["deleted"] = result.removed[:SAMPLE], result.deleted[:SAMPLE]
        report.retention = figures

    async def _expire_uploads(self, report: Report) -> None:
        cutoff = now() - self.upload_expiry
        if report.dry_run:
            expired = await self.store.expire_uploads(cutoff, 1_000_000, dry_run=True)
            report.uploads_expired = len(expired)
            return
        while ids := await self._held(self.store.expire_uploads(cutoff, self.batch)):
            for upload_id in ids:  # the sessions are gone: no request can resume these
                await self._held(self.blobs.delete_upload(upload_id))
            report.uploads_expired += len(ids)
            await self._pause()
        # Multipart uploads a push that died midway left at blob keys (S3 only).
        report.uploads_expired += await self.blobs.driver.abort_abandoned(cutoff)

    async def _manifests(self, report: Report) -> None:
        cutoff = now() - timedelta(seconds=self.settings.manifest_grace_seconds)
        if report.dry_run:
            batch = await self.store.collect_manifests(cutoff, 0, dry_run=True)
            report.manifests_examined = batch.examined
            report.manifests_deleted = len(batch.deleted)
            report.deleted_manifests = [f"{r}@{d}" for r, d in batch.deleted[:SAMPLE]]
            return
        while True:
            batch = await self._held(self.store.collect_manifests(cutoff, self.batch))
            report.manifests_examined += batch.examined
            report.manifests_deleted += len(batch.deleted)
            room = SAMPLE - len(report.deleted_manifests)
            report.deleted_manifests += [f"{r}@{d}" for r, d in batch.deleted[:room]]
            if batch.examined == batch.busy:  # nothing left, or only what pushes hold
                return
            await self._pause()

    async def _blobs(self, report: Report) -> None:
        # Fixed for the run, so that a run ends even while pushes keep queueing entries.
        cutoff = now() - timedelta(seconds=self.settings.blob_grace_seconds)
        if report.dry_run:
            await self._preview_blobs(report, cutoff)
            return
        while True:
            batch = await self._held(self.store.mark_blobs(cutoff, self.batch))
            report.blobs_examined += batch.examined
            report.blobs_busy += batch.busy
            if batch.doomed:
                if not await self._delete(batch.doomed, report):
                    return
                report.blobs_deleted += len(batch.doomed)
                report.bytes_reclaimed += sum(d.size for d in batch.doomed)
                room = SAMPLE - len(report.deleted_blobs)
                report.deleted_blobs += [d.digest for d in batch.doomed[:room]]
            if batch.examined == batch.busy:
                return
            await self._pause()

    async def _preview_blobs(self, report: Report, cutoff: datetime) -> None:
        after = ""
        while found := await self.store.preview_blobs(cutoff, after, 1000):
            report.blobs_deleted += len(found)
            report.bytes_reclaimed += sum(d.size for d in found)
            room = SAMPLE - len(report.deleted_blobs)
            report.deleted_blobs += [d.digest for d in found[:room]]
            after = found[-1].digest

    async def expire_uploads(self) -> int:
        """Only the upload expiry (background upkeep when collection is turned off)."""
        report = Report("schedule", dry_run=False)
        await self._expire_uploads(report)
        return report.uploads_expired


def build_collector(config: Config, blobs: BlobStore, db: Database) -> Collector:
    retention = Retention(Policies(PolicyStore(db), config.policies), RetentionStore(db))
    return Collector(GCStore(db), blobs, config.gc, config.limits.upload_expiry_seconds, retention)
