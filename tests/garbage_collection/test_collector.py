"""The collector on a real database and real storage: what goes, what stays, when, and what
a run reports and records. Time passes by dating review entries back (`Stack.age`)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from garbage_collection.conftest import Stack
from registry.gc.collector import DELETE_LEASE
from registry.metadata.store import now
from registry.metadata.tables import blobs, gc_runs, uploads
from registry.oci import mediatypes as mt
from registry.oci.digest import Digest

HOUR = 3600
DAY = 86400


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


async def table_dump(stack: Stack) -> dict[str, list[tuple[object, ...]]]:
    names = [
        "blobs", "repository_blobs", "manifests", "manifest_references", "tags", "uploads",
        "gc_blob_reviews", "gc_manifest_reviews", "repositories",
    ]  # fmt: skip
    return {name: sorted(map(repr, await stack.rows(f"SELECT * FROM {name}"))) for name in names}


class TestBlobs:
    async def test_unique_blobs_go_after_the_grace_period_and_shared_ones_stay(
        self, stack: Stack
    ) -> None:
        base, only_a, only_b = b"base layer", b"layer of a", b"layer of b"
        image_a = await stack.push("r/a", "v1", [base, only_a], config=b'{"a":1}')
        await stack.push("r/b", "v1", [base, only_b], config=b'{"b":1}')
        assert await stack.metadata.delete_manifest("r/a", image_a)
        collector = stack.collector(blob_grace_seconds=HOUR)

        first = await collector.run("test")
        assert (first.status, first.blobs_deleted) == ("ok", 0)  # within the grace period

        await stack.age(2 * HOUR)
        second = await collector.run("test")
        doomed = {str(Digest.of(only_a)), str(Digest.of(b'{"a":1}'))}
        assert set(second.deleted_blobs) == doomed
        assert second.bytes_reclaimed == len(only_a) + len(b'{"a":1}')
        for digest in doomed:
            assert not stack.stored(digest)
            assert not stack.path(digest).parent.exists()  # the blob's folder goes too
            assert await stack.metadata.blob_size_in_repository("r/a", digest) is None
        kept = [base, only_b, b'{"b":1}']
        for data in kept:
            assert stack.path(str(Digest.of(data))).read_bytes() == data
            assert await stack.metadata.blob_size_in_repository("r/b", str(Digest.of(data)))
        # The base stays linked in r/a too: only unreferenced blobs lose their links.
        assert await stack.metadata.blob_size_in_repository("r/a", str(Digest.of(base)))
        assert await stack.count("blobs") == 3

        third = await collector.run("test")
        assert (third.blobs_examined, third.blobs_deleted) == (0, 0)
        assert await stack.count("gc_blob_reviews") == 0

    async def test_a_blob_no_manifest_ever_named_goes_after_the_grace_period(
        self, stack: Stack
    ) -> None:
        digest = await stack.upload("r", b"pushed, never used")
        collector = stack.collector(blob_grace_seconds=DAY)
        assert (await collector.run("test")).blobs_deleted == 0
        assert stack.stored(digest)
        await stack.age(DAY + 1)
        assert (await collector.run("test")).deleted_blobs == [digest]
        assert not stack.stored(digest)

    async def test_uploading_again_restarts_the_grace_period(self, stack: Stack) -> None:
        digest = await stack.upload("r", b"again")
        await stack.age(DAY + 1)
        await stack.upload("other", b"again")  # the same bytes, pushed again
        assert (await stack.collector().run("test")).blobs_deleted == 0
        assert stack.stored(digest)

    async def test_deleting_a_manifest_queues_its_blobs(self, stack: Stack) -> None:
        image = await stack.push("r", "v1", [b"layer of a deleted image"])
        collector = stack.collector(blob_grace_seconds=HOUR)
        await stack.age(2 * HOUR)
        assert (await collector.run("test")).blobs_examined == 2  # referenced: entries dropped
        assert await stack.count("gc_blob_reviews") == 0
        assert await stack.metadata.delete_manifest("r", image)
        assert await stack.count("gc_blob_reviews") == 2
        assert (await collector.run("test")).blobs_deleted == 0  # its grace period, from now
        await stack.age(2 * HOUR)
        assert (await collector.run("test")).blobs_deleted == 2
        assert not stack.stored(str(Digest.of(b"layer of a deleted image")))

    async def test_unlinking_queues_the_blob(self, stack: Stack) -> None:
        digest = await stack.upload("r", b"unlinked")
        collector = stack.collector(blob_grace_seconds=HOUR)
        await stack.age(2 * HOUR)
        await collector.run("test")  # reviewed: no manifest, so it went
        assert not stack.stored(digest)
        digest = await stack.upload("r", b"unlinked")
        await stack.push("r", "v1", [b"unlinked"])
        await stack.age(2 * HOUR)
        await collector.run("test")  # referenced: its review entry is dropped
        assert await stack.count("gc_blob_reviews") == 0
        assert await stack.metadata.unlink_blob("r", digest)
        assert await stack.count("gc_blob_reviews") == 1
        await stack.age(2 * HOUR)
        assert (await collector.run("test")).blobs_deleted == 0  # still in a manifest
        assert stack.stored(digest)

    async def test_a_run_is_recorded(self, stack: Stack) -> None:
        await stack.upload("r", b"x")
        await stack.age(2 * DAY)
        report = await stack.collector().run("cli")
        runs = await stack.gc.runs(10)
        assert [r.id for r in runs] == [report.run_id]
        run = runs[0]
        assert (run.trigger, run.status, run.dry_run) == ("cli", "ok", False)
        assert (run.blobs_deleted, run.bytes_reclaimed) == (1, 1)
        assert run.finished_at is not None and run.detail["deleted_blobs"] == report.deleted_blobs


class TestDryRun:
    async def test_changes_nothing_and_predicts_the_run(self, stack: Stack) -> None:
        image = await stack.push("r", "v1", [b"one", b"two"])
        await stack.push("r", "v2", [b"one", b"three"])
        await stack.upload("r", b"loose")
        await stack.metadata.delete_manifest("r", image)
        stale = await stack.metadata.create_upload("r")
        await stack.blobs.append_upload(stale.id, 0, _body(b"half an upload"))
        async with stack.db.write() as conn:
            await conn.execute(update(uploads).values(updated_at=now().replace(year=2000)))
        await stack.age(2 * DAY)
        before, stored = await table_dump(stack), files(stack.root)

        preview = await stack.collector(untagged_manifests=True).run("test", dry_run=True)
        assert await table_dump(stack) == before
        assert files(stack.root) == stored
        assert preview.dry_run and preview.status == "ok"

        real = await stack.collector(untagged_manifests=True).run("test")
        assert sorted(preview.deleted_blobs) == sorted(real.deleted_blobs)
        assert preview.bytes_reclaimed == real.bytes_reclaimed > 0
        assert preview.uploads_expired == real.uploads_expired == 1
        runs = await stack.gc.runs(10)
        assert [(r.dry_run, r.blobs_deleted) for r in runs] == [
            (False, real.blobs_deleted),
            (True, preview.blobs_deleted),
        ]


async def _body(data: bytes):  # type: ignore[no-untyped-def]
    yield data


def _index(children: list[str]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                {"mediaType": mt.OCI_MANIFEST, "digest": d, "size": 1,
                 "platform": {"architecture": f"a{i}", "os": "linux"}}
                for i, d in enumerate(children)
            ],
        }
    ).encode()  # fmt: skip


def _referrer(subject: str, config_digest: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": "application/example.signature",
            "config": {"mediaType": mt.OCI_EMPTY, "digest": config_digest, "size": 2},
            "layers": [],
            "subject": {"mediaType": mt.OCI_MANIFEST, "digest": subject, "size": 1},
        }
    ).encode()


class TestUntaggedManifests:
    async def manifests(self, stack: Stack) -> set[str]:
        return {row[0] for row in await stack.rows("SELECT digest FROM manifests")}

    async def test_off_by_default(self, stack: Stack) -> None:
        image = await stack.push("r", "v1", [b"layer"])
        assert await stack.metadata.delete_tag("r", "v1")
        await stack.age(2 * DAY)
        await stack.collector().run("test")
        assert await self.manifests(stack) == {image}
        assert stack.stored(str(Digest.of(b"layer")))

    async def test_an_untagged_image_goes_then_its_own_blobs(self, stack: Stack) -> None:
        gone = await stack.push("r", "old", [b"shared", b"only old"], config=b'{"old":1}')
        kept = await stack.push("r", "new", [b"shared", b"only new"], config=b'{"new":1}')
        assert await stack.metadata.delete_tag("r", "old")
        collector = stack.collector(untagged_manifests=True, blob_grace_seconds=0)
        assert (await collector.run("test")).manifests_deleted == 0  # its grace period
        await stack.age(2 * DAY)
        report = await collector.run("test")
        assert report.deleted_manifests == [f"r@{gone}"]
        assert await self.manifests(stack) == {kept}
        assert set(report.deleted_blobs) == {
            str(Digest.of(b"only old")),
            str(Digest.of(b'{"old":1}')),
        }
        for data in (b"shared", b"only new", b'{"new":1}'):
            assert stack.stored(str(Digest.of(data)))
        again = await collector.run("test")
        assert (again.manifests_deleted, again.blobs_deleted) == (0, 0)

    async def test_a_moved_tag_leaves_the_old_manifest_untagged(self, stack: Stack) -> None:
        old = await stack.push("r", "latest", [b"v1"])
        new = await stack.push("r", "latest", [b"v2"])
        await stack.age(2 * DAY)
        await stack.collector(untagged_manifests=True).run("test")
        assert await self.manifests(stack) == {new}
        assert old != new

    async def test_an_index_keeps_its_children_until_it_goes(self, stack: Stack) -> None:
        children = [
            await stack.push("r", None, [b"amd64 layer"]),
            await stack.push("r", None, [b"arm64 layer"]),
        ]
        index = await stack.put_manifest("r", "v1", _index(children))
        collector = stack.collector(untagged_manifests=True, blob_grace_seconds=0)
        await stack.age(2 * DAY)
        await collector.run("test")
        assert await self.manifests(stack) == {index, *children}
        assert await stack.metadata.delete_tag("r", "v1")
        await stack.age(2 * DAY)
        report = await collector.run("test")
        assert sorted(report.deleted_manifests) == sorted(f"r@{d}" for d in [index, *children])
        assert not stack.stored(str(Digest.of(b"amd64 layer")))

    async def test_children_pushed_before_their_index_wait_for_it(self, stack: Stack) -> None:
        child = await stack.push("r", None, [b"platform layer"])
        await stack.collector(untagged_manifests=True, blob_grace_seconds=0).run("test")
        await stack.put_manifest("r", "v1", _index([child]))  # the index arrives: it works
        assert child in await self.manifests(stack)

    async def test_referrers_stay_with_a_tagged_subject_and_go_with_it(self, stack: Stack) -> None:
        subject = await stack.push("r", "v1", [b"signed layer"])
        empty = await stack.upload("r", b"{}")
        signature = await stack.put_manifest("r", None, _referrer(subject, empty))
        collector = stack.collector(untagged_manifests=True)
        await stack.age(2 * DAY)
        await collector.run("test")
        assert await self.manifests(stack) == {subject, signature}
        assert await stack.metadata.delete_tag("r", "v1")
        await stack.age(2 * DAY)
        report = await collector.run("test")
        assert sorted(report.deleted_manifests) == sorted([f"r@{subject}", f"r@{signature}"])

    async def test_a_tagged_referrer_keeps_its_subject(self, stack: Stack) -> None:
        subject = await stack.push("r", None, [b"layer"])
        empty = await stack.upload("r", b"{}")
        signature = await stack.put_manifest("r", "sig", _referrer(subject, empty))
        await stack.age(2 * DAY)
        await stack.collector(untagged_manifests=True).run("test")
        assert await self.manifests(stack) == {subject, signature}


class TestUploads:
    async def test_expired_uploads_vanish_with_their_bytes(self, stack: Stack) -> None:
        old = await stack.metadata.create_upload("r")
        held = await stack.metadata.create_upload("r")
        fresh = await stack.metadata.create_upload("r")
        for session in (old, held, fresh):
            await stack.blobs.append_upload(session.id, 0, _body(b"some bytes"))
        assert await stack.metadata.claim_upload(held.id, "writer", 600) is not None
        async with stack.db.write() as conn:
            stale = now().replace(year=2000)
            await conn.execute(
                update(uploads).where(uploads.c.id != fresh.id).values(updated_at=stale)
            )
        report = await stack.collector().run("test")
        assert report.uploads_expired == 1
        assert await stack.metadata.get_upload("r", old.id) is None
        assert not (stack.root / "uploads" / old.id).exists()
        for session in (held, fresh):  # a writer holds one; the other is recent
            assert await stack.metadata.get_upload("r", session.id) is not None
            assert (stack.root / "uploads" / session.id / "data").exists()


class TestAbandonedDeletions:
    async def test_marks_of_a_dead_collector_are_finished_by_the_next_run(
        self, stack: Stack
    ) -> None:
        old = await stack.upload("r", b"marked long ago")
        recent = await stack.upload("r", b"marked just now")
        await stack.gc.mark_unreferenced([old, recent])  # ... and the collector died
        async with stack.db.write() as conn:
            await conn.execute(
                update(blobs)
                .where(blobs.c.digest == old)
                .values(deleting_since=now().replace(year=2000))
            )
        report = await stack.collector().run("test")
        assert report.deletions_resumed == 1
        assert not stack.stored(old) and stack.stored(recent)
        assert [r[0] for r in await stack.rows("SELECT digest FROM blobs")] == [recent]
        # An upload of the blob whose deletion is still under way waits (None: try later).
        assert await stack.metadata.reserve_blob(recent, 15) is None


class TestSettings:
    async def test_nonsense_is_refused(self, stack: Stack) -> None:
        import pytest

        from registry.config import ConfigError

        for bad in ({"batch_size": 0}, {"interval_seconds": 0}, {"blob_grace_seconds": -1}):
            with pytest.raises(ConfigError):
                stack.collector(**bad)

    async def test_batches_are_small_and_a_run_goes_through_all_of_them(self, stack: Stack) -> None:
        digests = [await stack.upload("r", f"blob {i}".encode()) for i in range(25)]
        await stack.age(2 * DAY)
        report = await stack.collector(batch_size=4).run("test")
        assert report.blobs_deleted == 25 and report.blobs_examined == 25
        assert not any(stack.stored(d) for d in digests)
        assert (await stack.rows("SELECT count(*) FROM blobs")) == [(0,)]


async def _date_runs(stack: Stack, seconds: float, status: str | None = None) -> None:
    """Move every run's start `seconds` back (time passing, without waiting)."""
    values: dict[str, object] = {"started_at": now() - timedelta(seconds=seconds)}
    if status is not None:
        values["status"] = status
    async with stack.db.write() as conn:
        await conn.execute(update(gc_runs).values(**values))


async def test_one_background_run_at_a_time_over_all_collectors(stack: Stack) -> None:
    """Two workers' (or replicas') timers: the first to offer within the interval runs, the
    other skips; a run still going blocks the next until the deletion lease has passed."""
    first, second = (stack.collector(interval_seconds=60) for _ in range(2))
    gone = await stack.upload("excl/a", b"nothing refers to this")
    await stack.age(2 * 86400)  # past the default grace period
    report = await first.run_scheduled()
    assert report is not None and report.blobs_deleted == 1 and not stack.stored(gone)
    assert await second.run_scheduled() is None  # the interval has not passed
    await _date_runs(stack, 1_000)  # it has
    assert await second.run_scheduled() is not None
    await _date_runs(stack, 300, status="running")  # still going, past the interval
    assert await first.run_scheduled() is None
    await _date_runs(stack, DELETE_LEASE.total_seconds() + 60, status="running")  # one that died
    assert await first.run_scheduled() is not None
    # Asked for by hand, a run never waits its turn.
    assert (await second.run("cli")).status == "ok"
    scheduled = await stack.rows("SELECT count(*) FROM gc_runs WHERE trigger = 'schedule'")
    assert scheduled == [(3,)]


async def test_without_exclusive_every_timer_runs(stack: Stack) -> None:
    first, second = (stack.collector(interval_seconds=600, exclusive=False) for _ in range(2))
    assert await first.run_scheduled() is not None
    assert await second.run_scheduled() is not None
