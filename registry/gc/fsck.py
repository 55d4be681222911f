"""`registry fsck`: storage against the database, both ways.

1. Every live blob row: its bytes are read and hashed again (or, with `rehash=False`, only
   their size is checked). Wrong bytes are *corrupt*, absent ones *missing*. A row whose
   upload is still moving its bytes into place (no repository links it yet, younger than
   the grace period) is in flight, not missing.
2. Every object under `blobs/`, `uploads/` and `uploaded/`: bytes of a blob or an upload
   session the database does not know, last written longer ago than the grace period, are
   *orphans*; a key that is neither is *unknown*. Under `uploaded/` an object a blob row
   names as its location is that blob's bytes (storage/layout.py).

With `repair`, what can go safely goes, through the same marks as garbage collection (an
upload of the same blob meanwhile waits, then writes its bytes afresh): orphans, and corrupt
or missing blobs that no manifest refers to. A corrupt or missing blob that manifests need
cannot be repaired here: the report names them by repository and tag, to be pushed again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from registry.metadata.fsckstore import BlobRow, FsckStore
from registry.metadata.gcstore import GCStore
from registry.metadata.store import now
from registry.oci.digest import Digest
from registry.storage import layout
from registry.storage.blobstore import BlobStore
from registry.storage.driver import PathNotFound, StoredObject

PAGE = 500
HASH_BLOCK = 4 * 1024 * 1024


@dataclass
class Problem:
    kind: str  # corrupt, missing, orphan, orphan-upload or unknown
    target: str  # a digest, an upload id or a storage key
    detail: str
    size: int = 0
    used_by: list[str] = field(default_factory=list)  # repository:tag or repository@digest
    repaired: bool = False


@dataclass
class FsckReport:
    blobs_checked: int = 0
    bytes_checked: int = 0
    objects_seen: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def remaining(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]


class Progress(Protocol):
    """Where fsck says how far it is (a rich progress bar on a terminal)."""

    def phase(self, name: str, total: int | None) -> None: ...
    def advance(self, amount: int) -> None: ...


class _Silent:
    def phase(self, name: str, total: int | None) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


class Fsck:
    def __init__(
        self,
        rows: FsckStore,
        marks: GCStore,
        blobs: BlobStore,
        grace: timedelta,
        rehash: bool = True,
        progress: Progress | None = None,
    ) -> None:
        self.rows = rows
        self.marks = marks
        self.blobs = blobs
        self.grace = grace
        self.rehash = rehash
        self.progress = progress or _Silent()

    async def run(self, repair: bool = False) -> FsckReport:
        report = FsckReport()
        started = now()
        await self._check_rows(report, started)
        await self._check_storage(report, started - self.grace)
        if repair:
            await self._repair(report)
        for problem in report.remaining:
            if problem.kind in ("corrupt", "missing"):
                problem.used_by = await self.rows.users(problem.target)
        return report

    # Rows against bytes ----------------------------------------------------------------------

    async def _check_rows(self, report: FsckReport, started: datetime) -> None:
        _count, total = await self.rows.blob_totals()
        self.progress.phase("hashing blobs" if self.rehash else "checking blobs", total)
        after = ""
        while page := await self.rows.blob_rows(after, PAGE):
            found: list[Problem] = []
            for row in page:
                problem = await self._check_blob(row)
                if problem is not None:
                    found.append(problem)
                report.blobs_checked += 1
                report.bytes_checked += row.size
                self.progress.advance(row.size)
            after = page[-1].digest
            report.problems += await self._settled(found, page, started)

    async def _settled(
        self, found: list[Problem], page: list[BlobRow], started: datetime
    ) -> list[Problem]:
        """Leave out what changed under the check: rows collected meanwhile, and uploads
        still moving their bytes into place."""
        if not found:
            return []
        digests = [p.target for p in found]
        live = await self.rows.live_blobs(digests)
        linked = await self.rows.linked(digests)
        created = {row.digest: row.created_at for row in page}
        young = started - self.grace
        return [
            p
            for p in found
            if p.target in live
            and not (
                p.kind == "missing" and p.target not in linked and _aware(created[p.target]) > young
            )
        ]

    async def _check_blob(self, row: BlobRow) -> Problem | None:
        digest = Digest.parse(row.digest)
        stored = await self.blobs.stat(digest, row.location)
        if stored is None:
            return Problem("missing", row.digest, "no bytes in storage", row.size)
        if stored != row.size:
            return Problem("corrupt", row.digest, f"{stored} bytes, {row.size} recorded", row.size)
        if not self.rehash:
            return None
        try:
            actual = await self._hash(digest, row.location)
        except (FileNotFoundError, PathNotFound):
            return Problem("missing", row.digest, "no bytes in storage", row.size)
        if actual != digest.encoded:
            detail = f"bytes hash to {digest.algorithm}:{actual}"
            return Problem("corrupt", row.digest, detail, row.size)
        return None

    async def _hash(self, digest: Digest, location: str | None) -> str:
        path = self.blobs.local_path(digest, location)
        if path is not None:  # read and hash in one worker thread: no hop per block
            return await asyncio.to_thread(_hash_file, str(path), digest.algorithm)
        hasher = hashlib.new(digest.algorithm)
        async for chunk in self.blobs.read(digest, location=location):
            await asyncio.to_thread(hasher.update, chunk)
        return hasher.hexdigest()

    # Bytes against rows ----------------------------------------------------------------------

    async def _check_storage(self, report: FsckReport, cutoff: datetime) -> None:
        self.progress.phase("listing storage", None)
        batch: list[StoredObject] = []
        uploads: dict[str, datetime] = {}
        async for item in self.blobs.driver.walk("blobs"):
            batch.append(item)
            if len(batch) >= PAGE:
                await self._orphan_blobs(report, batch, cutoff)
                batch = []
        await self._orphan_blobs(report, batch, cutoff)
        for top in ("uploads", "uploaded"):
            async for item in self.blobs.driver.walk(top):
                report.objects_seen += 1
                self.progress.advance(1)
                upload_id = layout.upload_id_of_key(item.key, top)
                if upload_id is None:
                    problem = Problem("unknown", item.key, "not an upload's", item.size)
                    report.problems.append(problem)
                else:  # an upload's age is that of its newest write
                    uploads[upload_id] = max(uploads.get(upload_id, item.modified), item.modified)
        known = await self.rows.known_uploads(uploads) | await self._blobs_placed(uploads)
        for upload_id, modified in sorted(uploads.items()):
            if upload_id not in known and modified < cutoff:
                detail = "an upload session the database does not know"
                report.problems.append(Problem("orphan-upload", upload_id, detail))

    async def _blobs_placed(self, upload_ids: Iterable[str]) -> set[str]:
        """Those uploads whose bytes a blob row names as its location: blobs now."""
        by_key = {layout.placed_key(upload_id): upload_id for upload_id in upload_ids}
        return {by_key[key] for key in await self.rows.locations(by_key)}

    async def _orphan_blobs(
        self, report: FsckReport, batch: list[StoredObject], cutoff: datetime
    ) -> None:
        report.objects_seen += len(batch)
        self.progress.advance(len(batch))
        digests: dict[str, StoredObject] = {}
        for item in batch:
            parsed = layout.digest_of_blob_key(item.key)
            if parsed is None:
                report.problems.append(Problem("unknown", item.key, "not a blob's", item.size))
            else:
                digests[str(parsed)] = item
        known = await self.rows.known_blobs(digests)
        for digest, item in sorted(digests.items()):
            if digest not in known and item.modified < cutoff:
                detail = "bytes the database does not know"
                report.problems.append(Problem("orphan", digest, detail, item.size))

    # Repairs ---------------------------------------------------------------------------------

    async def _repair(self, report: FsckReport) -> None:
        self.progress.phase("repairing", len(report.problems))
        actions: dict[str, Callable[[list[Problem]], Awaitable[None]]] = {
            "orphan": self._remove_orphans,
            "orphan-upload": self._remove_uploads,
            "corrupt": self._remove_unreferenced,
            "missing": self._remove_unreferenced,
        }
        for kind, action in actions.items():
            found = [p for p in report.problems if p.kind == kind]
            for start in range(0, len(found), PAGE):
                await action(found[start : start + PAGE])
                self.progress.advance(len(found[start : start + PAGE]))

    async def _remove_orphans(self, problems: list[Problem]) -> None:
        for problem in problems:
            if not await self.marks.mark_orphan(problem.target, problem.size):
                continue  # recorded since: not an orphan any more
            await self.blobs.delete_blobs([Digest.parse(problem.target)])
            await self.marks.forget_blobs([problem.target])
            problem.repaired = True

    async def _remove_uploads(self, problems: list[Problem]) -> None:
        targets = [p.target for p in problems]
        known = await self.rows.known_uploads(targets) | await self._blobs_placed(targets)
        for problem in problems:
            if problem.target not in known:  # (ids are random: a session never comes back)
                await self.blobs.delete_upload(problem.target, everywhere=True)
                problem.repaired = True

    async def _remove_unreferenced(self, problems: list[Problem]) -> None:
        doomed = await self.marks.mark_unreferenced(p.target for p in problems)
        if not doomed:
            return
        await self.blobs.delete_blobs([(Digest.parse(d.digest), d.location) for d in doomed])
        await self.marks.forget_blobs([d.digest for d in doomed])
        gone = {d.digest for d in doomed}
        for problem in problems:
            problem.repaired = problem.target in gone


def _hash_file(path: str, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(HASH_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


def _aware(stamp: datetime) -> datetime:
    """SQLite hands back naive datetimes (in UTC); PostgreSQL aware ones."""
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp
